"""Run every benchmark, then write one Markdown summary and the README's performance section.

    python benchmarks/run_all.py                 # run all (about 20 minutes on 2 cores), then summarise
    python benchmarks/run_all.py --only train    # run some, summarise all results present
    python benchmarks/run_all.py --summary-only  # just regenerate the summary from benchmarks/results/*.json

The summary goes to ``benchmarks/results/SUMMARY.md`` and replaces the text
between the ``benchmarks:start`` / ``benchmarks:end`` markers of README.md, so
the README's numbers are generated from the JSON files, never typed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable

from _common import RESULTS, ROOT, table

BENCHMARKS = ("extract", "retrieval", "cpu_share", "offline", "build_map_scale", "train", "train_nordland",
              "train_ablation", "node_load", "verification", "slam", "finetune_sim")
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _extract(d: dict) -> str:
    rows = [r for r in d["rows"] if r["batch"] == 1]
    return table(rows, [("model", "model", ""), ("input", "input", ""), ("backend", "backend", ""),
                        ("ms_per_frame", "ms / frame", ".1f"), ("x_bound", "x FLOP bound", ".2f")])


def _extract_authors(d: dict) -> str:
    rows = [{**r, "spread": f"{r['p10_ms']:.0f}-{r['p90_ms']:.0f}"} for r in d["rows"]]
    return (f"{d['model']}, {d['input']} x {d['input']}, batch {d['batch']}, one call of each path in turn "
            f"({d['repeats']} rounds, same input, {d['machine']['torch_threads']} threads); FLOP bound: "
            f"{d['gflop_per_frame']:.1f} GFLOP at this machine's measured fp32 matmul peak "
            f"({d.get('peak_gflops', d['peak']['peak_gflops']):.0f} GFLOP/s"
            + (", median of a probe in every round" if "peak_gflops_per_round" in d else "")
            + f") = {d['bound_ms']:.0f} ms; outputs against the authors' "
            f"({d['code_bits']}-bit codes):\n\n"
            + table(rows, [("path", "path", ""), ("median_ms", "median ms", ".1f"), ("spread", "p10-p90 ms", ""),
                           ("x_authors", "x faster than the authors'", ".2f"), ("x_flop_bound", "x FLOP bound", ".2f"),
                           ("float_max_abs_vs_authors", "float max abs diff", ".1e"),
                           ("code_bits_differing", "code bits differing", "")])
            + _fp32_profile(d))


def _fp32_profile(d: dict) -> str:
    prof = d.get("onnx_fp32_profile")
    if not prof:
        return ""
    ops = ", ".join(f"{k} {v:.0f}" for k, v in list(prof["by_op_ms"].items())[:6])
    return (f"\n\nONNX Runtime fp32 by operator (its profiler, {prof['runs']} frames): matrix products (MatMul, "
            f"Gemm, Conv) take {prof['matrix_products_ms']:.0f} ms of {prof['total_ms']:.0f} ms ({ops} ms); "
            f"1.5x the authors' speed would need {d['ms_for_1_5x_authors']:.0f} ms for the whole frame.")


def _retrieval(d: dict) -> str:
    rows = []
    for r in d["rows"]:
        flat, ivf = r["flat"], r["ivf"]
        rows.append({"entries": r["entries"], "flat_p50": flat["binary_float"]["p50_ms"],
                     "flat_p95": flat["binary_float"]["p95_ms"], "flat_own": flat["rss_mb"]["anon"],
                     "probes": f"{ivf['nprobe']} of {ivf['nlist']}", "ivf_p50": ivf["binary_float"]["p50_ms"],
                     "ivf_p95": ivf["binary_float"]["p95_ms"], "ivf_bin": ivf["binary_stage"]["p50_ms"],
                     "recall": ivf["recall_at_100"], "ivf_own": ivf["rss_mb"]["anon"],
                     "ivf_file": ivf["rss_mb"]["file"], "train": ivf["first_open_s"], "reopen": ivf["reopen_s"],
                     "hit_flat": flat["place_hit_at_1"], "hit_ivf": ivf["place_hit_at_1"],
                     "float_exh": flat.get("float_exhaustive", {}).get("p50_ms"), "bytes": r["bytes_per_entry"]})
    codes = d.get("codes", {}).get("matched", {})
    real, gen = codes.get("real", {}), codes.get("generated", {})
    out = ("Per query, 200 queries (new views of places in the map), each index served by a fresh process; "
           "entries made like the built-in model's codes and floats (`benchmarks/_scale_codes.py`; on held-out "
           "real frames the nearest other place lies at a median "
           f"{real.get('nn_other_place_hamming', {}).get('p50', float('nan')):.0f} bits, generated "
           f"{gen.get('nn_other_place_hamming', {}).get('p50', float('nan')):.0f}). Recall@100: the IVF's binary "
           "top-100 against the exhaustive one; own MB: the process's own memory (RssAnon); map pages MB: map "
           "file pages it has mapped (page cache, RssFile):\n\n" + table(rows, [
               ("entries", "keyframes", ","), ("flat_p50", "flat p50 ms", ".2f"), ("flat_p95", "flat p95 ms", ".2f"),
               ("flat_own", "flat own MB", ".0f"), ("probes", "IVF lists scanned", ""),
               ("ivf_p50", "IVF p50 ms", ".2f"), ("ivf_p95", "IVF p95 ms", ".2f"),
               ("ivf_bin", "IVF binary stage p50 ms", ".2f"), ("recall", "IVF recall@100", ".3f"),
               ("ivf_own", "IVF own MB", ".0f"), ("ivf_file", "IVF map pages MB", ".0f"),
               ("train", "IVF train s", ".1f"), ("reopen", "reopen s", ".2f"), ("hit_flat", "place@1 flat", ".3f"),
               ("hit_ivf", "place@1 IVF", ".3f"), ("float_exh", "exhaustive float ms", ".2f"),
               ("bytes", "bytes / entry", ",")]))
    big = d["rows"][-1]
    sweep = big["ivf"].get("nprobe_sweep") or []
    if sweep:
        out += (f"\n\nIVF binary stage at {big['entries']:,} keyframes ({big['ivf']['nlist']} lists) by lists "
                "scanned (exhaustive: " f"{big['flat']['binary_stage']['p50_ms']:.1f} ms):\n\n"
                + table(sweep, [("nprobe", "lists scanned", ""), ("recall_at_100", "recall@100", ".3f"),
                                ("p50_ms", "p50 ms", ".2f"), ("p95_ms", "p95 ms", ".2f")]))
    local = d.get("local") or []
    if local:
        out += "\n\nLocal re-rank (per query; x FLOP bound: against K x 3721 x 3721 x 128 multiply-adds at this " \
               "machine's fp32 matmul peak, probed just before each timed re-rank, median of the pairs; peak: " \
               "memory the search allocated" + (f"; `--local-only` run of {d['local_date']}" if d.get("local_date")
                                                 else "") + "):\n\n" + table(
                   local, [("storage", "storage", ""), ("k", "top-k", ""), ("local_ms", "ms", ".0f"),
                           ("x_flop_bound", "x FLOP bound", ".2f"), ("peak_bytes", "peak bytes", ","),
                           ("bytes_per_entry", "bytes / entry", ",")])
    return out


def _build_map_scale(d: dict) -> str:
    return (f"{d['bags']} bags x {d['frames_per_bag']} bundled Nordland frames, built-in model, gate off, "
            f"{d['threads']} CPU threads in all; Ray: one node on this machine, in a private network namespace; "
            "cold: worker start-up and model loading included:\n\n"
            + table(d["rows"], [("executor", "executor", ""), ("run", "run", ""), ("images_per_s", "images/s", ".0f"),
                                ("vs_serial", "x serial (warm)", ".2f"), ("same_map_as_serial", "same map", "")]))


def _cpu_share(d: dict) -> str:
    return (f"Each workload in a fresh process, idle and next to {d['load']}; medians after warm-up:\n\n"
            + table(d["rows"], [("setting", "threads", ""), ("workload", "workload", ""),
                                ("idle_ms", "idle ms", ".2f"), ("loaded_ms", "loaded ms", ".2f"),
                                ("slowdown", "loaded / idle", ".2f")]))


def _offline(d: dict) -> str:
    build = d["build_map"]
    return (f"build-map, {build[0]['images']} bundled Nordland frames in one bag, built-in model, gate off "
            f"({d['threads']} threads; best of two runs):\n\n"
            + table(build, [("batch", "batch", ""), ("images_per_s", "images/s", ".1f"),
                            ("x_batch_1", "x batch 1", ".2f"), ("code_bits_differing", "code bits != batch 1", "")])
            + "\n\n`selavpr-ros replay` against a 200-entry map, generated 160 x 120 frames, a fresh process "
              "each (peak resident memory):\n\n"
            + table(d["replay"], [("frames", "frames", ""), ("bag_mib", "bag MiB", ".1f"),
                                  ("peak_rss_mib", "peak RSS MiB", ".0f"), ("seconds", "seconds", ".1f")]))


def _train(d: dict) -> str:
    return (f"{d['arch']}, {d['size']}x{d['size']}, batch {d['batch']}:\n\n"
            + table(d["rows"], [("variant", "variant", ""), ("trainable_params", "trainable", ","),
                                ("step_ms", "ms / step", ".0f"), ("peak_rss_mib", "peak RSS MiB", ".0f"),
                                ("overhead_mib", "step overhead MiB", ".0f")]))


def _train_nordland(d: dict) -> str:
    columns = [("model", "model", ""), ("R@1", "R@1", ".1f"), ("R@5", "R@5", ".1f"), ("R@10", "R@10", ".1f"),
               ("binary R@1", "codes R@1", ".1f")]
    spans = d["spans"]
    text = (f"Test span {spans['test']} of the route, evaluated once: {d['queries']} winter queries against "
            f"{d['database']} summer images, correct within {d['threshold']} (trained on {spans['train']}, best "
            f"epoch chosen on {spans['validation']}):\n\n" + table(d["rows"], columns))
    unseen = d["unseen_environment"]
    text += (f"\n\nAn environment it never saw, {unseen['eval_set']} ({unseen['queries']} queries, "
             f"{unseen['database']} keyframes), correct within {unseen['threshold']}:\n\n"
             + table(unseen["rows"], columns))
    if d.get("training"):
        text += f"\n\nTraining took {d['training']['minutes']:.1f} min on {d['machine']['cpus']} cores."
    return text


def _train_ablation(d: dict) -> str:
    spans = d["spans"]
    return (f"Each row adds one change to the row above and is a full training run (seed 0, best epoch on "
            f"validation); validation span {spans['validation']}, {d['queries']}, correct within "
            f"{d['threshold']}; trained on {spans['train']}:\n\n"
            + table(d["rows"], [("change", "change", ""), ("val R@1", "val R@1", ".1f"), ("val R@5", "val R@5", ".1f"),
                                ("val codes R@1", "codes R@1", ".1f"), ("best_epoch", "best epoch", ""),
                                ("minutes", "minutes", ".1f"), ("checkpoint_mb", "MB", ".1f")]))


def _node_load(d: dict) -> str:
    runs = d.get("runs") or [{"transport": "dds", **d.get("summary", d)}]
    names = [r["transport"] for r in runs]
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    label = {"dds": "ROS-less (CycloneDDS)", "rclpy": "rclpy node (rmw_cyclonedds_cpp)"}
    rows = [{"key": k, **{n: r.get(k) for n, r in zip(names, runs)}} for k in keys]
    return table(rows, [("key", "measure", "")] + [(n, label.get(n, n), ".4g") for n in names])


def _verification(d: dict) -> str:
    text = table(d["rows"], [("dataset", "data", ""), ("database", "map", ""), ("queries", "queries", ""),
                             ("without_match", "no true match", ""), ("stage", "stage", ""),
                             ("detector", "keypoints", ""), ("auc_pr", "AUC-PR", ".3f"),
                             ("recall_at_100p", "recall @ 100 % precision", ".1f"), ("R@1", "R@1", ".1f"),
                             ("ms_per_candidate", "ms / candidate", ".1f"),
                             ("keypoint_bytes", "keypoint B / keyframe", ",.0f")])
    rot = d["rotated_views_rotation_error"]
    text += "\n\nRotated views, accepted closures: " + "; ".join(
        f"{k.upper()} {v['accepted_correct']} correct, {v['accepted_false']} false, rotation error median "
        f"{v['median_deg']:.3f} deg, max {v['max_deg']:.2f} deg" for k, v in rot.items())
    s = d["stereo"]
    text += ("\n\nMiddlebury stereo (193 mm baseline): " + "; ".join(
        f"{det.upper()} essential: direction error {s[f'{det}_essential']['direction_error_deg']:.2f} deg, "
        f"rotation {s[f'{det}_essential']['rotation_error_deg']:.2f} deg; PnP: translation error "
        f"{s[f'{det}_pnp']['translation_error_mm']:.1f} mm" for det in ("orb", "sift")))
    return text + (f"\n\nBuilt-in model, {d['candidates_per_query']} candidates verified per query, "
                   f"min_inliers {d['defaults']['min_inliers']}, min_inlier_ratio {d['defaults']['min_inlier_ratio']}.")


def _slam_rows(runs: list[dict], label: str = "") -> list[dict]:
    """Per session: odometry only, then each run's optimised trajectory; then A and B under one alignment."""
    rows = []
    for name, first in runs[0]["sessions"].items():
        rows.append({"run": f"{label}session {name} (robot {first['robot_id']}, {first['keyframes']} keyframes): "
                            "odometry only", "ate": first["ate_odometry_m"], "rpe": first["rpe_odometry_m"]})
        for r in runs:
            s = r["sessions"][name]
            rows.append({"run": f"{label}session {name}: + edges, {r['stages']}", "closures": s["closures"],
                         "to_a": s["inter_session_closures"], "false": s["false_closures"],
                         "metric": s["metric_closures"], "ate": s.get("ate_optimised_m"),
                         "rpe": s.get("rpe_optimised_m"), "error2": s.get("edge_squared_error_median")})
    if len(runs[0]["sessions"]) > 1:
        rows += [{"run": f"{label}A and B, one alignment: + edges, {r['stages']}", "ate": r["joint_ate_optimised_m"]}
                 for r in runs]
    return rows


