"""Map search speed and size, all measured side by side in one run.

For maps of 10 k, 100 k and 1 M entries (1024-d float descriptors stored as
fp16, 512-bit codes; synthetic but structured: 10 noisy views per place,
codes are sign random projections of the floats):

(a) binary top-100 + float re-rank (this package's default retrieval);
(b) exhaustive float search (faiss IndexFlatIP, fp32 in RAM: what the papers' code does);
(c) approximate binary search (IVF) and its recall@100 against exhaustive Hamming;
time to open the map; bytes per entry.

Local re-ranking (SelaVPR, 61 x 61 x 128 per entry) on a 1 k map: top-20 and
top-100 with full-grid fp16, 2x2-pooled fp16 and pooled int8 storage, against
the authors' formulation (one dense K x 3721 x 3721 similarity in PyTorch,
then the two argmax passes), side by side in this run; the exact computation
against its FLOP bound (K x 3721 x 3721 x 128 multiply-adds at this
machine's fp32 matmul peak, measured here) and its peak memory (tracemalloc).

Bounds: the Hamming scan reads N x 64 B; at this machine's measured read
bandwidth that is its floor. Writes benchmarks/results/retrieval.json.

    python benchmarks/retrieval.py            # all sizes (~10 min, ~8 GB RAM, ~3 GB disk)
    python benchmarks/retrieval.py --quick    # 10 k and 100 k only
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from _common import DESIGN_MEM_GBPS, measure_memory_gbps, measure_peak_gflops, median_ms, save, table

from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.mapdb.records import StorageConfig
from selavpr_ros.retrieval.config import RetrievalConfig
from selavpr_ros.retrieval.hamming import HammingIndex
from selavpr_ros.retrieval.retriever import Retriever
from selavpr_ros.types import DescriptorLayout, Descriptors, KeyframeRecord

DIM, BITS, VIEWS = 1024, 512, 10
PROJ = np.random.default_rng(42).standard_normal((DIM, BITS)).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def chunk(start: int, n: int) -> Descriptors:
    """Entries ``start..start+n``: entry i is a noisy view of place i // VIEWS."""
    places = np.arange(start, start + n) // VIEWS
    base = np.stack([np.random.default_rng(int(p)).standard_normal(DIM) for p in np.unique(places)])
    f = base[np.searchsorted(np.unique(places), places)]
    f = unit(f + 0.6 * np.random.default_rng(start).standard_normal(f.shape))
    z = f @ PROJ
    return Descriptors(np.packbits(z >= 0, axis=1), f, z, None)


def build_map(path: Path, n: int) -> float:
    t = time.perf_counter()
    db = MapDatabase.create(path, DescriptorLayout(BITS, DIM), "bench:1")
    step = 20_000
    for s in range(0, n, step):
        m = min(step, n - s)
        db.add(chunk(s, m), [KeyframeRecord(stamp_ns=i) for i in range(s, s + m)])
    db.close()
    return time.perf_counter() - t


