"""Decode ``sensor_msgs/Image`` and ``CompressedImage`` to RGB without cv_bridge.

Accepts anything with the message's fields (rclpy messages, rosbags
dataclasses, CycloneDDS samples). Raw encodings: rgb8, bgr8, rgba8, bgra8,
rgb16, bgr16, rgba16, bgra16, mono8, mono16, 8UC1, 8UC3 (as bgr8, OpenCV's
order), 8UC4 (as bgra8), bayer_{rggb,bggr,gbrg,grbg}{8,16} (demosaiced by
2x2 binning to half resolution), yuv422 / uyvy and yuv422_yuy2 / yuyv (BT.601).
Depth images (16UC1, 32FC1) and unknown encodings are refused with the reason.
Row padding (``step``) and ``is_bigendian`` are honoured; short or malformed
payloads raise :class:`~selavpr_ros.errors.ImageError`, never anything else.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from selavpr_ros.errors import ImageError
from selavpr_ros.imaging import check_pixel_budget, decode_encoded, to_uint8

# encoding -> (channels, bytes per channel, channel order)
_RAW = {
    "rgb8": (3, 1, "rgb"),
    "bgr8": (3, 1, "bgr"),
    "rgba8": (4, 1, "rgba"),
    "bgra8": (4, 1, "bgra"),
    "rgb16": (3, 2, "rgb"),
    "bgr16": (3, 2, "bgr"),
    "rgba16": (4, 2, "rgba"),
    "bgra16": (4, 2, "bgra"),
    "mono8": (1, 1, "mono"),
    "mono16": (1, 2, "mono"),
    "8uc1": (1, 1, "mono"),
    "8uc3": (3, 1, "bgr"),
    "8uc4": (4, 1, "bgra"),
}
_BAYER = {"rggb": ((0, 0), (1, 1)), "bggr": ((1, 1), (0, 0)), "gbrg": ((1, 0), (0, 1)), "grbg": ((0, 1), (1, 0))}
_YUV = {"yuv422": "uyvy", "uyvy": "uyvy", "yuv422_yuy2": "yuyv", "yuyv": "yuyv"}
_DEPTH = {"16uc1", "32fc1", "16sc1", "32sc1", "64fc1"}

COMPRESSED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
SUPPORTED_ENCODINGS = sorted(list(_RAW) + [f"bayer_{p}{b}" for p in _BAYER for b in (8, 16)] + list(_YUV))


MAX_STRING_FIELD = 256  # characters of a string field from the wire (frame_id, encoding, format) we accept


def check_string_field(name: str, value: object) -> str:
    """A string field from the wire, refused (ImageError) when longer than :data:`MAX_STRING_FIELD`.

    Such strings are stored per keyframe and echoed in every candidate; a peer must not
    be able to grow the map or the output by sending megabyte frame ids.
    """
    text = str(value)
    if len(text) > MAX_STRING_FIELD:
        raise ImageError(f"{name} of {len(text)} characters exceeds the limit of {MAX_STRING_FIELD}: {shown(text)}")
    return text


def shown(text: object, limit: int = 64) -> str:
    """``repr`` of a value from the wire, cut to ``limit`` characters: a 1 MiB encoding
    string must not be echoed into logs and diagnostics."""
    value = str(text)
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def _bytes(data) -> bytes | bytearray | memoryview:
    if isinstance(data, np.ndarray):
        return data.tobytes()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    return bytes(data)  # lists from rclpy or DDS sequences


def _plane(msg, channels: int, depth: int) -> np.ndarray:
    """(H, W, C) array of the payload, honouring step and endianness."""
    h, w = int(msg.height), int(msg.width)
    if h <= 0 or w <= 0:
        raise ImageError(f"image has zero size ({h}x{w})")
    row = w * channels * depth
    step = int(msg.step)
    if step < row:
        raise ImageError(f"step {step} is smaller than width x pixel size ({w} x {channels * depth} = {row} bytes)")
    data = _bytes(msg.data)
    if len(data) < step * h:
        raise ImageError(f"data has {len(data)} bytes, expected step x height = {step} x {h} = {step * h}")
    buf = np.frombuffer(data, np.uint8, count=step * h).reshape(h, step)[:, :row]
    if depth == 1:
        return buf.reshape(h, w, channels)
    dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
    return np.ascontiguousarray(buf).view(dtype).reshape(h, w, channels)


def _bayer(msg, pattern: str, depth: int) -> np.ndarray:
    raw = _plane(msg, 1, depth)[:, :, 0]
    h, w = raw.shape
    if h < 2 or w < 2:
        raise ImageError(f"bayer image {h}x{w} is smaller than one 2x2 cell")
    cells = raw[: h // 2 * 2, : w // 2 * 2].astype(np.float32)
    (ry, rx), (by, bx) = _BAYER[pattern]
    r = cells[ry::2, rx::2]
    b = cells[by::2, bx::2]
    g = (cells[ry::2, 1 - rx :: 2] + cells[1 - ry :: 2, rx::2]) / 2
    rgb = np.stack([r, g, b], axis=-1)
    if depth == 2:
        rgb /= 256.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _yuv422(msg, order: str) -> np.ndarray:
    packed = _plane(msg, 2, 1)  # two bytes per pixel
    h, w = packed.shape[:2]
    if w % 2:
        raise ImageError(f"yuv422 needs an even width, got {w}")
    quad = packed.reshape(h, w // 2, 4).astype(np.float32)
    if order == "uyvy":
        u, y0, v, y1 = quad[..., 0], quad[..., 1], quad[..., 2], quad[..., 3]
    else:
        y0, u, y1, v = quad[..., 0], quad[..., 1], quad[..., 2], quad[..., 3]
    y = np.stack([y0, y1], axis=-1).reshape(h, w)
    u = np.repeat(u, 2, axis=1) - 128.0
    v = np.repeat(v, 2, axis=1) - 128.0
    rgb = np.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def decode_image(msg, max_pixels: int | None = None) -> np.ndarray:
    """``sensor_msgs/Image`` -> (H, W, 3) uint8 RGB; more than ``max_pixels`` is refused first."""
    check_pixel_budget(int(msg.height), int(msg.width), max_pixels, "image")
    encoding = check_string_field("encoding", msg.encoding).strip().lower()
    if encoding in _DEPTH:
        raise ImageError(
            f"encoding {shown(msg.encoding)} is a depth image, not a camera image; "
            "subscribe to the colour or mono topic"
        )
    if encoding in _RAW:
        channels, depth, order = _RAW[encoding]
        img = to_uint8(_plane(msg, channels, depth))
        if order == "mono":
            return np.repeat(img, 3, axis=2)
        if order.startswith("bgr"):
            img = img[:, :, [2, 1, 0]]
        return np.ascontiguousarray(img[:, :, :3])
    if encoding.startswith("bayer_") and encoding[6:10] in _BAYER and encoding[10:] in ("8", "16"):
        return _bayer(msg, encoding[6:10], 1 if encoding[10:] == "8" else 2)
    if encoding in _YUV:
        return _yuv422(msg, _YUV[encoding])
    raise ImageError(f"unknown image encoding {shown(msg.encoding)}; supported: {', '.join(SUPPORTED_ENCODINGS)}")


def decode_depth(msg, max_pixels: int | None = None) -> np.ndarray:
    """Depth ``sensor_msgs/Image`` (REP 118: 16UC1 millimetres or 32FC1 metres) -> (H, W) float32 metres.

    Zero, NaN and infinite readings (no return) become NaN.
    """
    check_pixel_budget(int(msg.height), int(msg.width), max_pixels, "depth image")
    encoding = check_string_field("encoding", msg.encoding).strip().lower()
    h, w = int(msg.height), int(msg.width)
    if encoding in ("16uc1", "mono16"):
        depth = _plane(msg, 1, 2)[:, :, 0].astype(np.float32) / 1000.0
    elif encoding == "32fc1":
        if h <= 0 or w <= 0:
            raise ImageError(f"depth image has zero size ({h}x{w})")
        data, step = _bytes(msg.data), int(msg.step)
        if step < 4 * w or len(data) < step * h:
            raise ImageError(f"depth data has {len(data)} bytes for {h} rows of step {step} ({w} float32 each)")
        rows = np.frombuffer(data, np.uint8, count=step * h).reshape(h, step)[:, : 4 * w]
        depth = np.ascontiguousarray(rows).view(">f4" if msg.is_bigendian else "<f4").reshape(h, w).astype(np.float32)
    else:
        raise ImageError(f"depth encoding {shown(msg.encoding)} is not 16UC1 (mm) or 32FC1 (m)")
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


def decode_compressed(msg, max_pixels: int | None = None) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg, png, webp, bmp, tiff) -> (H, W, 3) uint8 RGB.

    The pixel budget is checked on the encoded header, before pixels are allocated.
    """
    fmt = check_string_field("format", msg.format).lower()
    if "compresseddepth" in fmt:
        raise ImageError(f"format {shown(msg.format)} is a compressed depth image, not a camera image")
    data = _bytes(msg.data)
    if len(data) == 0:
        raise ImageError("compressed image has no data")
    return decode_encoded(data, f"compressed image (declared {shown(msg.format)})", max_pixels,
                          formats=COMPRESSED_FORMATS)


