"""Map search speed, recall and memory from 10 k to 10 M keyframes, all measured side by side in one run.

Map entries are made like the built-in model's (512-bit code, 512-d float
stored fp16): sampled from a Gaussian fitted to the model's own features on
augmented real Nordland frames and passed through the model's output layers
(``_scale_codes.py`` says exactly how; 10 views per place; the JSON's
``codes`` compares them with real codes and uniformly random ones).
For each size, each index is served by a fresh process (its resident memory
is its own), with 200 queries that are new views of places in the map:

* ``flat``: exhaustive Hamming top-100 + float re-rank (the default); its
  binary results are the exact reference of this run;
* ``ivf``: the persisted inverted file (``retrieval.index: ivf``, default
  nprobe: a quarter of the lists) + float
  re-rank: first open (trains and persists), reopen (no retraining), p50/p95
  per query, recall@100 and @10 of its binary stage against ``flat``, an
  nprobe sweep, resident memory (VmRSS after the queries, and VmHWM);
* exhaustive float search (faiss IndexFlatIP, fp32 in RAM: what the papers'
  code does) up to 1 M entries (20 GB of RAM at 10 M).

Local re-ranking (SelaVPR, 61 x 61 x 128 per entry) on a 1 k map: top-20 and
top-100 with full-grid fp16, 2x2-pooled fp16 and pooled int8 storage, against
the authors' formulation (one dense K x 3721 x 3721 similarity in PyTorch,
then the two argmax passes), side by side in this run; the exact computation
against its FLOP bound (K x 3721 x 3721 x 128 multiply-adds at this
machine's fp32 matmul peak, probed just before each timed re-rank) and its peak memory
(tracemalloc).

Bounds: the Hamming scan reads N x 64 B; at this machine's measured read
bandwidth that is its floor. Writes benchmarks/results/retrieval.json.

    python benchmarks/retrieval.py                        # all sizes (~40 min, ~11 GB of disk at 10 M)
    python benchmarks/retrieval.py --max-entries 1000000  # up to 1 M (~8 min)
    python benchmarks/retrieval.py --quick                # 10 k and 100 k, no local re-ranking
    python benchmarks/retrieval.py --local-only           # only the local re-ranking section (~3 min)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _scale_codes as scale_codes
import faiss
import numpy as np
from _common import DESIGN_MEM_GBPS, RESULTS, machine, measure_memory_gbps, measure_peak_gflops, median_ms, save, table

from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.mapdb.records import StorageConfig
from selavpr_ros.retrieval.config import RetrievalConfig
from selavpr_ros.retrieval.retriever import Retriever
from selavpr_ros.types import DescriptorLayout, Descriptors, KeyframeRecord

BITS, DIM, VIEWS = 512, 512, 10
SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
FLOAT_EXHAUSTIVE_MAX = 1_000_000  # (b) holds fp32 floats in RAM: 2 GB at 1 M, 20 GB at 10 M (not run)
NPROBES = (16, 32, 64, 128, 256, 512, 1024, 2048)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def build_map(path: Path, n: int) -> float:
    """A map of ``n`` entries made like the built-in model's (see _scale_codes.py), 10 views per place."""
    t = time.perf_counter()
    db = MapDatabase.create(path, DescriptorLayout(BITS, DIM), "bench:scale")
    for start, codes, floats in scale_codes.chunks(n, 100_000, VIEWS):
        desc = Descriptors(codes, floats.astype(np.float32), np.zeros((len(codes), 0), np.float32))
        db.add(desc, [KeyframeRecord(stamp_ns=i) for i in range(start, start + len(codes))])
    db.close()
    return time.perf_counter() - t


