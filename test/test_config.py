"""Configuration validation: every mistake is named with its key path and file."""

from __future__ import annotations

import pytest

from selavpr_ros.config import ConfigError, load_config
from selavpr_ros.models.config import ModelConfig


def test_unknown_key_is_named_with_its_path():
    with pytest.raises(ConfigError, match=r"backbone\.regsiters: unknown key.*allowed keys here: .*registers"):
        ModelConfig.from_dict({"method": "selavpr", "backbone": {"regsiters": 4}})


def test_wrong_types_and_values():
    with pytest.raises(ConfigError, match=r"preprocess\.height: expected an integer"):
        ModelConfig.from_dict({"method": "selavpr", "preprocess": {"height": "224"}})
    with pytest.raises(ConfigError, match=r"method: 'netvlad' is not one of"):
        ModelConfig.from_dict({"method": "netvlad"})
    with pytest.raises(ConfigError, match="registers"):
        ModelConfig.from_dict({"method": "selavpr", "backbone": {"registers": 2}})
    with pytest.raises(ConfigError, match="multiple of the patch size 14"):
        ModelConfig.from_dict({"method": "selavpr", "preprocess": {"height": 225, "width": 224}})
    with pytest.raises(ConfigError, match="codes.bits"):
        ModelConfig.from_dict({"method": "selavpr", "codes": {"bits": 500}})
    with pytest.raises(ConfigError, match="required key is missing"):
        ModelConfig.from_dict({"backbone": {}})


def test_section_of_another_method_is_refused():
    with pytest.raises(ConfigError, match="section 'emvp' is for method 'emvp'"):
        ModelConfig.from_dict({"method": "selavpr", "emvp": {}})


def test_custom_arch_needs_sizes_and_named_arch_refuses_them():
    with pytest.raises(ConfigError, match="custom' needs embed_dim"):
        ModelConfig.from_dict({"method": "selavpr", "backbone": {"arch": "custom"}})
    with pytest.raises(ConfigError, match="fixed by arch 'vitb14'"):
        ModelConfig.from_dict({"method": "selavpr", "backbone": {"arch": "vitb14", "depth": 6}})


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("method: selavpr\nselavpr:\n  adapter_ratoi: 0.5\n")
    with pytest.raises(ConfigError, match=rf"{bad}: selavpr\.adapter_ratoi: unknown key"):
        load_config(ModelConfig, bad)
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(ModelConfig, bad)
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(ModelConfig, tmp_path / "missing.yaml")


def test_derived_layouts_match_the_papers():
    selavpr = ModelConfig.from_dict({"method": "selavpr", "backbone": {"arch": "vitl14"}})
    assert selavpr.layout().float_dim == 1024
    assert selavpr.local_grid == (61, 61)  # 16 x 16 patches at 224 px
    assert selavpr.with_input(322, 434).local_grid == (89, 121)  # the grid follows the input size
    pp_l = ModelConfig.from_dict({"method": "selavpr++", "backbone": {"arch": "vitl14"}})
    pp_l_sizes = (pp_l.float_dim, pp_l.options.side_start, pp_l.options.mca_channels)
    assert pp_l_sizes == (4096, 8, (512, 256, 32, 128, 32, 128))
    pp_b = ModelConfig.from_dict({"method": "selavpr++", "backbone": {"arch": "vitb14"}})
    pp_b_sizes = (pp_b.float_dim, pp_b.options.side_start, pp_b.options.mca_channels)
    assert pp_b_sizes == (2048, 0, (384, 192, 24, 96, 24, 96))
    assert ModelConfig.from_dict({"method": "emvp"}).float_dim == 64 * 128 + 256 == 8448
    hash_only = ModelConfig.from_dict({"method": "selavpr++", "selavprpp": {"branches": ["hash"]}})
    assert hash_only.float_dim == 512 and hash_only.learned_codes


def test_shipped_model_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "config" / "models").glob("*.yaml"))
    assert len(configs) >= 6
    methods = {ModelConfig.load(p).method for p in configs}
    assert methods == {"selavpr", "selavpr++", "emvp", "dinov2-gem"}