SLAM_COLUMNS = [("run", "trajectory", ""), ("closures", "accepted closures", ""), ("to_a", "into another session", ""),
                ("false", "false", ""), ("metric", "metric", ""), ("ate", "ATE RMSE m", ".3f"), ("rpe", "RPE m", ".3f"),
                ("error2", "edge error² median", ".1f")]


def _slam(d: dict) -> str:
    return (f"Simulated robot, session A: {d['laps']} laps around a 40 x 30 m block; session B: robot 1, one lap "
            "in the other lane under other light, relocalised in A's map (render "
            f"{d['render_ms_320x240']['median_ms']:.0f} ms per 320 x 240 frame). False: joins places > 10 m apart, "
            "or its relative pose is off by > 10 deg or (metric) > 1 m. Edge error²: the squared Mahalanobis "
            "distance of a verified edge from the truth under its own covariance (median 5.35 if the covariances "
            "were exact):\n\n"
            + table(_slam_rows(d["runs"]), SLAM_COLUMNS)
            + _huber(d)
            + "\n\n![trajectories](benchmarks/results/slam_trajectories.png)")


def _huber(d: dict) -> str:
    """The same edges under a Huber kernel instead of GNC (the back-end's choice, measured)."""
    if not d.get("huber_runs"):
        return ""
    parts = []
    for run in d["huber_runs"]:
        ates = ", ".join(f"{name.upper()} {s['ate_optimised_m']:.3f} m" for name, s in run["sessions"].items()
                         if "ate_optimised_m" in s)
        joint = run.get("joint_ate_optimised_m")
        parts.append(f"{run['stages']}: {ates}" + (f", one alignment {joint:.3f} m" if joint is not None else ""))
    return ("\n\nThe same published edges under a Huber kernel (Levenberg-Marquardt) instead of GNC, ATE: "
            + "; ".join(parts) + ".")