def queries(n_map: int, count: int) -> tuple[Descriptors, np.ndarray]:
    """Fresh views of places in the map (their other views are the true neighbours), and those places."""
    rng = np.random.default_rng(7)
    places = rng.choice(n_map // VIEWS, count, replace=False)
    f = np.stack([np.random.default_rng(int(p)).standard_normal(DIM) for p in places])
    f = unit(f + 0.6 * rng.standard_normal(f.shape))
    z = f @ PROJ
    return Descriptors(np.packbits(z >= 0, axis=1), f, z, None), places


def bench_size(n: int, workdir: Path, n_queries: int, mem_gbps: float) -> dict:
    path = workdir / f"map{n}"
    build_s = build_map(path, n)
    gc.collect()
    open_ms = median_ms(lambda: MapDatabase.open(path).close(), repeats=5, warmup=1)["median_ms"]
    db = MapDatabase.open(path)
    q, places = queries(n, n_queries)
    retriever = Retriever(db, RetrievalConfig(stages=["binary", "float"], k=100))
    i = iter(range(10**9))

    def nxt() -> int:
        return next(i) % n_queries

    a = median_ms(lambda: retriever.search(q[nxt()]), repeats=n_queries)
    hamming = retriever.hamming_index
    stage_binary = median_ms(lambda: hamming.search(q.codes[nxt()], 100), repeats=n_queries)

    flat = faiss.IndexFlatIP(DIM)
    for s in range(0, n, 50_000):
        flat.add(np.ascontiguousarray(db.float_descriptors[s : s + 50_000], np.float32))
    b = median_ms(lambda: flat.search(q.descriptors[nxt()][None], 100), repeats=n_queries)
    # Both paths find the right place (a view of the query's place ranked first).
    hit_a = np.mean([retriever.search(q[j]).rows[0] // VIEWS == places[j] for j in range(n_queries)])
    hit_b = np.mean(flat.search(q.descriptors, 1)[1][:, 0] // VIEWS == places)
    flat.reset()
    gc.collect()

    ivf = HammingIndex(BITS, "ivf", nprobe=16)
    t = time.perf_counter()
    ivf.add(np.asarray(db.codes))
    ivf_build_s = time.perf_counter() - t
    c = median_ms(lambda: ivf.search(q.codes[nxt()], 100), repeats=n_queries)
    _, exact = hamming.search(q.codes, 100)
    _, approx = ivf.search(q.codes, 100)
    ivf_recall = float(np.mean([len(set(x) & set(y)) / 100 for x, y in zip(exact, approx)]))
    ivf_recall10 = float(np.mean([len(set(x[:10]) & set(y[:10])) / 10 for x, y in zip(exact, approx)]))
    hit_ivf = float(np.mean(approx[:, 0] // VIEWS == places))
    bytes_entry = sum(db.info.stored.row_bytes().values())
    db.close()
    shutil.rmtree(path)
    scan_bound_ms = n * BITS / 8 / (mem_gbps * 1e9) * 1000
    row = {
        "entries": n,
        "a_binary_float_ms": a["median_ms"],
        "a_binary_stage_ms": stage_binary["median_ms"],
        "b_float_exhaustive_ms": b["median_ms"],
        "b_over_a": b["median_ms"] / a["median_ms"],
        "place_hit_at_1_a": float(hit_a),
        "place_hit_at_1_b": float(hit_b),
        "hamming_scan_bound_ms": scan_bound_ms,
        "binary_x_bound": stage_binary["median_ms"] / scan_bound_ms,
        "c_ivf_ms": c["median_ms"],
        "c_ivf_recall_at_100": ivf_recall,
        "c_ivf_recall_at_10": ivf_recall10,
        "c_ivf_place_hit_at_1": hit_ivf,
        "ivf_build_s": ivf_build_s,
        "open_ms": open_ms,
        "build_s": build_s,
        "bytes_per_entry": bytes_entry,
        "float_fp32_ram_bytes_per_entry": DIM * 4,
    }
    print(
        f"  {n:>9,} entries: (a) {row['a_binary_float_ms']:.2f} ms, (b) {row['b_float_exhaustive_ms']:.2f} ms "
        f"-> {row['b_over_a']:.1f}x; binary stage {row['binary_x_bound']:.2f}x bound; open {open_ms:.1f} ms; "
        f"IVF {row['c_ivf_ms']:.2f} ms recall {ivf_recall:.3f}",
        flush=True,
    )
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

    peak_gflops = measure_peak_gflops()["peak_gflops"]
    print(f"  measured fp32 matmul peak: {peak_gflops:.0f} GFLOP/s", flush=True)
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
        for k, half in variants:
            r = Retriever(db, RetrievalConfig(stages=["binary", "float", "local"], k=100, local_k=k, local_half=half))
            timing = median_ms(lambda r=r, q=q: r.search(q), repeats=reps, warmup=1)
            local_ms = np.median([r.search(q).timings_ms["local"] for _ in range(reps)])
            tracemalloc.start()
            result = r.search(q)
            peak_bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            counts = result.local_matches[np.argsort(result.rows)][result.local_matches[np.argsort(result.rows)] >= 0]
            stored = db.info.stored.local_grid
            bound_ms = k * (stored[0] * stored[1]) * (grid[0] * grid[1]) * c * 2 / (peak_gflops * 1e9) * 1000
            extra = {"flop_bound_ms": bound_ms, "x_flop_bound": float(local_ms / bound_ms), "peak_bytes": peak_bytes}
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
        t = time.perf_counter()
        authors_counts(query_local[0], cands)
        ms = (time.perf_counter() - t) * 1000
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 k and 100 k entries, no local re-ranking")
    parser.add_argument("--queries", type=int, default=50, help="queries per measurement")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the maps (default: a temp dir)")
    args = parser.parse_args()

    mem = measure_memory_gbps()
    print(f"measured read bandwidth: {mem:.1f} GB/s (DESIGN.md: {DESIGN_MEM_GBPS} GB/s)")
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    tmp = Path(tempfile.mkdtemp(dir=args.workdir))
    try:
        rows = [bench_size(n, tmp, args.queries, mem) for n in sizes]
        local = [] if args.quick else bench_local(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    big = rows[-1]
    summary = {
        "largest_map": big["entries"],
        "a_over_b_speedup_at_largest": big["b_over_a"],
        "binary_stage_x_memory_bound_at_largest": big["binary_x_bound"],
        "open_ms_at_largest": big["open_ms"],
    }
    if local:

        def pick(storage, k):
            return next(r["local_ms"] for r in local if r["storage"] == storage and r["k"] == k)

        authors = "authors' dense fp32 (PyTorch)"
        summary["local_top20_speedup_vs_dense"] = pick(authors, 20) / pick("full fp16", 20)
        summary["local_top100_speedup_vs_dense"] = pick(authors, 100) / pick("full fp16", 100)
        summary["local_top20_x_flop_bound"] = next(r["x_flop_bound"] for r in local
                                                   if r["storage"] == "full fp16" and r["k"] == 20)
    path = save("retrieval", {"memory_gbps": mem, "rows": rows, "local": local, "summary": summary})
    print()
    print(
        table(
            rows,
            [
                ("entries", "entries", ","),
                ("a_binary_float_ms", "(a) bin+float ms", ".2f"),
                ("b_float_exhaustive_ms", "(b) float exh. ms", ".2f"),
                ("b_over_a", "(b)/(a)", ".1f"),
                ("binary_x_bound", "binary x bound", ".2f"),
                ("c_ivf_ms", "IVF ms", ".2f"),
                ("c_ivf_recall_at_100", "IVF R@100", ".3f"),
                ("c_ivf_recall_at_10", "IVF R@10", ".3f"),
                ("place_hit_at_1_a", "hit@1 (a)", ".2f"),
                ("place_hit_at_1_b", "hit@1 (b)", ".2f"),
                ("c_ivf_place_hit_at_1", "hit@1 IVF", ".2f"),
                ("open_ms", "open ms", ".1f"),
                ("bytes_per_entry", "B/entry", ","),
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
