"""Open the right inference backend for a model file."""

from __future__ import annotations

import os
from pathlib import Path

from selavpr_ros.inference.base import Extractor


def open_extractor(path: str | os.PathLike, device: str = "auto", **kwargs) -> Extractor:
    """Extractor for a model file: ``.onnx`` runs on ONNX Runtime, anything else is a checkpoint."""
    path = Path(path)
    if path.suffix == ".onnx":
        from selavpr_ros.inference.onnx_backend import OnnxExtractor

        return OnnxExtractor(path, device=device, **kwargs)
    from selavpr_ros.inference.torch_backend import TorchExtractor
    from selavpr_ros.models.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    return TorchExtractor(ckpt.build(), device=device, model_id=ckpt.model_id, **kwargs)
