"""Shared benchmark plumbing: timing, machine facts, peak measurement, JSON + table output.

Speeds are medians of repeated runs measured side by side in one process;
every result file records the machine and the measured fp32 peak so that
ratios to physical bounds are computed on the same machine as the timings.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
from selavpr_ros.transport.discovery import pin_loopback  # noqa: E402

pin_loopback()  # DDS benchmarks stay on this machine

DESIGN_PEAK_GFLOPS = 165.0  # DESIGN.md section 6, fp32 matmul on the 2-core reference machine
DESIGN_MEM_GBPS = 17.0


def median_ms(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Median (and spread) wall time of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "repeats": repeats}


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line)
        info["avx512"] = "avx512f" in cpuinfo
    except (OSError, StopIteration):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def measure_peak_gflops(threads: int | None = None, repeats: int = 10) -> dict[str, float]:
    """fp32 matmul throughput of this machine: best of PyTorch and ONNX Runtime (prepacked weights).

    Its clock can vary within a run: interleave short probes (``repeats`` 3) with what they bound."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = 1024, 1024, 4096
    flop = 2 * m * k * n
    a = torch.randn(m, k)
    b = torch.randn(k, n)
    torch_ms = median_ms(lambda: a @ b, repeats=repeats)["median_ms"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])],
        initializer=[numpy_helper.from_array(b.numpy(), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = a.numpy()
    ort_ms = median_ms(lambda: session.run(None, {"a": x}), repeats=repeats)["median_ms"]
    result = {"torch_gflops": flop / torch_ms / 1e6, "onnxruntime_gflops": flop / ort_ms / 1e6}
    result["peak_gflops"] = max(result.values())
    return result


def measure_memory_gbps() -> float:
    """Sustained read bandwidth: summing a 512 MB array."""
    arr = np.ones(128 * 1024 * 1024, np.float32)
    ms = median_ms(lambda: arr.sum(), repeats=5, warmup=1)["median_ms"]
    return arr.nbytes / ms / 1e6


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(payload, indent=2))
    return path


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table; ``columns`` = (key, header, format)."""
    header = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, rule]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("" if value is None else format(value, fmt) if fmt else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
