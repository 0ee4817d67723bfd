"""ONNX export and ONNX Runtime: parity with PyTorch, dynamic batch, no PyTorch needed at run time."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import randomize_trainable, tiny_config

from selavpr_ros.errors import CheckpointError
from selavpr_ros.inference.onnx_backend import OnnxExtractor, compare_with_torch, export_onnx, read_metadata
from selavpr_ros.inference.torch_backend import TorchExtractor
from selavpr_ros.models.vpr import build_model


def tiny(method, **sections):
    torch.manual_seed(0)
    return randomize_trainable(build_model(tiny_config(method, registers=4, **sections))).eval()


@pytest.mark.parametrize("method", ["selavpr", "selavpr++", "emvp"])
def test_parity_with_pytorch(tmp_path, method):
    model = tiny(method)
    path = tmp_path / f"{method}.onnx"
    report = export_onnx(model, path, model_id=f"{method}:test")
    assert report.opset >= 17 and report.precision == "fp32"
    parity = compare_with_torch(model, path, batch=3)
    assert parity["descriptors_max_abs"] < 1e-4
    assert parity["hash_z_max_abs"] < 1e-4
    # Codes may only differ where the continuous value sits at zero.
    assert parity["code_bits_differ"] <= parity["hash_z_near_zero"]
    if method == "selavpr":
        assert parity["local_max_abs"] < 1e-4
    meta = read_metadata(path)
    assert meta["model_id"] == f"{method}:test"
    ort = OnnxExtractor(path, device="cpu")
    assert ort.config == model.config and ort.layout == model.layout
    for batch in (1, 5):  # dynamic batch axis
        x = np.random.default_rng(batch).standard_normal((batch, 3, 56, 84)).astype(np.float32)
        out = ort.run(x)
        assert out.codes.shape == (batch, 64) and out.codes.dtype == np.uint8
        ref = TorchExtractor(model, device="cpu").run(x)
        np.testing.assert_allclose(out.descriptors, ref.descriptors, atol=1e-4)
    assert len(ort.run(np.zeros((0, 3, 56, 84), np.float32))) == 0


def test_int8_quantisation_keeps_descriptors_close(tmp_path):
    model = tiny("selavpr++")
    path = tmp_path / "q.onnx"
    report = export_onnx(model, path, model_id="q", int8=True)
    assert report.precision == "int8" and read_metadata(path)["precision"] == "int8"
    parity = compare_with_torch(model, path, batch=4)
    assert parity["min_cosine"] > 0.98
    assert parity["code_bits_differ"] < 0.1 * parity["code_bits_total"]


def test_fp16_export_keeps_descriptors_close_and_halves_the_file(tmp_path):
    model = tiny("selavpr++")
    full, half = tmp_path / "m.onnx", tmp_path / "m.fp16.onnx"
    export_onnx(model, full, model_id="m")
    report = export_onnx(model, half, model_id="m", fp16=True)
    assert report.precision == "fp16" and read_metadata(half)["precision"] == "fp16"
    assert half.stat().st_size < 0.6 * full.stat().st_size and not (tmp_path / "m.fp16.fp32.onnx").exists()
    parity = compare_with_torch(model, half, batch=4)  # on the CPU provider; GPUs run it natively
    assert parity["min_cosine"] > 0.999 and parity["code_bits_differ"] < 0.02 * parity["code_bits_total"]
    with pytest.raises(CheckpointError, match="choose one of int8"):
        export_onnx(model, tmp_path / "x.onnx", model_id="m", int8=True, fp16=True)


def test_execution_providers_fall_back_with_a_log_line(caplog):
    from selavpr_ros.inference.onnx_backend import select_providers

    cpu_only, gpu = ["CPUExecutionProvider"], ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                               "CPUExecutionProvider"]
    assert select_providers("auto", cpu_only) == select_providers("cpu", gpu) == cpu_only
    assert select_providers("auto", gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]  # no engine builds
    assert select_providers("tensorrt", gpu) == gpu and select_providers("cuda", gpu) == gpu[1:]
    assert not caplog.records
    assert select_providers("cuda", cpu_only) == cpu_only
    assert select_providers("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "device cuda: ONNX Runtime here has no CUDAExecutionProvider" in lines[0]
    assert "install onnxruntime-gpu" in lines[0] and "running on CPUExecutionProvider" in lines[0]
    assert "no TensorrtExecutionProvider" in lines[1] and "running on CUDAExecutionProvider" in lines[1]
    with pytest.raises(CheckpointError, match="device must be one of auto, cpu, cuda, tensorrt"):
        select_providers("gpu", gpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine without CUDA")
def test_pytorch_backend_falls_back_to_the_cpu_with_a_log_line(caplog):
    for device in ("cuda", "tensorrt"):
        assert TorchExtractor(tiny("selavpr++"), device=device).device.type == "cpu"
    assert [r.getMessage() for r in caplog.records] == [
        f"device {d}: this PyTorch has no CUDA device; running on the CPU" for d in ("cuda", "tensorrt")]


def test_runs_without_pytorch(tmp_path):
    model = tiny("selavpr")
    path = tmp_path / "m.onnx"
    export_onnx(model, path, model_id="m")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        import numpy as np
        from selavpr_ros.inference import open_extractor
        ex = open_extractor({str(path)!r}, device="cpu")
        out = ex.extract([np.zeros((30, 40, 3), np.uint8), np.full((10, 10), 200, np.uint8)])
        print(out.codes.shape, out.local_features.shape, ex.backend)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(2, 64) (2, 13, 21, 128) onnxruntime" in result.stdout


def test_foreign_onnx_is_refused(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a readable ONNX file"):
        OnnxExtractor(tmp_path / "x.onnx")
