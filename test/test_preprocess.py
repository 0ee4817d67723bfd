"""Image decoding and the documented resize policy."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from selavpr_ros.errors import ImageError
from selavpr_ros.imaging import to_rgb8
from selavpr_ros.inference.preprocess import center_crop_box, load_image, preprocess
from selavpr_ros.models.config import PreprocessConfig

CFG = PreprocessConfig(height=28, width=42)


def test_grey_rgba_and_16_bit_follow_the_policy():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    grey = rgb[:, :, 0]
    np.testing.assert_array_equal(to_rgb8(grey), np.repeat(grey[:, :, None], 3, 2))
    np.testing.assert_array_equal(to_rgb8(grey[:, :, None]), to_rgb8(grey))
    rgba = np.concatenate([rgb, np.full((30, 40, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb8(rgba), rgb)
    np.testing.assert_array_equal(to_rgb8(rgb.astype(np.uint16) << 8), rgb)
    np.testing.assert_array_equal(to_rgb8(rgb / 255.0), rgb)


def test_bad_arrays_are_refused():
    with pytest.raises(ImageError, match="zero size"):
        to_rgb8(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ImageError, match="expected .*got shape"):
        to_rgb8(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageError, match="within \\[0, 1\\]"):
        to_rgb8(np.full((4, 4, 3), 2.0))
    with pytest.raises(ImageError, match="unsupported pixel type int64"):
        to_rgb8(np.zeros((4, 4, 3), np.int64))


def test_output_is_normalised_at_the_model_size():
    x = preprocess(np.full((33, 51, 3), 255, np.uint8), CFG)
    assert x.shape == (3, 28, 42) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], (1 - np.array(CFG.mean)) / np.array(CFG.std), rtol=1e-6)


def test_center_crop_keeps_the_aspect_ratio():
    assert center_crop_box(100, 300, 28, 42) == (75, 0, 225, 100)
    assert center_crop_box(300, 100, 28, 42) == (0, 116, 100, 183)  # 67 rows, centred
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 75:225] = 255  # only the centre survives the crop
    x = preprocess(img, PreprocessConfig(height=28, width=42, resize="center_crop"))
    assert np.allclose(x.std(axis=(1, 2)), 0, atol=1e-5)


def test_files_decode_and_corrupt_files_are_named(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 100, np.uint8)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    (tmp_path / "ok.jpg").write_bytes(jpeg)
    assert load_image(tmp_path / "ok.jpg").shape == (20, 30, 3)
    (tmp_path / "bad.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    with pytest.raises(ImageError, match="bad.jpg: cannot decode image"):
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(ImageError, match="image file not found"):
        load_image(tmp_path / "nope.png")
    buf = io.BytesIO()
    Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30)).save(buf, format="PNG")
    assert load_image(buf.getvalue()).shape == (20, 30, 3)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 60),
    w=st.integers(1, 60),
    channels=st.sampled_from([None, 1, 3, 4]),
    mode=st.sampled_from(["stretch", "center_crop"]),
)
def test_any_image_size_gives_the_model_size(h, w, channels, mode):
    shape = (h, w) if channels is None else (h, w, channels)
    img = np.random.default_rng(h * 100 + w).integers(0, 256, shape, dtype=np.uint8)
    x = preprocess(img, PreprocessConfig(height=28, width=42, resize=mode))
    assert x.shape == (3, 28, 42) and np.isfinite(x).all()


def test_per_image_normalisation_removes_brightness_and_contrast():
    cfg = PreprocessConfig(height=28, width=56, normalize="per_image")
    rng = np.random.default_rng(1)
    base = rng.integers(40, 160, (32, 64, 3)).astype(np.float64)
    a = preprocess(base.astype(np.uint8), cfg)
    b = preprocess(np.clip(base * 1.5 + 20, 0, 255).astype(np.uint8), cfg)  # brighter, more contrast
    assert a.mean() == pytest.approx(0.0, abs=1e-5) and a.std() == pytest.approx(1.0, abs=0.02)  # eps 1e-3 in std
    other = preprocess(rng.integers(40, 160, (32, 64, 3)).astype(np.uint8), cfg)
    assert np.abs(a - b).mean() < 0.03 < 0.5 < np.abs(a - other).mean()  # same picture, up to 8-bit rounding
    from selavpr_ros.config import from_dict
    from selavpr_ros.errors import ConfigError

    with pytest.raises(ConfigError, match="normalize"):
        from_dict(PreprocessConfig, {"normalize": "whiten"})
