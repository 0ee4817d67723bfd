"""PyTorch inference backend (fp16 autocast on CUDA)."""

from __future__ import annotations

import logging

import numpy as np

from selavpr_ros.inference.base import Extractor
from selavpr_ros.types import Descriptors

log = logging.getLogger(__name__)


class TorchExtractor(Extractor):
    """PyTorch backend; fp16 autocast on CUDA unless ``half=False``."""

    backend = "torch"

    def __init__(self, model, device: str = "auto", half: bool | None = None, model_id: str | None = None) -> None:
        import torch

        if device in ("cuda", "tensorrt") and not torch.cuda.is_available():
            log.warning("device %s: this PyTorch has no CUDA device; running on the CPU", device)
            device = "cpu"
        if device in ("auto", "tensorrt"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.half = self.device.type == "cuda" if half is None else half
        self.model = model.eval().to(self.device)
        self.model_config = model.config.to_dict()
        self.preprocess = model.config.preprocess
        self.layout = model.config.layout()
        self.model_id = model_id or getattr(model, "model_id", None) or f"{model.config.method}:unsaved"

    @property
    def config(self):
        return self.model.config

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
