"""The SLAM proof as numbers: simulated robot, selavpr_ros pose-graph edges, GTSAM, evo.

Session A of `selavpr-ros sim` (two laps around a 40 x 30 m block, one frame
per metre, 320 x 240 px, 90 deg; from the second lap on another lane and a
wobbling heading; odometry with 2 % translation noise) and then session B
(robot 1: one lap in the other lane under other light) go through the node's
pipeline in mapping mode into one map, with the built-in model, retrieval
alone and with the geometric stage (depth from the simulator: metric
closures). The published pose-graph edges and each session's odometry go
into a GTSAM pose graph (graduated non-convexity with a truncated least-squares
loss on loop edges; B placed by its best-supported edge into A), and once more
with a Huber kernel instead, for comparison; evo scores ATE (SE(3)-aligned RMSE, per session and for A and B
under one alignment) and RPE (10 keyframes) against the ground truth. Also
the simulator's render time per 320 x 240 frame. Writes
benchmarks/results/slam.json and slam_trajectories.png.

    python benchmarks/slam.py
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from _common import RESULTS, median_ms, save

from selavpr_ros.cli import main as cli_main
from selavpr_ros.sim.world import block_world, camera_pose
from selavpr_ros.types import CameraModel


def main() -> None:
    world = block_world()
    camera = CameraModel.nominal(320, 240, 90.0)
    render = median_ms(lambda: world.render(camera, camera_pose(-3.0, 8.0, np.pi / 2, 1.2)), repeats=20)
    results = {}
    for robust in ("gnc", "huber"):
        with tempfile.TemporaryDirectory() as tmp:
            code = cli_main(["slam-eval", "--out", tmp, "--laps", "2", "--quiet", "--robust", robust])
            if code:
                raise SystemExit(code)
            results[robust] = json.loads((Path(tmp) / "slam_eval.json").read_text())["runs"]
            if robust == "gnc":
                shutil.copy(Path(tmp) / "trajectories.png", RESULTS / "slam_trajectories.png")
    for r in results["gnc"]:
        print(r)
    payload = {"runs": results["gnc"], "huber_runs": results["huber"], "robust": "gnc",
               "render_ms_320x240": render, "laps": 2, "step_m": 1.0}
    print(f"saved {save('slam', payload)}")


if __name__ == "__main__":
    main()
