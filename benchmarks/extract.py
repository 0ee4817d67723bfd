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
    python benchmarks/extract.py --authors ~/src/SelaVPRplusplus   # + the authors' model, side by side

With ``--authors`` (a checkout of github.com/Lu-Feng/SelaVPRplusplus, never part of this package)
the authors' SelaVPR++ ViT-B/14 two-branch model is built from their code with seeded random
weights, saved in their release layout and imported; their eager PyTorch forward, this package's
PyTorch path and its ONNX Runtime fp32 and int8 paths then run interleaved (one call of each in
turn, batch 1, 224 x 224, the same input), and the outputs are compared.
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


def authors_side_by_side(repo: Path, workdir: Path, repeats: int, size: int = 224) -> dict:
    """The authors' SelaVPR++ forward against this package's paths, interleaved in one process."""
    import statistics
    import time
    import types

    import torch
    from reference_parity import _import_from, _randomise

    from selavpr_ros.models.methods.selavprpp import import_selavprpp

    network = _import_from(repo, "model.network")
    args = types.SimpleNamespace(backbone="dinov2-base", aggregation="gem", hashing=True, rerank=True, resume=True,
                                 foundation_model_path=None)
    ref = network.GeoLocalizationNet(args).eval()
    _randomise(ref)
    torch.save({"model_state_dict": torch.nn.DataParallel(ref).state_dict()}, workdir / "authors.pth")
    ours = import_selavprpp(workdir / "authors.pth", size=(size, size)).eval()
    fp32, fp16, int8 = workdir / "pp.onnx", workdir / "pp.fp16.onnx", workdir / "pp.int8.onnx"
    export_onnx(ours, fp32, "bench")
    export_onnx(ours, fp16, "bench", fp16=True)
    export_onnx(ours, int8, "bench", int8=True)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    xn = x.numpy()

    def authors():
        with torch.inference_mode():
            return ref(x)

    extractors = {"selavpr_ros PyTorch": TorchExtractor(ours, device="cpu"),
                  "selavpr_ros ONNX Runtime fp32": OnnxExtractor(fp32, device="cpu"),
                  "selavpr_ros ONNX Runtime fp16": OnnxExtractor(fp16, device="cpu"),
                  "selavpr_ros ONNX Runtime int8": OnnxExtractor(int8, device="cpu")}
    paths = {"authors (eager PyTorch)": authors,
             **{name: (lambda e=e: e.run(xn)) for name, e in extractors.items()}}
    outputs = {name: fn() for name, fn in paths.items()}  # warm-up, and the outputs compared below
    for fn in paths.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    peaks: list[float] = []  # this VM's clock drifts under load: the peak is probed in every round
    for _ in range(repeats):
        peaks.append(measure_peak_gflops(repeats=3)["peak_gflops"])
        for name, fn in paths.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1000)
    peak = statistics.median(peaks)
    z_ref, _, float_ref = (t.numpy() for t in outputs["authors (eager PyTorch)"])
    bits_ref = z_ref >= 0
    gflop = 2 * sum(estimate_macs(ours.config).values()) / 1e9
    base = statistics.median(times["authors (eager PyTorch)"])
    rows = []
    for name, ms in times.items():
        row = {"path": name, "median_ms": statistics.median(ms), "p10_ms": float(np.percentile(ms, 10)),
               "p90_ms": float(np.percentile(ms, 90)), "x_authors": base / statistics.median(ms),
               "x_flop_bound": statistics.median(ms) / (gflop / peak * 1000)}
        if name != "authors (eager PyTorch)":
            got = outputs[name]
            row["float_max_abs_vs_authors"] = float(np.abs(got.descriptors - float_ref).max())
            row["code_bits_differing"] = int((np.unpackbits(got.codes, axis=1)[:, : bits_ref.shape[1]]
                                              != bits_ref).sum())
        rows.append(row)
        print(f"  {name:<32} {row['median_ms']:7.1f} ms  ({row['x_authors']:.2f}x the authors', "
              f"{row['x_flop_bound']:.2f}x FLOP bound)", flush=True)
    profile = onnx_op_profile(fp32, xn)
    print(f"  ONNX Runtime fp32 by operator: matrix products {profile['matrix_products_ms']:.0f} ms of "
          f"{profile['total_ms']:.0f} ms; 1.5x the authors' needs {base / 1.5:.0f} ms in all", flush=True)
    return {"model": "SelaVPR++ ViT-B/14, float + hash branches, seeded random weights", "input": size,
            "batch": 1, "repeats": repeats, "gflop_per_frame": gflop, "bound_ms": gflop / peak * 1000,
            "peak_gflops_per_round": peaks, "peak_gflops": peak,
            "code_bits": int(bits_ref.shape[1]), "rows": rows, "onnx_fp32_profile": profile,
            "ms_for_1_5x_authors": base / 1.5}


MATRIX_OPS = ("MatMul", "FusedMatMul", "Gemm", "Conv", "FusedConv", "FusedGemm")


def onnx_op_profile(path: Path, x: np.ndarray, runs: int = 8) -> dict:
    """Where an ONNX Runtime fp32 frame spends its time, by operator (the runtime's own profiler, the
    same session settings as :class:`OnnxExtractor`): matrix products against everything else."""
    import collections
    import json

    import onnxruntime as ort

    from selavpr_ros.inference.onnx_backend import session_options

    options = session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    warmup = 2
    for _ in range(warmup + runs):
        session.run(None, {"images": x})
    profile_file = Path(session.end_profiling())
    events = json.loads(profile_file.read_text())
    profile_file.unlink()
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= starts[warmup]:
            by_op[e["args"]["op_name"]] += e["dur"] / 1000 / runs
    matrix = sum(v for k, v in by_op.items() if k in MATRIX_OPS)
    return {"runs": runs, "total_ms": sum(by_op.values()), "matrix_products_ms": matrix,
            "by_op_ms": dict(by_op.most_common(12))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ViT-S/14 at 224 only, fewer repeats")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per row at batch 1")
    parser.add_argument("--authors", type=Path, help="checkout of github.com/Lu-Feng/SelaVPRplusplus: time the "
                        "authors' model side by side")
    parser.add_argument("--authors-only", action="store_true", help="only the side-by-side comparison")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    peak = measure_peak_gflops()
    print(
        f"measured fp32 matmul peak: {peak['peak_gflops']:.0f} GFLOP/s "
        f"(torch {peak['torch_gflops']:.0f}, onnxruntime {peak['onnxruntime_gflops']:.0f})"
    )
    if args.authors:
        with tempfile.TemporaryDirectory() as tmp:
            side = authors_side_by_side(args.authors.expanduser().resolve(), Path(tmp), max(args.repeats, 15))
        print(f"wrote {save('extract_authors', {'peak': peak, **side})}")
        if args.authors_only:
            return
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
