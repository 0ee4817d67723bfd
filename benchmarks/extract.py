"""Descriptor extraction speed: PyTorch vs ONNX Runtime fp32 vs ONNX Runtime int8.

ms per frame for DINOv2 ViT-S/14 and ViT-B/14 (frozen DINOv2-GeM model) at
224 and 322 px, batch 1 and 8, random weights (compute does not depend on
values), medians of repeated runs in one process. Also the SelaVPR++ ViT-B
two-branch model at batch 1, the peer measured in DESIGN.md section 6.

The bound for each row is its analytical FLOP count divided by this
machine's measured fp32 matmul peak (and, for reference, by DESIGN.md's
165 GFLOP/s). Writes benchmarks/results/extract.json and prints a table.

    python benchmarks/extract.py            # full run (~10 min on 2 cores)
    python benchmarks/extract.py --quick    # ViT-S only, fewer repeats
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
from _common import DESIGN_PEAK_GFLOPS, measure_peak_gflops, median_ms, save, table

from selavpr_ros.inference.onnx_backend import OnnxExtractor, compare_with_torch, export_onnx
from selavpr_ros.inference.torch_backend import TorchExtractor
from selavpr_ros.models.config import ModelConfig
from selavpr_ros.models.summary import estimate_macs
from selavpr_ros.models.vpr import build_model


def bench_model(config: ModelConfig, batches: list[int], repeats: int, workdir: Path, peak: float) -> list[dict]:
    model = build_model(config).eval()
    fp32 = workdir / "m.onnx"
    int8 = workdir / "m.int8.onnx"
    export_onnx(model, fp32, "bench")
    export_onnx(model, int8, "bench", int8=True)
    int8_parity = compare_with_torch(model, int8, batch=4)
    backends = {
        "torch": TorchExtractor(model, device="cpu"),
        "onnxruntime": OnnxExtractor(fp32, device="cpu"),
        "onnxruntime-int8": OnnxExtractor(int8, device="cpu"),
    }
    gflop = 2 * sum(estimate_macs(config).values()) / 1e9
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, config.preprocess.height, config.preprocess.width))
        x = x.astype(np.float32)
        reps = repeats if batch == 1 else max(3, repeats // 2)
        for name, extractor in backends.items():
            timing = median_ms(lambda e=extractor, x=x: e.run(x), repeats=reps)
            per_frame = timing["median_ms"] / batch
            bound = gflop / peak * 1000
            rows.append(
                {
                    "model": f"{config.method} {config.backbone.arch}",
                    "input": config.preprocess.height,
                    "batch": batch,
                    "backend": name,
                    "ms_per_frame": per_frame,
                    "batch_ms": timing["median_ms"],
                    "gflop_per_frame": gflop,
                    "bound_ms": bound,
                    "x_bound": per_frame / bound,
                    "x_design_bound": per_frame / (gflop / DESIGN_PEAK_GFLOPS * 1000),
                    **({"int8_min_cosine": int8_parity["min_cosine"]} if name.endswith("int8") else {}),
                }
            )
            print(
                f"  {rows[-1]['model']:<22} {config.preprocess.height} b{batch} {name:<17} "
                f"{per_frame:8.1f} ms/frame  ({rows[-1]['x_bound']:.2f}x bound)",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ViT-S/14 at 224 only, fewer repeats")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per row at batch 1")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    peak = measure_peak_gflops()
    print(
        f"measured fp32 matmul peak: {peak['peak_gflops']:.0f} GFLOP/s "
        f"(torch {peak['torch_gflops']:.0f}, onnxruntime {peak['onnxruntime_gflops']:.0f})"
    )
    plan = [("dinov2-gem", "vits14", 224)]
    if not args.quick:
        plan += [("dinov2-gem", "vits14", 322), ("dinov2-gem", "vitb14", 224), ("dinov2-gem", "vitb14", 322)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method, arch, size in plan:
            cfg = ModelConfig.from_dict(
                {"method": method, "backbone": {"arch": arch}, "preprocess": {"height": size, "width": size}}
            )
            rows += bench_model(cfg, [1, 8], 5 if args.quick else args.repeats, Path(tmp), peak["peak_gflops"])
        if not args.quick:
            for size in (224, 322):
                cfg = ModelConfig.from_dict(
                    {
                        "method": "selavpr++",
                        "backbone": {"arch": "vitb14"},
                        "preprocess": {"height": size, "width": size},
                    }
                )
                rows += bench_model(cfg, [1], args.repeats, Path(tmp), peak["peak_gflops"])

    def ratio(model, size, batch, a, b):
        pick = {
            r["backend"]: r["ms_per_frame"]
            for r in rows
            if r["model"] == model and r["input"] == size and r["batch"] == batch
        }
        return pick[a] / pick[b] if a in pick and b in pick else None

    headline = next(
        r
        for r in rows
        if r["model"] == "dinov2-gem vits14" and r["input"] == 224 and r["batch"] == 1 and r["backend"] == "onnxruntime"
    )
    summary = {
        "vits14_224_b1_onnxruntime_ms": headline["ms_per_frame"],
        "vits14_224_b1_onnxruntime_x_measured_bound": headline["x_bound"],
        "vits14_224_b1_onnxruntime_x_design_bound": headline["x_design_bound"],
        "vits14_224_b1_torch_over_onnxruntime": ratio("dinov2-gem vits14", 224, 1, "torch", "onnxruntime"),
        "vits14_224_b1_onnxruntime_over_int8": ratio("dinov2-gem vits14", 224, 1, "onnxruntime", "onnxruntime-int8"),
    }
    path = save("extract", {"peak": peak, "design_peak_gflops": DESIGN_PEAK_GFLOPS, "rows": rows, "summary": summary})
    print()
    print(
        table(
            rows,
            [
                ("model", "model", ""),
                ("input", "input", ""),
                ("batch", "batch", ""),
                ("backend", "backend", ""),
                ("ms_per_frame", "ms/frame", ".1f"),
                ("gflop_per_frame", "GFLOP", ".1f"),
                ("bound_ms", "bound ms", ".1f"),
                ("x_bound", "x bound", ".2f"),
                ("x_design_bound", "x DESIGN bound", ".2f"),
            ],
        )
    )
    print()
    for key, value in summary.items():
        print(f"{key}: {value:.3f}" if value is not None else f"{key}: n/a")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