def _finetune_sim(d: dict) -> str:
    rows = [{"model": r["model"], "split": split, **r[key]} for r in d["rows"]
            for split, key in (("validation", "validation"), ("test: B vs A", "test"))]
    text = (f"Queries against session A's {d['rows'][0]['test']['database']} keyframes, correct within "
            f"{d['tolerance_m']:g} m, float re-rank; fine-tuning took {d['train_minutes']:.1f} min:\n\n"
            + table(rows, [("model", "model", ""), ("split", "queries", ""), ("R@1", "R@1", ".1f"),
                           ("R@5", "R@5", ".1f"), ("auc_pr", "AUC-PR", ".3f"),
                           ("recall_at_100_precision", "recall @ 100 % precision", ".1f")]))
    slam_rows = [row for r in d["rows"] for row in _slam_rows(r["slam"], f"{r['model']}: ")]
    return text + ("\n\nslam-eval on the same bags (retrieval-only runs at each model's 100 %-precision "
                   "threshold on the validation session):\n\n" + table(slam_rows, SLAM_COLUMNS))


SUMMARIES: dict[str, tuple[str, Callable[[dict], str]]] = {
    "extract": ("Descriptor extraction (random weights, ms per frame, batch 1)", _extract),
    "extract_authors": ("Extraction against the authors' SelaVPR++ code, side by side", _extract_authors),
    "retrieval": ("Map search per query", _retrieval),
    "cpu_share": ("A shared robot CPU: idle vs a competing load, pools as wide as the machine vs the node's budget",
                  _cpu_share),
    "offline": ("Offline work: build-map batches, replay memory against bag length", _offline),
    "build_map_scale": ("Map building: serial against Ray workers", _build_map_scale),
    "train": ("Training step: in-block vs side adapters vs trunk cache", _train),
    "train_nordland": ("The built-in model: Nordland test span and an unseen environment", _train_nordland),
    "train_ablation": ("The built-in model's recipe, one change at a time (validation span)", _train_ablation),
    "node_load": ("Node under a 30 Hz camera stream with slow inference, ROS-less and rclpy", _node_load),
    "verification": ("Loop-closure decisions with and without geometric verification", _verification),
    "slam": ("SLAM end to end: published pose-graph edges in GTSAM, trajectory error with evo", _slam),
    "finetune_sim": ("Fine-tuning on a robot's own bags (graded similarity from odometry poses)", _finetune_sim),
}


