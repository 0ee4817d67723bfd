"""Official weights and released checkpoints load strictly, every key lands, bad files are named."""

from __future__ import annotations

import pytest
import torch
from _layouts import dinov2_state_dict, selavpr_release, selavprpp_release
from conftest import tiny_config

from selavpr_ros.errors import CheckpointError
from selavpr_ros.models.config import ModelConfig
from selavpr_ros.models.importers import detect_release, import_release, remap, unwrap_state_dict
from selavpr_ros.models.methods import selavpr, selavprpp
from selavpr_ros.models.vpr import build_model
from selavpr_ros.models.weights import load_dinov2_pretrain


def _save(obj, path):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_pretrain_loads_every_key(tmp_path, registers):
    sd = dinov2_state_dict(128, 4, registers)
    path = _save(sd, tmp_path / "dinov2.pth")
    for method in ("dinov2-gem", "selavpr", "selavpr++", "emvp"):
        model = build_model(tiny_config(method, registers=registers))
        load_dinov2_pretrain(model.backbone, model.config.backbone, path)
        own = model.backbone.state_dict()
        for key, value in sd.items():
            torch.testing.assert_close(own[key], value, rtol=0, atol=0)


def test_real_vits14_layout_with_registers(tmp_path):
    sd = dinov2_state_dict(384, 12, registers=4)
    path = _save(sd, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    model = import_release("dinov2", path)
    assert model.config.backbone.arch == "vits14" and model.config.backbone.registers == 4
    # Register models follow the official hub: size-based bicubic with antialias.
    assert model.backbone.interpolate_antialias and model.backbone.interpolate_offset == 0.0
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.descriptors.shape == (1, 384)


def test_vitg_swiglu_layout_is_recognised():
    from selavpr_ros.models.weights import infer_backbone

    info = infer_backbone({k: v for k, v in dinov2_state_dict(64, 2, ffn="swiglu").items()})
    assert info["ffn"] == "swiglu" and info["depth"] == 2


def test_wrong_backbone_is_named(tmp_path):
    path = _save(dinov2_state_dict(128, 4), tmp_path / "d.pth")
    cfg = ModelConfig.from_dict({"method": "dinov2-gem", "backbone": {"arch": "vits14"}})
    model = build_model(cfg)
    with pytest.raises(
        CheckpointError,
        match=r"holds a ViT \(embed_dim 128, 4 blocks\) trunk, but the configuration "
        r"asks for ViT-S/14 \(embed_dim 384, 12 blocks\)",
    ):
        load_dinov2_pretrain(model.backbone, cfg.backbone, path)


def test_bad_files_are_refused_with_reasons(tmp_path):
    model = build_model(tiny_config("dinov2-gem"))
    good = _save(dinov2_state_dict(128, 4), tmp_path / "good.pth")
    data = good.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_dinov2_pretrain(model.backbone, model.config.backbone, tmp_path / "trunc.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_dinov2_pretrain(model.backbone, model.config.backbone, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_dinov2_pretrain(model.backbone, model.config.backbone, tmp_path / "missing.pth")
    sd = dinov2_state_dict(128, 4)
    sd["blocks.2.attn.qkv.weight"][0, :3] = float("nan")
    with pytest.raises(CheckpointError, match=r"'blocks.2.attn.qkv.weight' has 3 NaN or infinite values"):
        load_dinov2_pretrain(model.backbone, model.config.backbone, _save(sd, tmp_path / "nan.pth"))
    sd = dinov2_state_dict(128, 4)
    del sd["blocks.1.ls1.gamma"]
    with pytest.raises(CheckpointError, match=r"missing.*blocks\.1\.ls1\.gamma"):
        load_dinov2_pretrain(model.backbone, model.config.backbone, _save(sd, tmp_path / "miss.pth"))
    sd = dinov2_state_dict(128, 4)
    sd["head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected.*head\.weight"):
        load_dinov2_pretrain(model.backbone, model.config.backbone, _save(sd, tmp_path / "extra.pth"))
    with pytest.raises(CheckpointError, match="not a DINOv2 pretrain state dict"):
        load_dinov2_pretrain(model.backbone, model.config.backbone, _save({"x": 1}, tmp_path / "foreign.pth"))
    (tmp_path / "notes.pth").write_text("hello, these are notes " * 8)  # not a pickle at all
    with pytest.raises(CheckpointError, match=r"not a PyTorch weights file: .*unknown pickle opcode 101: the file "
                                              r"is not a pickle\); never load it with weights_only=False"):
        load_dinov2_pretrain(model.backbone, model.config.backbone, tmp_path / "notes.pth")


@pytest.mark.parametrize("kind, release, key", [
    ("selavpr++", lambda: selavprpp_release(128, 4, side=3, hashing=True), "linear2.weight"),
    ("selavpr++", lambda: selavprpp_release(128, 4, side=3, hashing=False), "backbone.adapters.0.D_fc1.weight"),
    ("selavpr", lambda: selavpr_release(128, 4, 0), "LocalAdapt.upconv1.weight"),
])
def test_a_release_without_a_key_the_architecture_is_read_from_is_named(tmp_path, kind, release, key):
    data = release()
    sd = data.get("model_state_dict", data)
    del sd[next(k for k in sd if k.removeprefix("module.") == key)]
    with pytest.raises(CheckpointError, match=rf"lacks '{key}', which tells the model's architecture"):
        import_release(kind, _save(data, tmp_path / "partial.pth"))


@pytest.mark.parametrize("registers", [0, 4])
def test_selavpr_release_every_key_lands(tmp_path, registers):
    release = selavpr_release(128, 4, registers)
    path = _save(release, tmp_path / "SelaVPR_msls.pth")
    assert detect_release(torch.load(path, weights_only=True)) == "selavpr"
    model = import_release("auto", path)
    assert model.config.method == "selavpr" and model.config.backbone.registers == registers
    assert (model.config.backbone.pos_interp_offset, model.config.backbone.pos_interp_antialias) == (0.1, False)
    mapped = remap(unwrap_state_dict(release), selavpr.RULES, "release")
    assert len(mapped) == len(release["model_state_dict"])
    own = model.state_dict()
    for key, value in mapped.items():
        torch.testing.assert_close(own[key], value, rtol=0, atol=0)
    assert set(own) - set(mapped) == {"code_projection.projection"}
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = model(x), import_release("selavpr", path)(x)
    torch.testing.assert_close(a.descriptors, b.descriptors, rtol=0, atol=0)
    assert a.local_features.shape == (2, 61, 61, 128)


@pytest.mark.parametrize("hashing", [False, True])
def test_selavprpp_release_every_key_lands(tmp_path, hashing):
    release = selavprpp_release(128, 4, side=3, hashing=hashing)
    path = _save(release, tmp_path / "pp.pth")
    model = import_release("selavpr++", path)
    cfg = model.config
    assert cfg.options.branches == (["float", "hash"] if hashing else ["float"])
    assert cfg.options.side_start == 1 and cfg.float_dim == 256 and cfg.preprocess.height == 322
    mapped = remap(unwrap_state_dict(release), selavprpp.RULES, "release")
    own = model.state_dict()
    for key, value in mapped.items():
        torch.testing.assert_close(own[key], value, rtol=0, atol=0)
    derived = set(own) - set(mapped)
    assert derived == (set() if hashing else {"code_projection.projection"})
    with torch.no_grad():
        out = model(torch.randn(2, 3, 322, 322))
    assert out.descriptors.shape == (2, 256) and out.codes.shape == (2, 64)


def test_real_vitb_selavprpp_base_layout(tmp_path):
    """The SelaVPR++ base release layout at full size: ViT-B/14, 12 side adapters per branch."""
    release = selavprpp_release(768, 12, hashing=True, float_dim=2048)
    model = import_release("selavpr++", _save(release, tmp_path / "SelaVPRplusplus_base_rerank.pth"))
    cfg = model.config
    assert cfg.backbone.arch == "vitb14" and cfg.options.side_start == 0
    assert cfg.options.mca_channels == (384, 192, 24, 96, 24, 96) and cfg.float_dim == 2048


def test_unmapped_keys_and_wrong_kind_are_refused(tmp_path):
    release = selavpr_release(128, 4)
    release["model_state_dict"]["module.extra_head.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"1 keys have no place in the model: extra_head\.weight"):
        import_release("selavpr", _save(release, tmp_path / "a.pth"))
    with pytest.raises(CheckpointError, match="not a SelaVPR\\+\\+ release"):
        import_release("selavpr++", _save(selavpr_release(128, 4), tmp_path / "b.pth"))
    with pytest.raises(CheckpointError, match="not a recognised release"):
        import_release("auto", _save({"weights": torch.zeros(3)}, tmp_path / "c.pth"))
