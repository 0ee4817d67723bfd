"""The DINOv2 trunk: position embeddings, register tokens, any input size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selavpr_ros.models.vit import DinoVisionTransformer


def make(registers=0, offset=0.1, antialias=False, grid=37):
    torch.manual_seed(0)
    return DinoVisionTransformer(
        64,
        2,
        2,
        num_register_tokens=registers,
        pretrain_grid=grid,
        interpolate_offset=offset,
        interpolate_antialias=antialias,
    ).eval()


def test_pretrain_grid_is_used_as_is():
    vit = make()
    assert vit.interpolate_pos_embed(37, 37) is vit.pos_embed


@pytest.mark.parametrize("grid", [(16, 16), (23, 16), (16, 31)])
def test_offset_interpolation_follows_the_official_formula(grid):
    vit = make()
    h, w = grid
    patch = vit.pos_embed[:, 1:].reshape(1, 37, 37, 64).permute(0, 3, 1, 2)
    expected = F.interpolate(patch, scale_factor=((h + 0.1) / 37, (w + 0.1) / 37), mode="bicubic")
    got = vit.interpolate_pos_embed(h, w)
    assert got.shape == (1, h * w + 1, 64)
    torch.testing.assert_close(got[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, h * w, 64))
    torch.testing.assert_close(got[:, 0], vit.pos_embed[:, 0])


def test_register_models_interpolate_by_size_with_antialias():
    vit = make(registers=4, offset=0.0, antialias=True)
    patch = vit.pos_embed[:, 1:].reshape(1, 37, 37, 64).permute(0, 3, 1, 2)
    expected = F.interpolate(patch, size=(16, 23), mode="bicubic", antialias=True)
    torch.testing.assert_close(
        vit.interpolate_pos_embed(16, 23)[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, -1, 64)
    )


def test_tokens_layout_with_registers_and_non_square_input():
    vit = make(registers=4)
    x = torch.randn(2, 3, 14 * 5, 14 * 9)
    tokens = vit.prepare_tokens(x)
    assert tokens.shape == (2, 1 + 4 + 45, 64)
    torch.testing.assert_close(tokens[:, 1:5], vit.register_tokens.expand(2, -1, -1))
    out = vit(x)
    assert out["patches"].shape == (2, 5, 9, 64) and out["cls"].shape == (2, 64)


def test_position_cache_follows_size_and_weight_changes():
    vit = make()
    a = vit.prepare_tokens(torch.zeros(1, 3, 224, 224))
    b = vit.prepare_tokens(torch.zeros(1, 3, 224, 322))
    assert a.shape[1] == 257 and b.shape[1] == 1 + 16 * 23
    with torch.no_grad():
        vit.pos_embed.add_(1.0)
    c = vit.prepare_tokens(torch.zeros(1, 3, 224, 224))
    torch.testing.assert_close(c, a + 1.0)


def test_input_must_be_a_multiple_of_the_patch_size():
    with pytest.raises(ValueError, match="not a positive multiple of the patch size 14"):
        make()(torch.zeros(1, 3, 225, 224))


def test_batch_elements_are_independent():
    vit = make()
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        together = vit(x)["patches"]
        alone = torch.cat([vit(x[i : i + 1])["patches"] for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
