"""Fine-tuning on a robot's own bags: graded-similarity training on simulated session A, tested on session B.

The user's path, command by command, in a temporary folder:

1. ``selavpr-ros sim`` records session A (two laps around the block, the second in another lane) and
   session B (one lap in that lane, other light: the test session). A third session of the same
   world (another lane offset, heading wobble and light; never used for testing) is recorded for
   validation.
2. ``selavpr-ros build-map --save-images --pose-topic /odom`` turns A into training data: the labels
   are the field-of-view overlap of 2-D sectors (90 deg, 20 m) between the robot's *odometry* poses,
   drift and all: what a robot has without ground truth. Evaluation maps use ``/ground_truth``.
3. ``selavpr-train`` fine-tunes the built-in model from its checkpoint (``init_checkpoint``) with the
   graded regression loss; model selection on the validation session only.
4. ``selavpr-ros eval`` (B's queries against A, correct within 5 m): Recall@N, AUC-PR and recall at
   100 % precision, for the built-in and the fine-tuned model; the retrieval threshold for the
   retrieval-only SLAM run is each model's own 100 %-precision threshold on the *validation* session.
5. ``selavpr-ros slam-eval`` with each model on the same bags: trajectory errors (ATE) with retrieval
   alone and with the geometric stage.

Session A's own loop closures are in-sample for the fine-tuned model (it trained on A's images); the
figures that measure generalisation are session B's and the validation-free test recalls.

    python benchmarks/finetune_sim.py        # about 6 minutes on 2 cores
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from pathlib import Path

import yaml
from _common import save
from _sim import evaluate, posed_map, record, run

from selavpr_ros.cli.train import main as train_main

TOLERANCE_M = 5.0
TRAIN = {
    "loss": {"name": "graded_regression", "fov_aperture_deg": 90.0, "fov_radius_m": 20.0, "pairs_per_batch": 64},
    # the built-in recipe's mild geometric jitter, with photometric jitter: the robot will see other light
    "augment": {"enabled": True, "shift": 0.03, "scale": 0.05, "brightness": 0.3, "contrast": 0.3, "grayscale": 0.3},
    "cache": {"enabled": True, "views": 4},
    "epochs": 40,
    "lr": 0.001,
    "schedule": "onecycle",
    "patience": 4,
    "seed": 0,
}


def validation_session(out: Path) -> Path:
    """A third session of session A's world: another lane offset, wobble, light and odometry noise."""
    from selavpr_ros.sim.route import loop_route
    from selavpr_ros.sim.session import write_session
    from selavpr_ros.sim.world import block_world
    from selavpr_ros.types import CameraModel

    route = loop_route(40.0, 30.0, laps=1.0, step=1.0, lateral_shift=0.4, heading_wobble_deg=4.0, seed=3)
    world = block_world(seed=0).with_appearance((0.9, 1.0, 1.15), 0.85)
    camera = CameraModel.nominal(320, 240, 90.0, frame_id="camera_optical")
    return write_session(out, world, route, camera, 1_700_000_000 * 10**9 + 2 * 86_400 * 10**9, seed=3,
                         progress=False).bag


def slam(sim: Path, checkpoint: str | None, min_score: float, out: Path) -> dict:
    run(["slam-eval", "--bag", str(sim / "session_a"), "--bag-b", str(sim / "session_b"), "--out", str(out),
         "--min-score", f"{min_score:.6f}", "--quiet", *(["--checkpoint", checkpoint] if checkpoint else [])])
    return json.loads((out / "slam_eval.json").read_text())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sim = work / "sim"
        record(sim, laps=2.0)
        val_bag = validation_session(sim / "session_val")
        posed_map(sim / "session_a", work / "train_map", "/odom")
        for name, bag in (("a", sim / "session_a"), ("b", sim / "session_b"), ("val", val_bag)):
            posed_map(bag, work / f"{name}_truth")
        config = {"data": {"kind": "map", "root": str(work / "train_map"), "val_root": str(work / "val_truth"),
                           "eval_radius_m": TOLERANCE_M},
                  "init_checkpoint": str(Path(__file__).resolve().parents[1] / "selavpr_ros/data/nordland_demo.ckpt"),
                  "output": str(work / "run"), **TRAIN}
        (work / "finetune.yaml").write_text(yaml.safe_dump(config))
        t0 = time.perf_counter()
        if train_main([str(work / "finetune.yaml"), "--no-progress"]):
            raise SystemExit("selavpr-train failed")
        train_s = time.perf_counter() - t0
        rows = []
        for model, checkpoint in (("built-in", None), ("fine-tuned on A", str(work / "run" / "best.ckpt"))):
            val = evaluate(work / "a_truth", work / "val_truth", checkpoint, work / f"val_{len(rows)}", TOLERANCE_M)
            test = evaluate(work / "a_truth", work / "b_truth", checkpoint, work / f"test_{len(rows)}", TOLERANCE_M)
            runs = slam(sim, checkpoint, val["threshold_at_100_precision"], work / f"slam_{len(rows)}")
            rows.append({"model": model, "validation": val, "test": test, "min_score_from_validation":
                         val["threshold_at_100_precision"], "slam": runs["runs"]})
            print(model, "test", test, flush=True)
            for r in runs["runs"]:
                print("  ", r["stages"], {k: {m: round(v, 3) if isinstance(v, float) else v for m, v in s.items()}
                                         for k, s in r["sessions"].items()}, "joint", r["joint_ate_optimised_m"])
        with open(work / "run" / "log.csv") as f:
            history = list(csv.DictReader(f))
    payload = {"rows": rows, "train_minutes": train_s / 60, "training": TRAIN, "tolerance_m": TOLERANCE_M,
               "data": "sim session A (2 laps, 334 frames) for training with /odom poses; validation: a third "
                       "session of the same world (167 frames); test: session B (170 frames) against A",
               "history": history}
    print(f"saved {save('finetune_sim', payload)}")


if __name__ == "__main__":
    main()
