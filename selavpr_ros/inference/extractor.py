"""Extractors: images in, :class:`Descriptors` out, whatever runs the model.

:class:`TorchExtractor` runs a PyTorch model (fp16 autocast on CUDA);
:class:`~selavpr_ros.inference.onnx_backend.OnnxExtractor` runs an exported
model under ONNX Runtime. Both take the same preprocessed batches, return the
same NumPy arrays and identify their model by the same ``model_id``, so a map
built with one can be queried with the other.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selavpr_ros.inference.preprocess import preprocess_batch
from selavpr_ros.models.config import DescriptorLayout, ModelConfig


@dataclass
class Descriptors:
    """Per-image outputs as NumPy arrays (see :class:`~selavpr_ros.models.vpr.VPROutput`)."""

    codes: np.ndarray  # (N, bits/8) uint8
    descriptors: np.ndarray  # (N, D) float32, L2-normalised
    hash_z: np.ndarray  # (N, bits) float32
    local_features: np.ndarray | None = None  # (N, h, w, C) float32

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index) -> Descriptors:
        idx = np.atleast_1d(np.arange(len(self))[index])
        return Descriptors(
            self.codes[idx],
            self.descriptors[idx],
            self.hash_z[idx],
            None if self.local_features is None else self.local_features[idx],
        )

    @staticmethod
    def empty(layout: DescriptorLayout) -> Descriptors:
        local = None
        if layout.has_local:
            local = np.zeros((0, *layout.local_grid, layout.local_dim), np.float32)
        return Descriptors(
            np.zeros((0, layout.code_bytes), np.uint8),
            np.zeros((0, layout.float_dim), np.float32),
            np.zeros((0, layout.code_bits), np.float32),
            local,
        )

    @staticmethod
    def concat(parts: Sequence[Descriptors]) -> Descriptors:
        if not parts:
            raise ValueError("nothing to concatenate")
        local = None if parts[0].local_features is None else np.concatenate([p.local_features for p in parts])
        return Descriptors(
            np.concatenate([p.codes for p in parts]),
            np.concatenate([p.descriptors for p in parts]),
            np.concatenate([p.hash_z for p in parts]),
            local,
        )


class Extractor(abc.ABC):
    """Common interface of inference backends."""

    config: ModelConfig
    model_id: str
    backend: str

    @property
    def layout(self) -> DescriptorLayout:
        return self.config.layout()

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> Descriptors:
        """Run the model on a preprocessed (N, 3, H, W) float32 batch."""

    def extract(
        self, images: Sequence[np.ndarray | str | os.PathLike], batch_size: int = 8, progress: bool = False
    ) -> Descriptors:
        """Preprocess and describe ``images`` (arrays or paths) in batches."""
        parts = list(self.iter_extract(images, batch_size, progress))
        return Descriptors.concat(parts) if parts else Descriptors.empty(self.layout)

    def iter_extract(
        self, images: Sequence[np.ndarray | str | os.PathLike], batch_size: int = 8, progress: bool = False
    ) -> Iterator[Descriptors]:
        """Like :meth:`extract`, one batch at a time (bounded memory for long lists)."""
        from tqdm.auto import tqdm

        starts = range(0, len(images), batch_size)
        bar = tqdm(total=len(images), desc="describing", unit="img", disable=not progress)
        for s in starts:
            chunk = images[s : s + batch_size]
            yield self.run(preprocess_batch(chunk, self.config.preprocess))
            bar.update(len(chunk))
        bar.close()


class TorchExtractor(Extractor):
    """PyTorch backend; fp16 autocast on CUDA unless ``half=False``."""

    backend = "torch"

    def __init__(self, model, device: str = "auto", half: bool | None = None, model_id: str | None = None) -> None:
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.half = self.device.type == "cuda" if half is None else half
        self.model = model.eval().to(self.device)
        self.config = model.config
        self.model_id = model_id or getattr(model, "model_id", None) or f"{self.config.method}:unsaved"

    def run(self, batch: np.ndarray) -> Descriptors:
        import torch

        if len(batch) == 0:
            return Descriptors.empty(self.layout)
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, torch.float16, enabled=self.half):
            out = self.model(x)

        def np32(t):
            return None if t is None else t.float().cpu().numpy()

        return Descriptors(out.codes.cpu().numpy(), np32(out.descriptors), np32(out.hash_z), np32(out.local_features))


def open_extractor(path: str | os.PathLike, device: str = "auto", **kwargs) -> Extractor:
    """Extractor for a model file: ``.onnx`` runs on ONNX Runtime, anything else is a checkpoint."""
    path = Path(path)
    if path.suffix == ".onnx":
        from selavpr_ros.inference.onnx_backend import OnnxExtractor

        return OnnxExtractor(path, device=device, **kwargs)
    from selavpr_ros.models.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    return TorchExtractor(ckpt.build(), device=device, model_id=ckpt.model_id, **kwargs)
