"""Training-time image jitter on uint8 RGB arrays, before the shared preprocessing.

Deterministic given the generator, so cached augmented views and resumed
runs see the same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from selavpr_ros.training.config import AugmentConfig


def augment(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random scale/shift crop, brightness and contrast jitter, optional greyscale."""
    if not cfg.enabled:
        return image
    h, w = image.shape[:2]
    s = 1.0 - cfg.scale * rng.random()
    cw, ch = w * s, h * s
    cx = (w - cw) / 2 + (rng.random() - 0.5) * 2 * cfg.shift * w
    cy = (h - ch) / 2 + (rng.random() - 0.5) * 2 * cfg.shift * h
    cx = float(np.clip(cx, -cfg.shift * w, w - cw + cfg.shift * w))
    cy = float(np.clip(cy, -cfg.shift * h, h - ch + cfg.shift * h))
    pil = Image.fromarray(image).transform(
        (w, h), Image.Transform.EXTENT, (cx, cy, cx + cw, cy + ch), resample=Image.Resampling.BILINEAR,
        fillcolor=tuple(int(v) for v in image.reshape(-1, 3).mean(0)),
    )
    x = np.asarray(pil, np.float32)
    mean = x.mean()
    x = (x - mean) * (1 + cfg.contrast * (rng.random() - 0.5) * 2) + mean
    x = x + cfg.brightness * 255 * (rng.random() - 0.5)
    if rng.random() < cfg.grayscale:
        x = np.repeat(x.mean(axis=2, keepdims=True), 3, axis=2)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
