"""ONNX export and the ONNX Runtime backend.

An exported file carries the model configuration, descriptor layout and
model id in its metadata, so :class:`OnnxExtractor` needs nothing but the
``.onnx`` file (and no PyTorch). Inputs: ``images`` (N, 3, H, W) float32,
dynamic N. Outputs: ``codes`` (N, bits/8) uint8, ``descriptors`` (N, D),
``hash_z`` (N, bits) and, for SelaVPR, ``local_features`` (N, h, w, C).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selavpr_ros._version import __version__
from selavpr_ros.config import from_dict
from selavpr_ros.errors import CheckpointError
from selavpr_ros.inference.base import Extractor
from selavpr_ros.models.config import PreprocessConfig
from selavpr_ros.threads import thread_budget
from selavpr_ros.types import MODEL_ID_FORMAT, DescriptorLayout, Descriptors, upgrade_model_id

log = logging.getLogger(__name__)
ONNX_FORMAT = "selavpr_ros.onnx"
DEFAULT_OPSET = 18
OUTPUTS = ("codes", "descriptors", "hash_z", "local_features")


@dataclass
class ExportReport:
    path: Path
    opset: int
    precision: str
    size_bytes: int
    outputs: tuple[str, ...]


def _write_metadata(path: Path, meta: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The selavpr_ros metadata of an exported file (read with ``onnx`` where installed, else with an
    ONNX Runtime session: robots need only the runtime)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX file not found")
    try:
        import onnx
    except ImportError:
        return _checked_metadata(path, _open_session(path, ["CPUExecutionProvider"]))
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors
        raise CheckpointError(f"{path}: not a readable ONNX file ({exc})") from None
    return _checked_metadata(path, {p.key: p.value for p in model.metadata_props})


def _checked_metadata(path: Path, source: Any) -> dict[str, str]:
    """``source``: the metadata mapping, or an ONNX Runtime session holding it."""
    meta = dict(source.get_modelmeta().custom_metadata_map) if hasattr(source, "get_modelmeta") else source
    if meta.get("format") != ONNX_FORMAT:
        raise CheckpointError(f"{path}: ONNX file was not exported by selavpr_ros (no model metadata)")
    return meta


def session_options(threads: int | None = None) -> Any:
    """How every session of this package runs: all graph optimisations, one intra-op pool of
    ``threads`` (default: the process's budget) and no inter-op pool (the graph runs sequentially)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or thread_budget()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def _open_session(path: Path, providers: list[str], options: Any = None) -> Any:
    import onnxruntime as ort

    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX file not found")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own Fail/InvalidProtobuf/InvalidGraph
        raise CheckpointError(f"{path}: not a readable ONNX file ({str(exc).splitlines()[0][:200]})") from None


def export_onnx(
    model: Any,
    path: str | os.PathLike,
    model_id: str,
    opset: int = DEFAULT_OPSET,
    int8: bool = False,
    fp16: bool = False,
) -> ExportReport:
    """Export a :class:`~selavpr_ros.models.vpr.VPRModel` with a dynamic batch axis.

    With ``fp16`` the graph's weights and arithmetic become float16 (inputs and outputs stay float32):
    half the file, for GPUs (CUDA, TensorRT); descriptors move by ~1e-3. With ``int8`` the exported
    graph is then dynamically quantised (int8
    weights of MatMul/Gemm, activations quantised on the fly), for CPU robots.
    """
    import torch

    if opset < 17:
        raise CheckpointError(f"opset {opset} is too old; use 17 or newer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    model = model.eval().cpu()
    has_local = config.layout().has_local
    outputs = OUTPUTS if has_local else OUTPUTS[:3]

    class _Graph(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor):
            out = self.inner(images)
            result = (out.codes, out.descriptors, out.hash_z)
            return result + (out.local_features,) if has_local else result

    example = torch.zeros(2, 3, config.preprocess.height, config.preprocess.width)
    with torch.no_grad():
        model(example)  # warms the position-embedding cache that the graph captures as a constant
    if int8 and fp16:
        raise CheckpointError("choose one of int8 (CPUs) and fp16 (GPUs)")
    fp32_path = path if not (int8 or fp16) else path.with_name(path.stem + ".fp32.onnx")
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Graph(model),
            (example,),
            str(fp32_path),
            input_names=["images"],
            output_names=list(outputs),
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    meta = {
        "format": ONNX_FORMAT,
        "package_version": __version__,
        "model_id": model_id,
        "model_id_format": MODEL_ID_FORMAT,
        "model_config": json.dumps(config.to_dict()),
        "layout": json.dumps(config.layout().to_dict()),
        "precision": "fp32",
    }
    _write_metadata(fp32_path, meta)
    if int8:
        quantize_int8(fp32_path, path)
        fp32_path.unlink()
    if fp16:
        convert_fp16(fp32_path, path)
        fp32_path.unlink()
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    return ExportReport(path, opset, precision, path.stat().st_size, outputs)


EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's own logging (hundreds of INFO lines from its graph optimiser, warnings about
    operators of packages the model does not use) only with ``-v``: users see one line per export."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Weights and arithmetic in float16, float32 inputs and outputs kept; metadata is carried over."""
    import onnx
    from onnxruntime.transformers import float16

    meta = read_metadata(src)
    onnx.save(float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    _write_metadata(Path(dst), {**meta, "precision": "fp16"})
    return Path(dst)


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Dynamic int8 quantisation of MatMul/Gemm weights; metadata is carried over."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    meta = read_metadata(src)
    # The exporter's intermediate shape annotations can trip the quantiser's
    # strict shape inference; dropping them lets it infer its own.
    model = onnx.load(str(src))
    del model.graph.value_info[:]
    stripped = Path(dst).with_name(Path(dst).stem + ".noshapes.onnx")
    onnx.save(model, str(stripped))
    try:
        quantize_dynamic(str(stripped), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        stripped.unlink(missing_ok=True)
    _write_metadata(Path(dst), {**meta, "precision": "int8"})
    return Path(dst)


_WANTS = {  # what each device asks ONNX Runtime for, best first; CPU always closes the list
    "auto": ["CUDAExecutionProvider"],
    "cpu": [],
    "cuda": ["CUDAExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}


def select_providers(device: str = "auto", available: list[str] | None = None) -> list[str]:
    """ONNX Runtime execution providers for ``device`` (auto | cpu | cuda | tensorrt).

    ``auto`` takes CUDA where the installed runtime has it (``onnxruntime-gpu``), else the CPU;
    TensorRT only when asked (it builds engines at start-up, which takes minutes). A device the
    runtime cannot serve falls back to what it has, with one log line saying which and why.
    """
    if device not in _WANTS:
        raise CheckpointError(f"device must be one of {', '.join(_WANTS)}, got {device!r}")
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    chosen = [p for p in _WANTS[device] if p in available] + ["CPUExecutionProvider"]
    missing = [p for p in _WANTS[device] if p not in available]
    if device in ("cuda", "tensorrt") and missing:
        log.warning("device %s: ONNX Runtime here has no %s (it has %s; install onnxruntime-gpu with the CUDA "
                    "and TensorRT libraries it was built for); running on %s", device, ", ".join(missing),
                    ", ".join(available), chosen[0])
    return chosen


class OnnxExtractor(Extractor):
    """ONNX Runtime backend (no PyTorch needed)."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None) -> None:

        self.path = Path(path)
        self.providers = select_providers(device)
        self.session = _open_session(self.path, self.providers, session_options(threads))
        active = self.session.get_providers()  # a provider whose libraries fail to load is dropped here
        if active[0] != self.providers[0]:
            log.warning("%s: %s could not start; ONNX Runtime runs on %s", self.path.name, self.providers[0],
                        active[0])
        self.providers = active
        meta = _checked_metadata(self.path, self.session)
        self.model_config = json.loads(meta["model_config"])
        self.preprocess = from_dict(PreprocessConfig, self.model_config.get("preprocess"), "preprocess")
        self.layout = DescriptorLayout.from_dict(json.loads(meta["layout"]))
        self.model_id = meta["model_id"] if meta.get("model_id_format") == MODEL_ID_FORMAT else \
            upgrade_model_id(meta["model_id"], self.model_config)  # exported before ids named the config
        self.precision = meta.get("precision", "fp32")
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, batch: np.ndarray) -> Descriptors:
        if len(batch) == 0:
            return Descriptors.empty(self.layout)
        values = dict(
            zip(self.output_names, self.session.run(None, {"images": np.ascontiguousarray(batch, np.float32)}))
        )
        return Descriptors(values["codes"], values["descriptors"], values["hash_z"], values.get("local_features"))


def compare_with_torch(model: Any, onnx_path: str | os.PathLike, batch: int = 4, seed: int = 0) -> dict[str, float]:
    """Run the PyTorch model and the ONNX file on the same random batch and report the gaps.

    Codes can only differ where the continuous hash value is near zero; the
    report counts differing bits and how many PyTorch values lie within 1e-4 of 0.
    """
    from selavpr_ros.inference.torch_backend import TorchExtractor

    cfg = model.config.preprocess
    x = np.random.default_rng(seed).standard_normal((batch, 3, cfg.height, cfg.width)).astype(np.float32)
    ref = TorchExtractor(model, device="cpu").run(x)
    got = OnnxExtractor(onnx_path, device="cpu").run(x)
    bits_ref = np.unpackbits(ref.codes, axis=1)
    bits_got = np.unpackbits(got.codes, axis=1)
    report = {
        "batch": batch,
        "descriptors_max_abs": float(np.abs(ref.descriptors - got.descriptors).max()),
        "hash_z_max_abs": float(np.abs(ref.hash_z - got.hash_z).max()),
        "code_bits_total": int(bits_ref.size),
        "code_bits_differ": int((bits_ref != bits_got).sum()),
        "hash_z_near_zero": int((np.abs(ref.hash_z) < 1e-4).sum()),
        "min_cosine": float((ref.descriptors * got.descriptors).sum(1).min()),
    }
    if ref.local_features is not None:
        report["local_max_abs"] = float(np.abs(ref.local_features - got.local_features).max())
    return report
