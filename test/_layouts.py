"""Random weights in the exact key layouts of the released files.

Written from the published architectures (key names and shapes listed here
explicitly), not from this package's modules, so loading them tests the
importers against the real formats.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _rand(shape, gen, scale=0.02, offset=0.0):
    return torch.randn(shape, generator=gen) * scale + offset


def dinov2_state_dict(dim=128, depth=3, registers=0, ffn="mlp", grid=37, seed=0) -> dict[str, Tensor]:
    """``dinov2_vit*14*_pretrain.pth`` layout."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "cls_token": _rand((1, 1, dim), g),
        "pos_embed": _rand((1, grid * grid + 1, dim), g),
        "mask_token": _rand((1, dim), g),
        "patch_embed.proj.weight": _rand((dim, 3, 14, 14), g),
        "patch_embed.proj.bias": _rand((dim,), g),
    }
    if registers:
        sd["register_tokens"] = _rand((1, registers, dim), g)
    for i in range(depth):
        b = f"blocks.{i}."
        sd[b + "norm1.weight"] = _rand((dim,), g, 0.1, 1.0)
        sd[b + "norm1.bias"] = _rand((dim,), g)
        sd[b + "attn.qkv.weight"] = _rand((3 * dim, dim), g)
        sd[b + "attn.qkv.bias"] = _rand((3 * dim,), g)
        sd[b + "attn.proj.weight"] = _rand((dim, dim), g)
        sd[b + "attn.proj.bias"] = _rand((dim,), g)
        sd[b + "ls1.gamma"] = _rand((dim,), g, 0.1, 1.0)
        sd[b + "norm2.weight"] = _rand((dim,), g, 0.1, 1.0)
        sd[b + "norm2.bias"] = _rand((dim,), g)
        if ffn == "swiglu":
            hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
            sd[b + "mlp.w12.weight"] = _rand((2 * hidden, dim), g)
            sd[b + "mlp.w12.bias"] = _rand((2 * hidden,), g)
            sd[b + "mlp.w3.weight"] = _rand((dim, hidden), g)
            sd[b + "mlp.w3.bias"] = _rand((dim,), g)
        else:
            sd[b + "mlp.fc1.weight"] = _rand((4 * dim, dim), g)
            sd[b + "mlp.fc1.bias"] = _rand((4 * dim,), g)
            sd[b + "mlp.fc2.weight"] = _rand((dim, 4 * dim), g)
            sd[b + "mlp.fc2.bias"] = _rand((dim,), g)
        sd[b + "ls2.gamma"] = _rand((dim,), g, 0.1, 1.0)
    sd["norm.weight"] = _rand((dim,), g, 0.1, 1.0)
    sd["norm.bias"] = _rand((dim,), g)
    return sd


def selavpr_release(dim=128, depth=3, registers=0, seed=1) -> dict:
    """SelaVPR release: ``{"model_state_dict": {"module.backbone...": ...}, ...}``."""
    g = torch.Generator().manual_seed(seed)
    sd = {f"backbone.{k}": v for k, v in dinov2_state_dict(dim, depth, registers, seed=seed).items()}
    h = dim // 2
    for i in range(depth):
        for a in ("adapter1", "adapter2"):
            p = f"backbone.blocks.{i}.{a}."
            sd[p + "D_fc1.weight"] = _rand((h, dim), g)
            sd[p + "D_fc1.bias"] = _rand((h,), g)
            sd[p + "D_fc2.weight"] = _rand((dim, h), g)
            sd[p + "D_fc2.bias"] = _rand((dim,), g)
    sd["aggregation.1.p"] = torch.tensor([3.1])
    sd["LocalAdapt.upconv1.weight"] = _rand((dim, 256, 3, 3), g)
    sd["LocalAdapt.upconv1.bias"] = _rand((256,), g)
    sd["LocalAdapt.upconv2.weight"] = _rand((256, 128, 3, 3), g)
    sd["LocalAdapt.upconv2.bias"] = _rand((128,), g)
    return {
        "epoch_num": 3,
        "model_state_dict": {f"module.{k}": v for k, v in sd.items()},
        "optimizer_state_dict": {},
        "best_r5": 90.0,
        "not_improved_num": 0,
    }


def _mca(prefix: str, dim: int, channels, g) -> dict[str, Tensor]:
    hidden, c1, c3r, c3, c5r, c5 = channels
    sd = {
        prefix + "D_fc1.weight": _rand((hidden, dim), g),
        prefix + "D_fc1.bias": _rand((hidden,), g),
        prefix + "D_fc2.weight": _rand((dim, hidden), g),
        prefix + "D_fc2.bias": _rand((dim,), g),
    }

    def conv_bn(name, cin, cout, k):
        sd[f"{prefix}{name}.conv.weight"] = _rand((cout, cin, k, k), g, 0.1)
        sd[f"{prefix}{name}.conv.bias"] = _rand((cout,), g)
        sd[f"{prefix}{name}.bn.weight"] = _rand((cout,), g, 0.1, 1.0)
        sd[f"{prefix}{name}.bn.bias"] = _rand((cout,), g)
        sd[f"{prefix}{name}.bn.running_mean"] = _rand((cout,), g, 0.1)
        sd[f"{prefix}{name}.bn.running_var"] = torch.rand((cout,), generator=g) + 0.5
        sd[f"{prefix}{name}.bn.num_batches_tracked"] = torch.tensor(100)

    conv_bn("branch1", hidden, c1, 1)
    conv_bn("branch2.0", hidden, c3r, 1)
    conv_bn("branch2.1", c3r, c3, 3)
    conv_bn("branch3.0", hidden, c5r, 1)
    conv_bn("branch3.1", c5r, c5, 5)
    return sd


def selavprpp_release(dim=128, depth=3, side=None, hashing=True, float_dim=256, seed=2) -> dict:
    """SelaVPR++ release (float-only, or binary + re-rank with ``hashing``)."""
    g = torch.Generator().manual_seed(seed)
    side = depth if side is None else side
    sd = {f"backbone.{k}": v for k, v in dinov2_state_dict(dim, depth, seed=seed).items()}
    hidden = dim // 2
    channels = (hidden, hidden // 2, hidden // 16, hidden // 4, hidden // 16, hidden // 4)
    for j in range(side):
        sd.update(_mca(f"backbone.adapters.{j}.", dim, channels, g))
    sd["linear1.weight"], sd["linear1.bias"] = _rand((dim, dim), g), _rand((dim,), g)
    sd["aggregation.1.p"] = torch.tensor([3.0])
    sd["linear2.weight"], sd["linear2.bias"] = _rand((float_dim, dim), g), _rand((float_dim,), g)
    if hashing:
        for j in range(side):
            sd.update(_mca(f"backbone.adapters_hashing.{j}.", dim, channels, g))
        sd["linear3.weight"], sd["linear3.bias"] = _rand((dim, dim), g), _rand((dim,), g)
        sd["aggregation_hashing.1.p"] = torch.tensor([3.0])
        sd["linear4.weight"], sd["linear4.bias"] = _rand((512, dim), g), _rand((512,), g)
    return {"model_state_dict": {f"module.{k}": v for k, v in sd.items()}}
