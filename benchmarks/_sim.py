"""Simulated sessions as a user builds them, for the benchmarks that need an environment of their own:
the CLI's `sim`, `build-map --save-images` and `eval`, command by command."""

from __future__ import annotations

import json
from pathlib import Path

from selavpr_ros.cli import main as cli_main


def run(args: list[str]) -> None:
    code = cli_main(args)
    if code:
        raise SystemExit(f"selavpr-ros {' '.join(args)} failed ({code})")


def record(out: Path, laps: float = 2.0) -> Path:
    """`selavpr-ros sim`: session A (``laps`` laps) and session B (one lap, another lane and light)."""
    run(["sim", "--out", str(out), "--laps", str(laps), "--quiet"])
    return out


def posed_map(bag: Path, out: Path, poses: str = "/ground_truth") -> Path:
    """A map with saved images and the poses of ``poses``: evaluation data (or training data)."""
    run(["build-map", str(bag), "--image-topic", "/camera/image_raw", "--out", str(out), "--pose-topic", poses,
         "--save-images", "--min-interval", "0", "--quiet"])
    return out


def evaluate(database: Path, queries: Path, checkpoint: str | None, out: Path, tolerance_m: float) -> dict:
    """`selavpr-ros eval` of one map's images against another's (float re-rank): recall and PR figures."""
    run(["eval", "--dataset", str(database), "--query-map", str(queries), "--threshold", f"{tolerance_m:g}m",
         "--stages", "binary,float", "--out", str(out), "--quiet",
         *(["--checkpoint", checkpoint] if checkpoint else [])])
    report = json.loads((out / "report.json").read_text())
    pr = report["precision_recall"]["+ float re-rank"]
    recall = report["recall"]["+ float re-rank"]
    return {"R@1": recall["1"], "R@5": recall["5"], "R@20": recall["20"], "auc_pr": pr["auc_pr"],
            "recall_at_100_precision": 100 * pr["recall_at_100_precision"],
            "threshold_at_100_precision": pr["threshold_at_100_precision"], "queries": report["queries"],
            "database": report["database_images"], "model": report["model_id"]}
