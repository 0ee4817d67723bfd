"""The four methods: output contract, identity at initialisation, what trains, paper sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomize_trainable, tiny_config

from selavpr_ros.models.config import ModelConfig
from selavpr_ros.models.heads import binarize, pack_codes
from selavpr_ros.models.methods.selavprpp import SelaVPRPlusPlus
from selavpr_ros.models.summary import summarize_config
from selavpr_ros.models.vpr import build_model

METHODS = [
    ("selavpr", {}),
    ("selavpr++", {}),
    ("selavpr++", {"selavprpp": {"branches": ["float"]}}),
    ("selavpr++", {"selavprpp": {"branches": ["hash"]}}),
    ("emvp", {}),
    ("dinov2-gem", {}),
]


def model_for(method, sections, registers=0, height=56, width=84, seed=0):
    torch.manual_seed(seed)
    model = build_model(tiny_config(method, height, width, registers, **sections))
    return randomize_trainable(model, seed).eval()


@pytest.mark.parametrize("method,sections", METHODS)
@pytest.mark.parametrize("registers", [0, 4])
def test_output_contract(method, sections, registers):
    model = model_for(method, sections, registers)
    layout = model.layout
    x = torch.randn(3, 3, 56, 84)
    with torch.inference_mode():
        out = model(x)
    assert out.codes.dtype == torch.uint8 and out.codes.shape == (3, layout.code_bytes) == (3, 64)
    assert out.descriptors.shape == (3, layout.float_dim)
    torch.testing.assert_close(out.descriptors.norm(dim=1), torch.ones(3))
    assert out.hash_z.shape == (3, 512)
    expected_codes = np.packbits((out.hash_z >= 0).numpy(), axis=1)
    np.testing.assert_array_equal(out.codes.numpy(), expected_codes)
    if method == "selavpr":
        assert out.local_features.shape == (3, 4 * 4 - 3, 4 * 6 - 3, 128)  # 4 x 6 patches -> 13 x 21
        torch.testing.assert_close(out.local_features.norm(dim=-1), torch.ones(3, 13, 21))
    else:
        assert out.local_features is None and not layout.has_local
    # Deterministic and batch-independent.
    with torch.inference_mode():
        again = model(x[1:2])
    torch.testing.assert_close(again.descriptors, out.descriptors[1:2], atol=1e-5, rtol=1e-4)


def test_zero_initialised_selavpr_is_the_plain_dinov2_gem_baseline():
    torch.manual_seed(0)
    selavpr = build_model(tiny_config("selavpr")).eval()
    baseline = build_model(tiny_config("dinov2-gem")).eval()
    trunk = {k: v for k, v in selavpr.state_dict().items() if k.startswith("backbone.") and "_adapter." not in k}
    baseline.load_state_dict({**baseline.state_dict(), **trunk})
    x = torch.randn(2, 3, 56, 84)
    with torch.no_grad():
        torch.testing.assert_close(selavpr(x).descriptors, baseline(x).descriptors)
        randomize_trainable(selavpr)
        assert (selavpr(x).descriptors - baseline(x).descriptors).abs().max() > 1e-3


def test_zero_initialised_side_chain_returns_the_trunk_output():
    torch.manual_seed(0)
    model = build_model(tiny_config("selavpr++")).eval()
    x = torch.randn(2, 3, 56, 84)
    with torch.no_grad():
        seed, taps, grid = model.trunk(x)
        trunk_out = taps[-1]
        side_patches = model._run_chain(model.float_adapters, seed, taps, grid)
        expected = model.backbone.split_tokens(model.backbone.norm(seed), grid)[1]
    # With zero up-projections y never moves: the side state stays at its seed.
    torch.testing.assert_close(side_patches, expected)
    assert not torch.allclose(trunk_out, seed)


def test_side_start_taps_follow_the_reference():
    cfg = tiny_config("selavpr++", selavprpp={"side_start": 3})
    model = build_model(cfg).eval()
    assert len(model.float_adapters) == 1  # depth 4, side from block index 3
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        tokens = model.backbone.prepare_tokens(x)
        after1, _ = model.backbone.run_blocks(tokens, stop=3)
        after2 = model.backbone.blocks[3](after1)
        seed, taps, _ = model.trunk(x)
    torch.testing.assert_close(seed, after1)
    assert len(taps) == 1
    torch.testing.assert_close(taps[0], after2)


@pytest.mark.parametrize("method,sections", METHODS)
def test_only_adapters_and_heads_train(method, sections):
    model = model_for(method, sections).train()
    x = torch.randn(2, 3, 56, 84)
    out = model(x)
    loss = out.descriptors.sum() + out.hash_z.sum() + (0 if out.local_features is None else out.local_features.sum())
    loss.backward()
    for name, p in model.named_parameters():
        if (
            name.startswith("backbone.")
            and "_adapter." not in name
            and not (method == "emvp" and name.startswith("backbone.norm."))
        ):
            assert not p.requires_grad and p.grad is None, name
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_selavprpp_trunk_builds_no_graph():
    model = model_for("selavpr++", {}).train()
    seed, taps, _ = model.trunk(torch.randn(1, 3, 56, 56))
    assert not seed.requires_grad and all(t.grad_fn is None for t in taps)
    assert isinstance(model, SelaVPRPlusPlus)


def test_straight_through_sign():
    z = torch.tensor([[-0.5, 0.0, 0.2, -1e-9]], requires_grad=True)
    b = binarize(z)
    assert b.tolist() == [[-1.0, 1.0, 1.0, -1.0]]
    (b * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    assert z.grad.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert pack_codes(torch.tensor([[1.0] + [-1.0] * 7 + [-1.0] * 7 + [0.0]])).tolist() == [[128, 1]]


def test_parameter_counts_match_the_papers():
    selavpr = summarize_config(ModelConfig.from_dict({"method": "selavpr", "backbone": {"arch": "vitl14"}}))
    adapters = (
        selavpr.group("serial_adapters (in-block)").trainable + selavpr.group("parallel_adapters (in-block)").trainable
    )
    assert adapters == 50_405_376  # "about 50.4 M"
    assert selavpr.group("local_head").trainable == 2_654_592  # "about 2.65 M"
    assert selavpr.frozen == 304_368_640  # DINOv2 ViT-L/14
    pp = summarize_config(ModelConfig.from_dict({"method": "selavpr++", "backbone": {"arch": "vitl14"}}))
    assert pp.group("float_adapters").per_module == 1_354_944  # "about 1.355 M" per MultiConv adapter
    assert pp.group("float_adapters").modules == 16
    emvp = summarize_config(ModelConfig.from_dict({"method": "emvp", "backbone": {"arch": "vitb14"}}))
    assert emvp.group("recalibration").trainable == 4 * (768 * 16 + 16 + 16 + 1)  # ~0.05 M DPN_R
