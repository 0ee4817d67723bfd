"""The interface every inference backend implements: preprocessed images in, Descriptors out.

Backends (:mod:`~selavpr_ros.inference.torch_backend`,
:mod:`~selavpr_ros.inference.onnx_backend`) take the same preprocessed
batches, return the same NumPy arrays and identify their model by the same
``model_id``, so a map built with one can be queried with the other.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from selavpr_ros.inference.preprocess import preprocess_batch
from selavpr_ros.models.config import ModelConfig, PreprocessConfig
from selavpr_ros.types import DescriptorLayout, Descriptors

# Where a model runs: auto (a GPU when the backend has one), cpu, cuda, or tensorrt (ONNX Runtime's
# TensorRT provider; PyTorch runs it as cuda). A device the backend cannot serve falls back with a log line.
DEVICES = ("auto", "cpu", "cuda", "tensorrt")


class Extractor(abc.ABC):
    """Common interface of inference backends.

    What a backend knows of its model is plain data, so that a robot running
    ONNX Runtime needs no PyTorch: ``model_config`` (the configuration as stored
    in checkpoints and maps), ``preprocess``, ``layout`` and ``model_id``.
    """

    model_config: dict[str, Any]
    preprocess: PreprocessConfig
    layout: DescriptorLayout
    model_id: str
    backend: str

    @property
    def config(self) -> ModelConfig:
        """The validated model configuration (parses the method's options, which needs its code: PyTorch)."""
        return ModelConfig.from_dict(self.model_config)

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
            yield self.run(preprocess_batch(chunk, self.preprocess))
            bar.update(len(chunk))
        bar.close()
