"""Import released weights into this package's models.

Supported releases:

* ``dinov2``: the official ``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`` state dicts;
* ``selavpr``: the SelaVPR release, ``{"model_state_dict": ...}`` with
  ``module.`` prefixes, ViT-L/14 with or without registers;
* ``selavpr++``: the SelaVPR++ base/large releases, float-only
  (``SelaVPRplusplus_{base,large}.pth``) and binary + re-rank
  (``..._rerank.pth``).

Every source key is mapped by an explicit rule and every model weight must
be filled: an unmapped, missing or wrongly shaped tensor is an error that
names it. The architecture (width, depth, registers, branches) is read off
the file, so the user never has to say which variant it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from selavpr_ros.errors import CheckpointError
from selavpr_ros.models.config import ModelConfig
from selavpr_ros.models.vpr import VPRModel, build_model
from selavpr_ros.models.weights import (
    check_finite,
    describe_backbone,
    infer_backbone,
    load_dinov2_pretrain,
    load_strict,
    read_weights_file,
    resolve_weights,
)

RELEASES = ("dinov2", "selavpr", "selavpr++")

# Official download locations of the released checkpoints.
RELEASE_URLS = {
    "selavpr++/base": "https://huggingface.co/fenglu96/SelaVPRplusplus/resolve/main/SelaVPRplusplus_base.pth",
    "selavpr++/base_rerank": (
        "https://huggingface.co/fenglu96/SelaVPRplusplus/resolve/main/SelaVPRplusplus_base_rerank.pth"
    ),
    "selavpr++/large": "https://huggingface.co/fenglu96/SelaVPRplusplus/resolve/main/SelaVPRplusplus_large.pth",
    "selavpr++/large_rerank": (
        "https://huggingface.co/fenglu96/SelaVPRplusplus/resolve/main/SelaVPRplusplus_large_rerank.pth"
    ),
}

# (source pattern, target template or function of the match); the first match wins.
Rule = tuple[str, "str | Callable[[re.Match[str]], str]"]

SELAVPR_RULES: list[Rule] = [
    (r"^backbone\.blocks\.(\d+)\.adapter1\.D_fc1\.(weight|bias)$", r"backbone.blocks.\1.serial_adapter.down.\2"),
    (r"^backbone\.blocks\.(\d+)\.adapter1\.D_fc2\.(weight|bias)$", r"backbone.blocks.\1.serial_adapter.up.\2"),
    (r"^backbone\.blocks\.(\d+)\.adapter2\.D_fc1\.(weight|bias)$", r"backbone.blocks.\1.parallel_adapter.down.\2"),
    (r"^backbone\.blocks\.(\d+)\.adapter2\.D_fc2\.(weight|bias)$", r"backbone.blocks.\1.parallel_adapter.up.\2"),
    (r"^backbone\.(.+)$", r"backbone.\1"),
    (r"^aggregation\.1\.p$", r"global_head.gem.p"),
    (r"^LocalAdapt\.(upconv[12])\.(weight|bias)$", r"local_head.\1.\2"),
]

_MCA = {
    "D_fc1": "down",
    "D_fc2": "up",
    "branch1": "branch1x1",
    "branch2.0": "branch3x3.0",
    "branch2.1": "branch3x3.1",
    "branch3.0": "branch5x5.0",
    "branch3.1": "branch5x5.1",
}
_MCA_PART = "|".join(re.escape(k) for k in sorted(_MCA, key=len, reverse=True))


def _mca_rule(chain: str) -> Callable[[re.Match[str]], str]:
    return lambda m: f"{chain}.{m[1]}.{_MCA[m[2]]}.{m[3]}"


SELAVPRPP_RULES: list[Rule] = [
    (rf"^backbone\.adapters\.(\d+)\.({_MCA_PART})\.(.+)$", _mca_rule("float_adapters")),
    (rf"^backbone\.adapters_hashing\.(\d+)\.({_MCA_PART})\.(.+)$", _mca_rule("hash_adapters")),
    (r"^backbone\.(.+)$", r"backbone.\1"),
    (r"^linear1\.(weight|bias)$", r"float_head.proj_in.\1"),
    (r"^linear2\.(weight|bias)$", r"float_head.proj_out.\1"),
    (r"^aggregation\.1\.p$", r"float_head.gem.p"),
    (r"^linear3\.(weight|bias)$", r"hash_head.proj_in.\1"),
    (r"^linear4\.(weight|bias)$", r"hash_head.proj_out.\1"),
    (r"^aggregation_hashing\.1\.p$", r"hash_head.gem.p"),
]

# Buffers our models derive themselves (not present in any release).
DERIVED_KEYS = ("code_projection.projection",)


def _unwrap(obj: Any) -> dict[str, Tensor]:
    """The bare state dict of a release file, without wrappers and ``module.`` prefixes."""
    if isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):
        obj = obj["model_state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError("not a state dict of tensors")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in obj.items()}


def detect_release(obj: Any) -> str | None:
    """Which released format ``obj`` (a loaded file) is in, or None."""
    try:
        sd = _unwrap(obj)
    except CheckpointError:
        return None
    if "cls_token" in sd and "pos_embed" in sd:
        return "dinov2"
    if any(k.startswith("backbone.adapters.") or k.startswith("backbone.adapters_hashing.") for k in sd):
        return "selavpr++"
    if any(".adapter1.D_fc1." in k for k in sd) and any(k.startswith("LocalAdapt.") for k in sd):
        return "selavpr"
    return None


def _remap(sd: dict[str, Tensor], rules: list[Rule], source: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    unmapped = []
    for key, value in sd.items():
        for pattern, template in rules:
            m = re.match(pattern, key)
            if m:
                out[template(m) if callable(template) else m.expand(template)] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise CheckpointError(f"{source}: {len(unmapped)} keys have no place in the model: {', '.join(unmapped[:5])}")
    return out


def remap_release(kind: str, obj: Any, source: str = "release") -> dict[str, Tensor]:
    """The release's tensors under this package's parameter names (every key must map)."""
    rules = {"selavpr": SELAVPR_RULES, "selavpr++": SELAVPRPP_RULES}[kind]
    return _remap(_unwrap(obj), rules, source)


def _load_mapped(model: VPRModel, mapped: dict[str, Tensor], source: str) -> VPRModel:
    """Load a remapped release; only derived buffers may be absent from it."""
    own = model.state_dict()
    for key in DERIVED_KEYS:
        if key in own and key not in mapped:
            mapped[key] = own[key]
    load_strict(model, mapped, source)
    return model


def _backbone_section(info: dict[str, Any], source: str, **interp: Any) -> dict[str, Any]:
    """Backbone config for a trunk read off a file; unknown sizes become ``arch: custom``
    with DINOv2's head width of 64."""
    section = {"registers": info["registers"], "pretrain_grid": info["pretrain_grid"], **interp}
    if info["arch"] is not None:
        return {"arch": info["arch"], **section}
    if info["embed_dim"] % 64:
        raise CheckpointError(
            f"{source}: trunk {describe_backbone(info)} is not a DINOv2 ViT (width not a multiple of 64)"
        )
    return {
        "arch": "custom",
        "embed_dim": info["embed_dim"],
        "depth": info["depth"],
        "num_heads": info["embed_dim"] // 64,
        "ffn": info["ffn"],
        **section,
    }