def rss_mb() -> dict[str, float]:
    """This process's resident memory (MB): all of it now and at its peak, and split into its own
    (anonymous: heap, indexes copied into RAM) and the map files' pages it has mapped (page cache
    the kernel may drop; with large folios a few scattered reads map megabytes of a file)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(status[key].split()[0]) / 1024
            for k, key in (("now", "VmRSS"), ("peak", "VmHWM"), ("anon", "RssAnon"), ("file", "RssFile"))}


def percentiles(times: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


def timed(fn, count: int) -> dict[str, float]:
    fn(0)  # warm-up: first-call allocations are not a query's cost
    times = []
    for j in range(count):
        t = time.perf_counter()
        fn(j)
        times.append((time.perf_counter() - t) * 1000)
    return percentiles(times)


def serve(path: Path, n: int, index: str, count: int, truth: Path) -> dict:
    """One fresh process serving the map with ``index`` (flat or ivf): times, recall, resident memory.
    The queries come from a file beside ``truth`` (this process never loads the code generator)."""
    saved = np.load(truth.with_suffix(".queries.npz"))
    qc, qf, places = saved["codes"][:count], saved["floats"][:count], saved["places"][:count]
    q = Descriptors(qc, qf.astype(np.float32), np.zeros((count, 0), np.float32))
    out: dict = {"index": index}
    config = RetrievalConfig(stages=["binary", "float"], k=100, index=index)
    db = MapDatabase.open(path)
    t = time.perf_counter()
    retriever = Retriever(db, config)
    out["first_open_s"] = time.perf_counter() - t  # ivf: trains and persists on the first open
    if index == "ivf":
        del retriever
        gc.collect()
        t = time.perf_counter()
        retriever = Retriever(db, config)
        out["reopen_s"] = time.perf_counter() - t
        out["reopen_retrains"] = retriever.hamming_index.retrains
        out["nlist"] = retriever.hamming_index.nlist
        out["nprobe"] = retriever.hamming_index.probes  # the default: a quarter of the lists
    hamming = retriever.hamming_index
    out["binary_float"] = timed(lambda j: retriever.search(q[j]), count)
    out["binary_stage"] = timed(lambda j: hamming.search(qc[j], 100), count)
    out["rss_mb"] = rss_mb()
    _, rows = hamming.search(qc, 100)
    out["place_hit_at_1"] = float(np.mean([retriever.search(q[j]).rows[0] // VIEWS == places[j]
                                           for j in range(count)]))
    if index == "flat":
        np.save(truth, rows)  # exhaustive: the reference of every approximate index in this run
        if n <= FLOAT_EXHAUSTIVE_MAX:
            flat = faiss.IndexFlatIP(DIM)
            for s in range(0, n, 100_000):
                flat.add(np.ascontiguousarray(db.float_descriptors[s : s + 100_000], np.float32))
            out["float_exhaustive"] = timed(lambda j: flat.search(q.descriptors[j][None], 100), count)
            out["float_exhaustive_hit_at_1"] = float(np.mean(flat.search(q.descriptors, 1)[1][:, 0] // VIEWS
                                                             == places))
    else:
        exact = np.load(truth)
        out["recall_at_100"] = recall(exact, rows)
        out["recall_at_10"] = recall(exact[:, :10], rows[:, :10])
        sweep = []
        nprobe = hamming.settings.nprobe
        for probes in NPROBES:
            hamming.settings = dataclasses.replace(hamming.settings, nprobe=probes)
            _, got = hamming.search(qc, 100)
            sweep.append({"nprobe": probes, "recall_at_100": recall(exact, got),
                          **timed(lambda j: hamming.search(qc[j], 100), count)})
        hamming.settings = dataclasses.replace(hamming.settings, nprobe=nprobe)
        out["nprobe_sweep"] = sweep
    db.close()
    return out


def recall(exact: np.ndarray, approx: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(exact, approx)]))


def in_fresh_process(*args: str) -> dict:
    """``serve`` in a child process, so that its resident memory is its own."""
    result = subprocess.run([sys.executable, __file__, "--serve", *args], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"serve {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_size(n: int, workdir: Path, count: int, mem_gbps: float) -> dict:
    path = workdir / f"map{n}"
    build_s = build_map(path, n)
    open_ms = median_ms(lambda: MapDatabase.open(path).close(), repeats=5, warmup=1)["median_ms"]
    with MapDatabase.open(path) as db:
        bytes_entry = sum(db.info.stored.row_bytes().values())
    truth = workdir / f"truth{n}.npy"
    qc, qf, places = scale_codes.queries(count, n)
    np.savez(truth.with_suffix(".queries.npz"), codes=qc, floats=qf, places=places)
    flat = in_fresh_process(str(path), str(n), "flat", str(count), str(truth))
    ivf = in_fresh_process(str(path), str(n), "ivf", str(count), str(truth))
    shutil.rmtree(path)
    scan_bound_ms = n * BITS / 8 / (mem_gbps * 1e9) * 1000
    row = {
        "entries": n,
        "build_s": build_s,
        "open_ms": open_ms,
        "bytes_per_entry": bytes_entry,
        "hamming_scan_bound_ms": scan_bound_ms,
        "flat": flat,
        "ivf": ivf,
        "flat_binary_x_bound": flat["binary_stage"]["p50_ms"] / scan_bound_ms,
        "float_exhaustive_over_flat": (flat["float_exhaustive"]["p50_ms"] / flat["binary_float"]["p50_ms"]
                                       if "float_exhaustive" in flat else None),
    }
    print(f"  {n:>10,} entries: flat {flat['binary_float']['p50_ms']:.2f} ms (p95 "
          f"{flat['binary_float']['p95_ms']:.2f}), RSS {flat['rss_mb']['now']:.0f} MB; ivf "
          f"{ivf['binary_float']['p50_ms']:.2f} ms (p95 {ivf['binary_float']['p95_ms']:.2f}), recall@100 "
          f"{ivf['recall_at_100']:.3f}, RSS {ivf['rss_mb']['now']:.0f} MB (own {ivf['rss_mb']['anon']:.0f}), "
          f"train {ivf['first_open_s']:.1f} s, "
          f"reopen {ivf['reopen_s']:.2f} s", flush=True)
    return row


def authors_counts(query, candidates) -> np.ndarray:
    """The published formulation: one (K, Ld, Lq) similarity, argmax both ways, gather (PyTorch, fp32)."""
    import torch

    q = torch.from_numpy(np.ascontiguousarray(query, np.float32)).reshape(-1, query.shape[-1])
    d = torch.from_numpy(np.ascontiguousarray(candidates, np.float32)).reshape(len(candidates), -1, q.shape[1])
    m = torch.matmul(d, q.T)
    max1, max2 = m.argmax(dim=1), m.argmax(dim=2)
    return (torch.gather(max2, 1, max1) == torch.arange(q.shape[0])).sum(dim=1).numpy()


def bench_local(workdir: Path, n: int = 1000, reps: int = 5) -> list[dict]:
    """Local re-ranking at 61 x 61 x 128 on an n-entry map, three storage choices, vs the authors' dense math."""
    import tracemalloc

    print(f"  measured fp32 matmul peak: {measure_peak_gflops()['peak_gflops']:.0f} GFLOP/s (probed again "
          "before each re-rank)", flush=True)
    rng = np.random.default_rng(3)
    grid, c = (61, 61), 128
    rows = []
    query_local = unit(rng.standard_normal((1, *grid, c)))
    for name, storage in (
        ("full fp16", StorageConfig(local_dtype="float16", local_pool=1)),
        ("pool2 fp16", StorageConfig(local_dtype="float16", local_pool=2)),
        ("pool2 int8", StorageConfig(local_dtype="int8", local_pool=2)),
    ):
        path = workdir / f"local_{name.replace(' ', '_')}"
        db = MapDatabase.create(path, DescriptorLayout(BITS, 64, c, grid), "bench:local", storage=storage)
        for _ in range(0, n, 100):
            local = unit(rng.standard_normal((100, *grid, c)))
            f = unit(rng.standard_normal((100, 64)))
            z = rng.standard_normal((100, BITS)).astype(np.float32)
            db.add(
                Descriptors(np.packbits(z >= 0, axis=1), f, z, local), [KeyframeRecord(stamp_ns=i) for i in range(100)]
            )
        q = Descriptors(
            db.codes[:1].copy(),
            np.asarray(db.float_descriptors[:1], np.float32),
            np.zeros((1, BITS), np.float32),
            query_local,
        )
        bytes_entry = sum(db.info.stored.row_bytes().values())
        variants = [(k, False) for k in (20, 100)]
        if name == "full fp16":
            variants += [(k, True) for k in (20, 100)]  # bfloat16 similarities
        fp32_counts: dict[int, np.ndarray] = {}
        stored = db.info.stored.local_grid
        for k, half in variants:
            r = Retriever(db, RetrievalConfig(stages=["binary", "float", "local"], k=100, local_k=k, local_half=half))
            timing = median_ms(lambda r=r, q=q: r.search(q), repeats=reps, warmup=1)
            # This VM's clock drifts under sustained load: each re-rank is paired with a peak probe
            # taken just before it, and the ratio to the bound is the median of the pairs' ratios.
            flop = k * (stored[0] * stored[1]) * (grid[0] * grid[1]) * c * 2
            pairs = []
            for _ in range(reps):
                gflops = measure_peak_gflops(repeats=3)["peak_gflops"]
                pairs.append((r.search(q).timings_ms["local"], flop / (gflops * 1e9) * 1000, gflops))
            local_ms = float(np.median([p[0] for p in pairs]))
            tracemalloc.start()
            result = r.search(q)
            peak_bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            counts = result.local_matches[np.argsort(result.rows)][result.local_matches[np.argsort(result.rows)] >= 0]
            extra = {"flop_bound_ms": float(np.median([p[1] for p in pairs])),
                     "x_flop_bound": float(np.median([p[0] / p[1] for p in pairs])),
                     "peak_gflops_paired": [p[2] for p in pairs], "peak_bytes": peak_bytes}
            if half:
                extra["count_rel_diff_vs_fp32"] = float(np.abs(counts - fp32_counts[k]).mean() / fp32_counts[k].mean())
            else:
                fp32_counts[k] = counts
            rows.append(
                {
                    "storage": name + (" (bf16 compute)" if half else ""),
                    "k": k,
                    "local_ms": float(local_ms),
                    "total_ms": timing["median_ms"],
                    "bytes_per_entry": bytes_entry,
                    "stored_grid": list(db.info.stored.local_grid),
                    **extra,
                }
            )
            print(f"  local {name:<10} top-{k:<3} {local_ms:8.1f} ms  ({bytes_entry / 1e6:.2f} MB/entry)", flush=True)
        db.close()
        shutil.rmtree(path)
    for k in (20, 100):
        cands = unit(rng.standard_normal((k, *grid, c)))
        authors_counts(query_local[0], cands[:2])  # warm-up
        times = []
        for _ in range(3 if k <= 20 else 1):  # the top 100 holds a 5.5 GB similarity: once
            t = time.perf_counter()
            authors_counts(query_local[0], cands)
            times.append((time.perf_counter() - t) * 1000)
        ms = float(np.median(times))
        rows.append(
            {
                "storage": "authors' dense fp32 (PyTorch)",
                "k": k,
                "local_ms": ms,
                "total_ms": None,
                "bytes_per_entry": grid[0] * grid[1] * c * 4,
                "peak_similarity_bytes": k * 3721 * 3721 * 4,
            }
        )
        print(
            f"  local reference dense top-{k:<3} {ms:8.1f} ms  (similarity {k * 3721 * 3721 * 4 / 1e9:.1f} GB)",
            flush=True,
        )
        del cands
        gc.collect()
    return rows


