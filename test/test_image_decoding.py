"""Image messages to RGB without cv_bridge: every encoding, padding, endianness, and corrupt payloads."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from selavpr_ros.errors import ImageError
from selavpr_ros.transport.image_decoding import decode_any, decode_compressed, decode_image, encode_compressed


def raw(array: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False):
    """An Image-like message holding ``array`` (H, W[, C]) with ``pad`` bytes of row padding."""
    h, w = array.shape[:2]
    a = array.astype(array.dtype.newbyteorder(">" if bigendian else "<")) if array.dtype.itemsize > 1 else array
    rows = a.reshape(h, -1).view(np.uint8)
    data = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1).tobytes()
    return SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
                           step=rows.shape[1] + pad, data=data)


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding,array,expected", [
    ("rgb8", RGB, RGB),
    ("bgr8", RGB[:, :, ::-1], RGB),
    ("8UC3", RGB[:, :, ::-1], RGB),
    ("rgba8", np.dstack([RGB, np.full((5, 7), 9, np.uint8)]), RGB),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.zeros((5, 7), np.uint8)]), RGB),
    ("mono8", RGB[:, :, 0], np.repeat(RGB[:, :, :1], 3, axis=2)),
    ("rgb16", RGB.astype(np.uint16) * 257, RGB),
    ("mono16", RGB[:, :, 1].astype(np.uint16) * 257, np.repeat(RGB[:, :, 1:2], 3, axis=2)),
])
@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("bigendian", [False, True])
def test_raw_encodings(encoding, array, expected, pad, bigendian):
    np.testing.assert_array_equal(decode_image(raw(array, encoding, pad, bigendian)), expected)


def test_yuv422_both_byte_orders():
    colours = np.array([[200, 30, 40], [20, 180, 60], [90, 90, 220], [128, 128, 128]], np.float64)
    block = np.repeat(np.repeat(colours.reshape(2, 2, 3), 2, axis=0), 4, axis=1)  # flat 2x4 patches
    y = 0.299 * block[..., 0] + 0.587 * block[..., 1] + 0.114 * block[..., 2]
    u = -0.168736 * block[..., 0] - 0.331264 * block[..., 1] + 0.5 * block[..., 2] + 128
    v = 0.5 * block[..., 0] - 0.418688 * block[..., 1] - 0.081312 * block[..., 2] + 128
    h, w = y.shape
    uyvy = np.stack([u[:, 0::2], y[:, 0::2], v[:, 0::2], y[:, 1::2]], axis=-1).reshape(h, w * 2)
    yuyv = np.stack([y[:, 0::2], u[:, 0::2], y[:, 1::2], v[:, 0::2]], axis=-1).reshape(h, w * 2)
    for encoding, plane in (("yuv422", uyvy), ("uyvy", uyvy), ("yuv422_yuy2", yuyv), ("yuyv", yuyv)):
        msg = SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=0, step=w * 2,
                              data=np.clip(np.rint(plane), 0, 255).astype(np.uint8).tobytes())
        assert np.abs(decode_image(msg).astype(int) - block).max() <= 2, encoding


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_constant_colour(pattern):
    r, g, b = 200, 100, 30
    cells = {"r": r, "g": g, "b": b}
    layout = {"rggb": "rggb", "bggr": "bggr", "gbrg": "gbrg", "grbg": "grbg"}[pattern]
    tile = np.array([[cells[layout[0]], cells[layout[1]]], [cells[layout[2]], cells[layout[3]]]], np.uint8)
    mosaic = np.tile(tile, (4, 6))
    out = decode_image(raw(mosaic, f"bayer_{pattern}8"))
    assert out.shape == (4, 6, 3)  # 2x2 binning: half resolution
    np.testing.assert_array_equal(out, np.broadcast_to([r, g, b], out.shape))


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_depth_refused_with_reason(encoding):
    with pytest.raises(ImageError, match=f"encoding '{encoding}' is a depth image"):
        decode_image(raw(np.zeros((2, 2), np.uint16 if encoding == "16UC1" else np.float32), encoding))


def test_unknown_encoding_and_bad_geometry():
    with pytest.raises(ImageError, match="unknown image encoding 'hsv8'; supported: "):
        decode_image(raw(RGB, "hsv8"))
    with pytest.raises(ImageError, match="zero size"):
        decode_image(SimpleNamespace(height=0, width=4, encoding="rgb8", is_bigendian=0, step=12, data=b""))
    short = raw(RGB, "rgb8")
    short.data = short.data[:-1]
    with pytest.raises(ImageError, match="data"):
        decode_image(short)
    narrow = raw(RGB, "rgb8")
    narrow.step = 7 * 3 - 1
    with pytest.raises(ImageError, match="step"):
        decode_image(narrow)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_round_trip_and_corruption(fmt):
    img = np.asarray(Image.fromarray(RGB).resize((64, 32)))
    msg = SimpleNamespace(**encode_compressed(img, fmt))
    out = decode_any(msg)
    if fmt == "png":
        np.testing.assert_array_equal(out, img)
    else:
        assert np.abs(out.astype(int) - img).mean() < 12
    data = bytes(msg.data)
    for broken in (data[: len(data) // 2], b"\x00" * 40, data[:10] + b"\xff" * 30, b""):
        with pytest.raises(ImageError):
            decode_compressed(SimpleNamespace(format=fmt, data=np.frombuffer(broken, np.uint8)))
    with pytest.raises(ImageError, match="compressed depth"):
        decode_compressed(SimpleNamespace(format="16UC1; compressedDepth png", data=data))


def test_compressed_mono16_png():
    x = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="PNG")
    out = decode_compressed(SimpleNamespace(format="mono16; png", data=buf.getvalue()))
    np.testing.assert_array_equal(out[:, :, 0], (x >> 8).astype(np.uint8))


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), pad=st.integers(0, 7), big=st.booleans(),
       enc=st.sampled_from(["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "rgb16"]), seed=st.integers(0, 99))
def test_property_random_images_decode_exactly(h, w, pad, big, enc, seed):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    array = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "rgba8": np.dstack([rgb, rgb[:, :, 0]]),
             "bgra8": np.dstack([rgb[:, :, ::-1], rgb[:, :, 0]]), "mono8": rgb[:, :, 0],
             "mono16": rgb[:, :, 0].astype(np.uint16) * 257, "rgb16": rgb.astype(np.uint16) * 257}[enc]
    expected = np.repeat(rgb[:, :, :1], 3, axis=2) if enc.startswith("mono") else rgb
    np.testing.assert_array_equal(decode_image(raw(np.ascontiguousarray(array), enc, pad, big)), expected)


@settings(max_examples=80, deadline=None)
@given(payload=st.binary(max_size=300), h=st.integers(0, 20), w=st.integers(0, 20), step=st.integers(0, 80),
       enc=st.sampled_from(["rgb8", "mono16", "bayer_rggb8", "yuv422", "bgra8"]))
def test_property_corrupt_raw_never_escapes_as_other_errors(payload, h, w, step, enc):
    msg = SimpleNamespace(height=h, width=w, encoding=enc, is_bigendian=0, step=step, data=payload)
    try:
        out = decode_image(msg)
    except ImageError:
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=400))
def test_property_corrupt_compressed_only_raises_image_error(payload):
    try:
        out = decode_compressed(SimpleNamespace(format="jpeg", data=payload))
    except ImageError:
        return
    assert out.ndim == 3
