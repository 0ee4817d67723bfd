"""``selavpr-ros slam-eval``: loop closures -> pose graph (GTSAM) -> trajectory error (evo)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Run the node's pipeline over a recorded session in mapping mode, feed its
odometry and accepted loop closures to a GTSAM pose graph (Huber kernel on
the loops), and score the odometry-only and the optimised trajectories
against the ground truth with evo (ATE RMSE after SE(3) alignment, RPE over
10 keyframes) - once with retrieval alone, once with the geometric stage.

By default it first records a simulated session (`selavpr-ros sim`, session
A: two laps around a block, the second from another lane); --bag takes any
bag with /camera/image_raw, /camera/camera_info, /camera/depth, /odom and a
ground-truth topic. Writes slam_eval.json and trajectories.png to --out.
"""


def cmd_slam_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.models.zoo import resolve_checkpoint
    from selavpr_ros.sim.world import camera_pose
    from selavpr_ros.slam.evaluate import RUN_PARAMS, plot_trajectories, result_dict, slam_eval, truth_from_bag

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.bag:
        bag = Path(args.bag)
    else:
        from selavpr_ros.cli import main as cli_main

        code = cli_main(["sim", "--out", str(out / "sim"), "--laps", str(args.laps), "--step", "1.0",
                         *(["--quiet"] if args.quiet else [])])
        if code:
            return code
        bag = out / "sim" / "session_a"
    truth, stamps = truth_from_bag(bag, args.ground_truth)
    extractor = open_extractor(resolve_checkpoint(args.checkpoint), device=args.device)
    mount = camera_pose(0.0, 0.0, 0.0, args.camera_height)
    results = [slam_eval(bag, truth, stamps, out, stages, extractor, mount, params, not args.quiet)
               for stages, params in RUN_PARAMS.items()]
    rows = [result_dict(r) for r in results]
    (out / "slam_eval.json").write_text(json.dumps({"bag": str(bag), "runs": rows}, indent=1))
    odometry = np.array([[p[0], p[1]] for p in _odometry(bag)])
    plot_trajectories(out / "trajectories.png", truth, odometry, results)
    print(f"{'run':28s} {'closures':>9s} {'false':>6s} {'metric':>7s} {'ATE m':>8s} {'RPE m':>8s}")
    print(f"{'odometry only':28s} {'':>9s} {'':>6s} {'':>7s} {rows[0]['ate_odometry_m']:8.3f} "
          f"{rows[0]['rpe_odometry_m']:8.3f}")
    for r in rows:
        print(f"{'+ loops, ' + r['stages']:28s} {r['closures']:9d} {r['false_closures']:6d} {r['metric_closures']:7d} "
              f"{r['ate_optimised_m']:8.3f} {r['rpe_optimised_m']:8.3f}")
    print(json.dumps({"json": str(out / "slam_eval.json"), "plot": str(out / "trajectories.png")}))
    return 0


def _odometry(bag: Path):
    from selavpr_ros.bags.poses import load_pose_track
    from selavpr_ros.bags.reader import open_bags

    with open_bags([bag]) as reader:
        return load_pose_track(reader, "/odom").positions


def register(sub: argparse._SubParsersAction) -> None:
    from selavpr_ros.cli import HelpFormatter

    p = sub.add_parser("slam-eval", help="loop closures into a GTSAM pose graph, trajectory error with evo",
                       description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--out", default="slam_eval", help="output folder")
    p.add_argument("--bag", help="recorded session (default: simulate one)")
    p.add_argument("--laps", type=float, default=2.0, help="laps of the simulated session")
    p.add_argument("--ground-truth", default="/ground_truth", help="ground-truth pose topic of the bag")
    p.add_argument("--camera-height", type=float, default=1.2, help="camera above the base (m), looking ahead")
    p.add_argument("--checkpoint", help="model (.ckpt or .onnx); default: the built-in demo model")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_slam_eval)
