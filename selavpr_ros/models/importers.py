"""Importing released weights: the machinery every method's importer shares.

A method declares its release kind, detector and importer in its registry
entry (``selavpr_ros/models/methods/``); this module reads release files,
maps their keys by explicit rules and dispatches ``import-checkpoint``.
Every source key must be mapped and every model weight filled: an
unmapped, missing or wrongly shaped tensor is an error that names it. The
architecture (width, depth, registers, branches) is read off the file, so
the user never has to say which variant it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from selavpr_ros.errors import CheckpointError
from selavpr_ros.models.registry import list_releases
from selavpr_ros.models.vpr import VPRModel
from selavpr_ros.models.weights import (
    check_finite,
    describe_backbone,
    infer_backbone,
    load_strict,
    read_weights_file,
    resolve_weights,
)

# (source pattern, target template or function of the match); the first match wins.
Rule = tuple[str, "str | Callable[[re.Match[str]], str]"]

# Buffers our models derive themselves (not present in any release).
DERIVED_KEYS = ("code_projection.projection",)


def unwrap_state_dict(obj: Any) -> dict[str, Tensor]:
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
        sd = unwrap_state_dict(obj)
    except CheckpointError:
        return None
    for kind, spec in list_releases().items():
        if spec.detect is not None and spec.detect(sd):
            return kind
    return None


def read_release(
    source: str | os.PathLike, is_release: Callable[[dict[str, Tensor]], bool], what: str
) -> tuple[Path, dict[str, Tensor], dict[str, Any]]:
    """(local path, bare state dict, trunk sizes) of a released file; refuses another release's file.

    ``what`` describes the release for the error, e.g. ``"SelaVPR release (no adapter1 weights)"``.
    """
    path = resolve_weights(source)
    sd = _ReleaseWeights(unwrap_state_dict(read_weights_file(path)))
    sd.source, sd.what = path, what.split(" (")[0]
    if not is_release(sd):
        raise CheckpointError(f"{path}: not a {what}")
    check_finite(sd, str(path))
    return path, sd, infer_backbone(sd, prefix="backbone.")


class _ReleaseWeights(dict):
    """A release's state dict whose missing key (one the importer reads the architecture from) is an
    error that says so, not a bare KeyError."""

    source: Path
    what: str

    def __missing__(self, key: str) -> Tensor:
        raise CheckpointError(f"{self.source}: this {self.what} lacks {key!r}, which tells the model's "
                              "architecture; the file is incomplete or of another model")


def remap(sd: dict[str, Tensor], rules: list[Rule], source: str) -> dict[str, Tensor]:
    """``sd`` under this package's parameter names; a key no rule matches is an error."""
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


def load_mapped(model: VPRModel, mapped: dict[str, Tensor], source: str) -> VPRModel:
    """Load a remapped release; only derived buffers may be absent from it."""
    own = model.state_dict()
    for key in DERIVED_KEYS:
        if key in own and key not in mapped:
            mapped[key] = own[key]
    load_strict(model, mapped, source)
    return model


def backbone_section(info: dict[str, Any], source: str, **interp: Any) -> dict[str, Any]:
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


def release_urls() -> dict[str, str]:
    """Named releases of every method, ``<release>/<name>`` -> URL."""
    return {f"{kind}/{name}": url for kind, spec in list_releases().items() for name, url in spec.weights.items()}


def import_release(kind: str, path: str | os.PathLike, config: Any = None, size: tuple[int, int] | None = None):
    """Import ``path`` (a file, URL or ``<release>/<name>``) as release ``kind`` (``auto`` detects it)."""
    path = release_urls().get(str(path), path)
    releases = list_releases()
    if kind == "auto":
        kind = detect_release(read_weights_file(resolve_weights(path))) or ""
        if not kind:
            raise CheckpointError(f"{path}: not a recognised release (expected one of {', '.join(releases)})")
    if kind not in releases:
        raise CheckpointError(f"unknown release kind {kind!r}; choose from auto, {', '.join(releases)}")
    importer = releases[kind].importer
    assert importer is not None, f"release {kind} has no importer"
    return importer(path, config=config, size=size)