def decode_any(msg, max_pixels: int | None = None) -> np.ndarray:
    """Decode either message type (told apart by their fields)."""
    return decode_compressed(msg, max_pixels) if hasattr(msg, "format") else decode_image(msg, max_pixels)


def encode_image(rgb: np.ndarray, encoding: str = "rgb8") -> dict:
    """Fields of a ``sensor_msgs/Image`` holding ``rgb`` (for bags, tests and the demo)."""
    rgb = np.asarray(rgb, np.uint8)
    if encoding == "rgb8":
        data = rgb
    elif encoding == "bgr8":
        data = rgb[:, :, ::-1]
    elif encoding == "mono8":
        data = rgb.mean(axis=2).round().astype(np.uint8)[:, :, None]
    else:
        raise ImageError(f"encode_image supports rgb8, bgr8 and mono8, not {encoding!r}")
    data = np.ascontiguousarray(data)
    h, w, c = data.shape
    return {"height": h, "width": w, "encoding": encoding, "is_bigendian": 0, "step": w * c, "data": data.reshape(-1)}


def encode_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> dict:
    """Fields of a ``sensor_msgs/CompressedImage`` holding ``rgb`` as JPEG or PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="JPEG" if fmt == "jpeg" else "PNG", quality=quality)
    return {"format": fmt, "data": np.frombuffer(buf.getvalue(), np.uint8)}