COMMANDS = {"extract_authors": "benchmarks/extract.py --authors SelaVPRplusplus/"}  # results of another script


def summary() -> str:
    parts = []
    for name, (title, fn) in SUMMARIES.items():
        d = _load(name)
        if d is None:
            continue
        cpu = d.get("machine", {}).get("cpu", "")
        command = COMMANDS.get(name, f"benchmarks/{name}.py")
        parts.append(f"### {title}\n\n{fn(d)}\n\n<sub>`{command}`, {d.get('date', '')}, {cpu}</sub>")
    return "\n\n".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", choices=BENCHMARKS, help="run only these")
    p.add_argument("--summary-only", action="store_true", help="do not run anything, summarise existing results")
    args = p.parse_args()
    failed = []
    if not args.summary_only:
        for name in args.only or BENCHMARKS:
            t = time.perf_counter()
            print(f"== {name}", flush=True)
            proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py")])
            print(f"== {name}: exit {proc.returncode} in {time.perf_counter() - t:.0f} s", flush=True)
            if proc.returncode:
                failed.append(name)
    text = summary()
    (RESULTS / "SUMMARY.md").write_text("# Benchmark summary\n\n" + text + "\n")
    readme = ROOT / "README.md"
    content = readme.read_text()
    if START in content and END in content:
        head, rest = content.split(START, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    print(text)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
