"""Open the right inference backend for a model file."""

from __future__ import annotations

import os
from pathlib import Path

from selavpr_ros.errors import CheckpointError
from selavpr_ros.inference.base import Extractor


def open_extractor(path: str | os.PathLike, device: str = "auto", **kwargs) -> Extractor:
    """Extractor for a model file: ``.onnx`` runs on ONNX Runtime, anything else is a checkpoint."""
    path = Path(path)
    if path.suffix == ".onnx":
        from selavpr_ros.inference.onnx_backend import OnnxExtractor

        return OnnxExtractor(path, device=device, **kwargs)
    try:
        from selavpr_ros.inference.torch_backend import TorchExtractor
        from selavpr_ros.models.checkpoint import read_checkpoint
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise CheckpointError(
            f"{path} is a PyTorch checkpoint and PyTorch is not installed (pip install 'selavpr_ros[torch]'); "
            "a robot without it runs the model's .onnx export (selavpr-ros export-onnx, on a machine with "
            "PyTorch)") from None

    ckpt = read_checkpoint(path)
    return TorchExtractor(ckpt.build(), device=device, model_id=ckpt.model_id, **kwargs)
