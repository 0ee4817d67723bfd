"""Models: the DINOv2 trunk, the four methods' adapters and heads, and their configuration.

Names are imported lazily so that ``selavpr_ros.models.config`` (needed by the
ONNX Runtime backend) does not pull in PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DescriptorLayout": "selavpr_ros.models.config",
    "ModelConfig": "selavpr_ros.models.config",
    "VPRModel": "selavpr_ros.models.vpr",
    "VPROutput": "selavpr_ros.models.vpr",
    "build_model": "selavpr_ros.models.vpr",
    "load_checkpoint": "selavpr_ros.models.checkpoint",
    "save_checkpoint": "selavpr_ros.models.checkpoint",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'selavpr_ros.models' has no attribute {name!r}")