def import_dinov2(path: str | os.PathLike, config: ModelConfig | None = None) -> VPRModel:
    """DINOv2 pretrain file -> a model with that trunk.

    Without ``config`` the result is the frozen DINOv2-GeM baseline; with one
    (any method), its trainable parts start from their training initialisation.
    """
    path = resolve_weights(path)
    if config is None:
        info = infer_backbone(_unwrap(read_weights_file(path)))
        config = ModelConfig.from_dict(
            {
                "method": "dinov2-gem",
                "name": f"dinov2-gem-{info['arch']}",
                "backbone": _backbone_section(info, str(path)),
            }
        )
    model = build_model(config)
    load_dinov2_pretrain(model.backbone, config.backbone, path)
    return model.eval()


def import_selavpr(path: str | os.PathLike, height: int = 224, width: int = 224) -> VPRModel:
    """SelaVPR release (``model_state_dict`` with ``module.`` prefixes) -> :class:`SelaVPR`."""
    path = resolve_weights(path)
    sd = _unwrap(read_weights_file(path))
    if detect_release(sd) != "selavpr":
        raise CheckpointError(f"{path}: not a SelaVPR release (no adapter1/LocalAdapt weights)")
    check_finite(sd, str(path))
    info = infer_backbone(sd, prefix="backbone.")
    config = ModelConfig.from_dict(
        {
            "method": "selavpr",
            "name": f"selavpr-{Path(path).stem}",
            # The reference builds every trunk, registers too, with offset 0.1 and no antialias.
            "backbone": _backbone_section(info, str(path), pos_interp_offset=0.1, pos_interp_antialias=False),
            "preprocess": {"height": height, "width": width},
            "selavpr": {
                "adapter_ratio": sd["backbone.blocks.0.adapter1.D_fc1.weight"].shape[0] / info["embed_dim"],
                "local_hidden": sd["LocalAdapt.upconv1.weight"].shape[1],
                "local_dim": sd["LocalAdapt.upconv2.weight"].shape[1],
            },
        }
    )
    return _load_mapped(build_model(config), remap_release("selavpr", sd, str(path)), str(path)).eval()


