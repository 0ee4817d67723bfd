"""Checkpoints that ship inside the package.

``nordland_demo``: a small DINOv2-family ViT (width 192, 12 blocks, random
frozen trunk) with SelaVPR++ side adapters and float + hash heads, trained
on the first 60 % of the Nordland route, its epoch chosen on the span 0.65-0.8
(see ``training/configs/nordland_demo.yaml`` and the README for its test
recall). It lets the demo, the node and the tests run on a machine without
pretrained DINOv2 weights; robots should use a checkpoint built from real
DINOv2 weights.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from selavpr_ros.errors import CheckpointError

BUILTIN = {"nordland_demo": "nordland_demo.ckpt"}
DEFAULT = "nordland_demo"


def builtin_checkpoint(name: str = DEFAULT) -> Path:
    """Path of a shipped checkpoint."""
    if name not in BUILTIN:
        raise CheckpointError(f"no built-in checkpoint '{name}' (available: {', '.join(BUILTIN)})")
    path = Path(str(resources.files("selavpr_ros") / "data" / BUILTIN[name]))
    if not path.is_file():
        raise CheckpointError(f"built-in checkpoint {path} is missing from this installation")
    return path


def resolve_checkpoint(value: str | None) -> Path:
    """A checkpoint argument: a file path, ``builtin:NAME``, or None for the default built-in model."""
    if value is None:
        return builtin_checkpoint()
    if value.startswith("builtin:"):
        return builtin_checkpoint(value.split(":", 1)[1])
    return Path(value)
