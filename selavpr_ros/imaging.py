"""Decoding encoded images and normalising pixel arrays: the one place either happens.

Image files (evaluation, training, the demo) and ``CompressedImage`` payloads
(the node, bags) decode through :func:`decode_encoded`; raw arrays and decoded
images become (H, W, 3) uint8 RGB through :func:`to_rgb8`. The policy:

* grey (H, W) or (H, W, 1) images are replicated to RGB; RGBA drops alpha;
* 16-bit pixels keep their high byte (``>> 8``); float images must lie in [0, 1];
* a pixel budget, when given, refuses an image by its header before any
  pixel is allocated (a 140 KB PNG can declare 12000 x 12000 pixels).

NumPy and Pillow only, so robots without PyTorch use the same code.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from selavpr_ros.errors import ImageError

__all__ = ["check_pixel_budget", "decode_encoded", "to_rgb8", "to_uint8"]

# Pillow modes that hold more than 8 bits of grey.
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I")


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """8-bit copy of 8- or 16-bit (or wider integer) pixels: the high byte of 16-bit values."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind in "ui":
        return np.clip(pixels.astype(np.int64) >> 8, 0, 255).astype(np.uint8)
    raise ImageError(f"unsupported pixel type {pixels.dtype} (use uint8, uint16 or float in [0, 1])")


def check_pixel_budget(height: int, width: int, max_pixels: int | None, name: str = "image") -> None:
    """Refuse an image larger than ``max_pixels`` (None or 0: no limit) before it is decoded."""
    if max_pixels and int(height) * int(width) > max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} = {int(height) * int(width):,} pixels exceeds the budget of {max_pixels:,}"
        )


def to_rgb8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Normalise channel count and bit depth to (H, W, 3) uint8 (policy in the module docstring)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"{name}: image has zero size {image.shape[:2]}")
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise ImageError(f"{name}: float images must be finite and within [0, 1]")
        image = np.round(image * 255).astype(np.uint8)
    elif image.dtype in (np.uint8, np.uint16):
        image = to_uint8(image)
    else:
        raise ImageError(f"{name}: unsupported pixel type {image.dtype} (use uint8, uint16 or float in [0, 1])")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def decode_encoded(
    source: str | os.PathLike | bytes | bytearray | memoryview,
    name: str | None = None,
    max_pixels: int | None = None,
    formats: tuple[str, ...] | None = None,
) -> np.ndarray:
    """Decode an image file or encoded bytes (JPEG, PNG, ...) to (H, W, 3) uint8 RGB.

    ``formats`` restricts the accepted Pillow formats (e.g. what a
    ``CompressedImage`` may carry); ``max_pixels`` is checked on the header.
    Every failure, a decompression bomb included, is an :class:`ImageError`.
    """
    opened: str | os.PathLike | io.BytesIO
    if isinstance(source, (str, os.PathLike)):
        opened, name = source, name or str(source)
    else:
        opened, name = io.BytesIO(bytes(source) if isinstance(source, memoryview) else source), name or "encoded image"
    try:
        with warnings.catch_warnings():  # the pixel budget below is the check; Pillow's warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(opened)
        with im:
            if formats is not None and im.format not in formats:
                raise ImageError(f"{name}: unsupported format {im.format} (accepted: {', '.join(formats)})")
            check_pixel_budget(im.height, im.width, max_pixels, name)
            im.load()
            if im.mode in _WIDE_GREY:
                return to_rgb8(to_uint8(np.asarray(im)), name)
            return to_rgb8(np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB")), name)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: image file not found") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused as a decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: cannot decode image ({exc})") from None
