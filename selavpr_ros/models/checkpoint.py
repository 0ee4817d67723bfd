"""The package's checkpoint format: one self-describing file per model.

A checkpoint holds the model configuration (which includes preprocessing),
the descriptor layout, the package version, a fingerprint of the weights and
the weights themselves. It loads without any training code. Files that are
not ours, are truncated, come from a newer format or do not agree with
themselves are refused with a message that says what to do.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from selavpr_ros._version import __version__
from selavpr_ros.errors import CheckpointError, ConfigError
from selavpr_ros.models.config import ModelConfig
from selavpr_ros.models.vpr import VPRModel, build_model
from selavpr_ros.models.weights import check_finite, load_strict, read_weights_file
from selavpr_ros.types import DescriptorLayout, model_id

FORMAT = "selavpr_ros.checkpoint"
FORMAT_VERSION = 1


def weights_fingerprint(state_dict: dict[str, Tensor]) -> str:
    """Content hash of the weights: two models with equal fingerprints give equal descriptors."""
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(state_dict):
        t = state_dict[key]
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Checkpoint:
    """A checkpoint's contents, read and validated but not yet turned into a model."""

    config: ModelConfig
    state_dict: dict[str, Tensor]
    fingerprint: str
    package_version: str = __version__
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def layout(self) -> DescriptorLayout:
        return self.config.layout()

    @property
    def model_id(self) -> str:
        """Stable identifier of these weights under this configuration (maps refuse any other)."""
        return model_id(self.config.method, self.fingerprint[:16], self.config.to_dict())

    def build(self, device: str | torch.device = "cpu") -> VPRModel:
        """Instantiate the model with these weights (no random initialisation is wasted)."""
        with torch.device("meta"):
            model = build_model(self.config, init_trainable=False)
        model = model.to_empty(device="cpu")
        load_strict(model, self.state_dict, str(self.path or "checkpoint"))
        model.checkpoint_fingerprint = self.fingerprint
        return model.freeze_backbone().eval().to(device)


def save_checkpoint(
    model: VPRModel, path: str | os.PathLike, metadata: dict[str, Any] | None = None, half: bool = False
) -> Checkpoint:
    """Write ``model`` to ``path`` atomically (temporary file, then rename).

    ``half`` stores floating-point weights in fp16 (half the size; the model
    runs in fp32 after loading, descriptors change by ~1e-3).
    """
    path = Path(path)
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if half:
        state_dict = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    check_finite(state_dict, "model")
    fingerprint = weights_fingerprint(state_dict)
    meta = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **(metadata or {})}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "model_config": model.config.to_dict(),
        "preprocess": model.config.to_dict()["preprocess"],
        "layout": model.layout.to_dict(),
        "fingerprint": fingerprint,
        "metadata": meta,
        "state_dict": state_dict,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return Checkpoint(model.config, state_dict, fingerprint, __version__, meta, path)


def _foreign_hint(obj: Any) -> str:
    from selavpr_ros.models.importers import detect_release

    kind = detect_release(obj)
    if kind:
        return f"it looks like a released {kind} file: convert it with `selavpr-ros import-checkpoint {kind} FILE`"
    return "it was not written by selavpr_ros"


def read_checkpoint(path: str | os.PathLike, verify: bool = True) -> Checkpoint:
    """Read and validate a checkpoint file without building the model."""
    path = Path(path)
    obj = read_weights_file(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a selavpr_ros checkpoint; {_foreign_hint(obj)}")
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} was written by a newer selavpr_ros "
            f"({obj.get('package_version')}); this is {__version__}, which reads format {FORMAT_VERSION}. Upgrade."
        )
    try:
        config = ModelConfig.from_dict(obj["model_config"])
    except (ConfigError, KeyError) as exc:
        raise CheckpointError(f"{path}: invalid model configuration inside the checkpoint: {exc}") from None
    state_dict = obj.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: checkpoint has no weights")
    stored_layout = DescriptorLayout.from_dict(obj.get("layout", {}))
    if stored_layout != config.layout():
        raise CheckpointError(
            f"{path}: stored descriptor layout ({stored_layout.describe()}) disagrees with its configuration "
            f"({config.layout().describe()}); the file was edited or is corrupt"
        )
    check_finite(state_dict, str(path))
    fingerprint = obj.get("fingerprint", "")
    if verify and weights_fingerprint(state_dict) != fingerprint:
        raise CheckpointError(f"{path}: weights do not match their fingerprint; the file is corrupt")
    return Checkpoint(config, state_dict, fingerprint, obj.get("package_version", "?"), obj.get("metadata", {}), path)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> VPRModel:
    """Read a checkpoint and return the model in eval mode on ``device``."""
    return read_checkpoint(path).build(device)