def local_summary(local: list[dict]) -> dict:
    def pick(storage, k):
        return next(r["local_ms"] for r in local if r["storage"] == storage and r["k"] == k)

    authors = "authors' dense fp32 (PyTorch)"
    return {"local_top20_speedup_vs_dense": pick(authors, 20) / pick("full fp16", 20),
            "local_top100_speedup_vs_dense": pick(authors, 100) / pick("full fp16", 100),
            "local_top20_x_flop_bound": next(r["x_flop_bound"] for r in local
                                             if r["storage"] == "full fp16" and r["k"] == 20)}


def rerun_local(workdir: Path | None) -> Path:
    """Replace the local re-rank section of the saved results (the map-size rows take an hour)."""
    path = RESULTS / "retrieval.json"
    data = json.loads(path.read_text())
    tmp = Path(tempfile.mkdtemp(dir=workdir))
    try:
        data["local"] = bench_local(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data["local_date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    data["local_machine"] = machine()
    data["summary"].update(local_summary(data["local"]))
    path.write_text(json.dumps(data, indent=2))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 k and 100 k entries, no local re-ranking")
    parser.add_argument("--max-entries", type=int, default=SIZES[-1], help="largest map (10 M: ~11 GB of disk)")
    parser.add_argument("--queries", type=int, default=200, help="queries per measurement")
    parser.add_argument("--skip-local", action="store_true", help="no local re-ranking section")
    parser.add_argument("--local-only", action="store_true",
                        help="only the local re-ranking section, replaced in the saved results")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the maps (default: a temp dir)")
    parser.add_argument("--serve", nargs=5, metavar=("MAP", "N", "INDEX", "QUERIES", "TRUTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        path, n, index, count, truth = args.serve
        print(json.dumps(serve(Path(path), int(n), index, int(count), Path(truth))))
        return
    if args.local_only:
        print(f"wrote {rerun_local(args.workdir)}")
        return

    mem = measure_memory_gbps()
    print(f"measured read bandwidth: {mem:.1f} GB/s (DESIGN.md: {DESIGN_MEM_GBPS} GB/s)")
    sizes = [n for n in SIZES if n <= (100_000 if args.quick else args.max_entries)]
    realism = scale_codes.realism()
    tmp = Path(tempfile.mkdtemp(dir=args.workdir))
    try:
        rows = [bench_size(n, tmp, args.queries, mem) for n in sizes]
        local = [] if args.quick or args.skip_local else bench_local(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    big = rows[-1]
    million = next((r for r in rows if r["entries"] == FLOAT_EXHAUSTIVE_MAX), None)
    summary = {
        "largest_map": big["entries"],
        "ivf_p50_ms_at_largest": big["ivf"]["binary_float"]["p50_ms"],
        "ivf_p95_ms_at_largest": big["ivf"]["binary_float"]["p95_ms"],
        "ivf_recall_at_100_at_largest": big["ivf"]["recall_at_100"],
        "ivf_nlist_nprobe_at_largest": [big["ivf"]["nlist"], big["ivf"]["nprobe"]],
        "ivf_binary_stage_p50_ms_at_largest": big["ivf"]["binary_stage"]["p50_ms"],
        "ivf_rss_mb_at_largest": big["ivf"]["rss_mb"]["now"],
        "ivf_rss_anon_mb_at_largest": big["ivf"]["rss_mb"]["anon"],
        "flat_p50_ms_at_largest": big["flat"]["binary_float"]["p50_ms"],
        "flat_rss_mb_at_largest": big["flat"]["rss_mb"]["now"],
        "flat_rss_anon_mb_at_largest": big["flat"]["rss_mb"]["anon"],
        "open_ms_at_largest": big["open_ms"],
    }
    if million is not None:
        summary["float_exhaustive_over_binary_float_at_1M"] = million["float_exhaustive_over_flat"]
    if local:
        summary.update(local_summary(local))
    path = save("retrieval", {"memory_gbps": mem, "codes": realism, "rows": rows, "local": local,
                              "summary": summary})
    flat_rows = [{"entries": r["entries"], **{f"{ix}_{k}": v for ix in ("flat", "ivf")
                                              for k, v in (("p50", r[ix]["binary_float"]["p50_ms"]),
                                                           ("p95", r[ix]["binary_float"]["p95_ms"]),
                                                           ("rss", r[ix]["rss_mb"]["now"]),
                                                           ("anon", r[ix]["rss_mb"]["anon"]))},
                  "recall": r["ivf"]["recall_at_100"], "train_s": r["ivf"]["first_open_s"],
                  "float_exh": r["flat"].get("float_exhaustive", {}).get("p50_ms", float("nan"))} for r in rows]
    print()
    print(
        table(
            flat_rows,
            [
                ("entries", "entries", ","),
                ("flat_p50", "flat p50 ms", ".2f"),
                ("flat_p95", "flat p95 ms", ".2f"),
                ("flat_rss", "flat RSS MB", ".0f"),
                ("flat_anon", "flat own MB", ".0f"),
                ("ivf_p50", "IVF p50 ms", ".2f"),
                ("ivf_p95", "IVF p95 ms", ".2f"),
                ("recall", "IVF R@100", ".3f"),
                ("ivf_rss", "IVF RSS MB", ".0f"),
                ("ivf_anon", "IVF own MB", ".0f"),
                ("train_s", "IVF train s", ".1f"),
                ("float_exh", "float exh. ms", ".2f"),
            ],
        )
    )
    if local:
        print()
        print(
            table(
                local,
                [
                    ("storage", "local storage", ""),
                    ("k", "K", ""),
                    ("local_ms", "re-rank ms", ".1f"),
                    ("x_flop_bound", "x FLOP bound", ".2f"),
                    ("peak_bytes", "peak bytes", ","),
                    ("bytes_per_entry", "B/entry", ","),
                ],
            )
        )
    print()
    for key, value in summary.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
