"""The method registry: the built-in four, and a fifth method added as one file plus its YAML."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import numpy as np
import pytest
import torch

from selavpr_ros.errors import ConfigError
from selavpr_ros.models.config import ModelConfig
from selavpr_ros.models.registry import MethodSpec, get_method, list_methods, list_releases, register_method

TOY_METHOD = '''
"""A toy method: mean-pooled patch tokens through one trainable linear layer."""
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from selavpr_ros.config import check
from selavpr_ros.models.config import MethodConfig
from selavpr_ros.models.registry import MethodSpec, register_method
from selavpr_ros.models.vpr import VPRModel


@dataclass
class ToyConfig(MethodConfig):
    dim: int = 48

    def __post_init__(self):
        check(self.dim > 0, "toy.dim must be positive")

    def descriptor_dim(self, model):
        return self.dim

    def estimate_macs(self, model, tokens, grid):
        return {"heads": float(model.backbone.spec.embed_dim * self.dim)}


class Toy(VPRModel):
    def __init__(self, config):
        super().__init__(config)
        self.proj = nn.Linear(self.backbone.embed_dim, config.section(ToyConfig).dim)

    def encode(self, images):
        patches = self.backbone(images)["patches"]  # (B, h, w, C) or (B, N, C)
        pooled = patches.flatten(1, -2).mean(1)
        return F.normalize(self.proj(pooled), dim=-1), None, None


register_method(MethodSpec(name="toy", section="toy", config=ToyConfig, model=Toy, summary="toy"))
'''

TOY_YAML = """\
method: toy
name: toy-tiny
backbone: {arch: custom, embed_dim: 64, depth: 2, num_heads: 2}
preprocess: {height: 42, width: 56}
toy: {dim: 24}
"""


def test_builtin_methods_are_registered_with_their_sections_and_releases():
    assert list_methods() == ["dinov2-gem", "emvp", "selavpr", "selavpr++"]
    assert {m: get_method(m).section for m in list_methods()} == {
        "dinov2-gem": "dinov2_gem", "emvp": "emvp", "selavpr": "selavpr", "selavpr++": "selavprpp"}
    assert sorted(list_releases()) == ["dinov2", "selavpr", "selavpr++"]
    assert set(get_method("selavpr++").weights) == {"base", "base_rerank", "large", "large_rerank"}


def test_a_fifth_method_is_one_file_plus_its_yaml(tmp_path):
    module_path = tmp_path / "toy_method.py"
    module_path.write_text(TOY_METHOD)
    (tmp_path / "toy.yaml").write_text(TOY_YAML)
    spec = importlib.util.spec_from_file_location("toy_method", module_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_method"] = module
    try:
        spec.loader.exec_module(module)
        assert "toy" in list_methods()
        config = ModelConfig.load(tmp_path / "toy.yaml")
        assert config.float_dim == 24 and config.layout().code_bits == 512 and config.local_grid is None

        from selavpr_ros.inference.torch_backend import TorchExtractor
        from selavpr_ros.models.checkpoint import read_checkpoint, save_checkpoint
        from selavpr_ros.models.summary import estimate_macs, summarize
        from selavpr_ros.models.vpr import build_model

        torch.manual_seed(0)
        model = build_model(config).eval()
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["proj.weight", "proj.bias"]
        out = model(torch.randn(2, 3, 42, 56))
        assert out.codes.shape == (2, 64) and out.descriptors.shape == (2, 24)
        torch.testing.assert_close(out.descriptors.norm(dim=1), torch.ones(2))
        assert estimate_macs(config)["heads"] == 64 * 24
        assert summarize(model).trainable == 64 * 24 + 24

        # The method travels through checkpoints and the extractor like a built-in one.
        ckpt = save_checkpoint(model, tmp_path / "toy.ckpt")
        again = read_checkpoint(tmp_path / "toy.ckpt")
        assert again.config.to_dict() == config.to_dict() and again.config.to_dict()["toy"] == {"dim": 24}
        rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
        a = TorchExtractor(model, device="cpu", model_id=ckpt.model_id).extract([rgb])
        b = TorchExtractor(again.build(), device="cpu").extract([rgb])
        np.testing.assert_allclose(a.descriptors, b.descriptors, rtol=0, atol=1e-6)

        with pytest.raises(ConfigError, match=r"toy\.dim must be positive"):
            ModelConfig.from_dict({"method": "toy", "toy": {"dim": 0}})
        with pytest.raises(ConfigError, match="section 'toy' is for method 'toy', but method is 'emvp'"):
            ModelConfig.from_dict({"method": "emvp", "toy": {"dim": 3}})
        with pytest.raises(ConfigError, match="clashes"):
            register_method(MethodSpec(name="toy2", section="toy", config=module.ToyConfig, model=module.Toy))
    finally:
        from selavpr_ros.models.registry import unregister_method

        unregister_method("toy")
        sys.modules.pop("toy_method", None)
    assert "toy" not in list_methods()


def test_unknown_method_lists_the_registered_ones():
    listed = r"'dinov2-gem', 'emvp', 'selavpr', 'selavpr\+\+'"
    with pytest.raises(ConfigError, match=rf"method: 'netvlad' is not one of {listed}"):
        get_method("netvlad")


def test_format_1_files_with_null_sections_still_load():
    """Checkpoints written before the registry list every method's section, unused ones null."""
    old = {"method": "emvp", "selavpr": None, "selavprpp": None, "dinov2_gem": None, "emvp": {"clusters": 8}}
    config = ModelConfig.from_dict(old)
    assert config.float_dim == 8 * 128 + 256
    assert "selavpr" not in config.to_dict() and config.to_dict()["emvp"]["clusters"] == 8


def test_builtin_checkpoint_still_loads():
    from selavpr_ros.models.checkpoint import read_checkpoint
    from selavpr_ros.models.zoo import builtin_checkpoint

    ckpt = read_checkpoint(builtin_checkpoint())
    assert ckpt.config.method == "selavpr++" and ckpt.layout.float_dim == 512


@pytest.mark.parametrize("section", ["options"])
def test_options_is_not_a_yaml_key(section):
    with pytest.raises(ConfigError, match="method options go under 'selavpr:'"):
        ModelConfig.from_dict({"method": "selavpr", section: {}})


def test_method_section_written_as_yaml_round_trips(tmp_path):
    yaml_text = textwrap.dedent("""\
        method: selavpr++
        backbone: {arch: custom, embed_dim: 128, depth: 4, num_heads: 2}
        preprocess: {height: 56, width: 56}
        selavprpp: {branches: [hash]}
    """)
    (tmp_path / "m.yaml").write_text(yaml_text)
    config = ModelConfig.load(tmp_path / "m.yaml")
    assert config.learned_codes and config.float_dim == 512
    assert ModelConfig.from_dict(config.to_dict()) == config