def import_selavprpp(path: str | os.PathLike, height: int = 322, width: int = 322) -> VPRModel:
    """SelaVPR++ release (float-only or binary + re-rank) -> :class:`SelaVPRPlusPlus`.

    The releases are evaluated at 322 x 322 (trained at 224), so that is the default input.
    """
    path = resolve_weights(path)
    sd = _unwrap(read_weights_file(path))
    if detect_release(sd) != "selavpr++":
        raise CheckpointError(f"{path}: not a SelaVPR++ release (no backbone.adapters weights)")
    check_finite(sd, str(path))
    info = infer_backbone(sd, prefix="backbone.")
    branches = []
    if any(k.startswith("backbone.adapters.") for k in sd):
        branches.append("float")
    if any(k.startswith("backbone.adapters_hashing.") for k in sd):
        branches.append("hash")
    n_side = len({k.split(".")[2] for k in sd if k.startswith("backbone.adapters")})
    prefix = "backbone.adapters." if "float" in branches else "backbone.adapters_hashing."
    mca = (
        sd[prefix + "0.D_fc1.weight"].shape[0],
        sd[prefix + "0.branch1.conv.weight"].shape[0],
        sd[prefix + "0.branch2.0.conv.weight"].shape[0],
        sd[prefix + "0.branch2.1.conv.weight"].shape[0],
        sd[prefix + "0.branch3.0.conv.weight"].shape[0],
        sd[prefix + "0.branch3.1.conv.weight"].shape[0],
    )
    section: dict[str, Any] = {"branches": branches, "side_start": info["depth"] - n_side, "mca_channels": list(mca)}
    if "float" in branches:
        section["float_dim"] = sd["linear2.weight"].shape[0]
    codes = {"bits": sd["linear4.weight"].shape[0]} if "hash" in branches else {}
    config = ModelConfig.from_dict(
        {
            "method": "selavpr++",
            "name": f"selavpr++-{Path(path).stem}",
            "backbone": _backbone_section(info, str(path), pos_interp_offset=0.1, pos_interp_antialias=False),
            "preprocess": {"height": height, "width": width},
            "codes": codes,
            "selavprpp": section,
        }
    )
    return _load_mapped(build_model(config), remap_release("selavpr++", sd, str(path)), str(path)).eval()


def import_release(
    kind: str, path: str | os.PathLike, config: ModelConfig | None = None, size: tuple[int, int] | None = None
) -> VPRModel:
    """Import ``path`` as release ``kind`` (``auto`` detects it)."""
    if kind == "auto":
        kind = detect_release(read_weights_file(resolve_weights(path))) or ""
        if not kind:
            raise CheckpointError(f"{path}: not a recognised release (expected one of {', '.join(RELEASES)})")
    if kind == "dinov2":
        if size is not None:
            config = (config or import_dinov2(path).config).with_input(*size)
        return import_dinov2(path, config)
    if config is not None:
        raise CheckpointError(f"--config applies to dinov2 imports only; a {kind} release fixes its own model")
    if kind == "selavpr":
        return import_selavpr(path, *(size or (224, 224)))
    if kind == "selavpr++":
        return import_selavprpp(path, *(size or (322, 322)))
    raise CheckpointError(f"unknown release kind {kind!r}; choose from auto, {', '.join(RELEASES)}")
