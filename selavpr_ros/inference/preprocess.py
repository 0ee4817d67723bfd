"""Image preprocessing shared by every inference backend.

NumPy and Pillow only, so the ONNX Runtime backend runs on robots without
PyTorch. Pixels are normalised by :func:`selavpr_ros.imaging.to_rgb8` (grey to
RGB, alpha dropped, 16 bit to 8 bit, float in [0, 1]); then (see
:class:`~selavpr_ros.models.config.PreprocessConfig`)

* every image is resized to the model's input size (multiples of 14), by
  ``stretch`` (default, as the papers evaluate) or after a ``center_crop`` to
  the target aspect ratio. Pillow's resampling antialiases when shrinking,
  like the torchvision pipelines the papers use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from selavpr_ros.errors import ImageError
from selavpr_ros.imaging import decode_encoded, to_rgb8
from selavpr_ros.models.config import PreprocessConfig

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def load_image(source: str | os.PathLike | bytes) -> np.ndarray:
    """Decode an image file (or encoded bytes) to an (H, W, 3) uint8 RGB array."""
    return decode_encoded(source, "<bytes>" if isinstance(source, bytes) else None)


def center_crop_box(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """Largest centred (left, top, right, bottom) window with the target aspect ratio."""
    if width * target_h > height * target_w:
        new_w = max(1, round(height * target_w / target_h))
        left = (width - new_w) // 2
        return left, 0, left + new_w, height
    new_h = max(1, round(width * target_h / target_w))
    top = (height - new_h) // 2
    return 0, top, width, top + new_h


def preprocess(image: np.ndarray | str | os.PathLike, config: PreprocessConfig, name: str = "image") -> np.ndarray:
    """One image (array or path) -> normalised float32 (3, H, W) at the model's input size."""
    if isinstance(image, (str, os.PathLike)):
        name = str(image)
        image = load_image(image)
    rgb = to_rgb8(image, name)
    pil = Image.fromarray(rgb)
    if config.resize == "center_crop":
        pil = pil.crop(center_crop_box(rgb.shape[0], rgb.shape[1], config.height, config.width))
    if pil.size != (config.width, config.height):
        pil = pil.resize((config.width, config.height), _RESAMPLE[config.interpolation])
    x: np.ndarray = np.asarray(pil, dtype=np.float32) / 255.0
    if config.normalize == "per_image":
        x = (x - x.mean()) / (x.std() + 1e-3)
    else:
        x = (x - np.asarray(config.mean, np.float32)) / np.asarray(config.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_batch(images: Sequence[np.ndarray | str | os.PathLike], config: PreprocessConfig) -> np.ndarray:
    """Images -> (N, 3, H, W) float32 batch."""
    if len(images) == 0:
        return np.zeros((0, 3, config.height, config.width), np.float32)
    return np.stack([preprocess(im, config, name=f"image {i}") for i, im in enumerate(images)])


def image_paths(folder: str | os.PathLike, extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png")) -> list[Path]:
    """Image files under ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a directory")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in extensions)
