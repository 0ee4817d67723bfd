"""``selavpr-ros slam-eval``: published pose-graph edges -> GTSAM -> trajectory error (evo)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selavpr_ros.inference.base import DEVICES

DESCRIPTION = """\
Run the node's pipeline over recorded sessions in mapping mode, one map for
all: session A, then session B, which also relocalises in A's keyframes.
The back-end takes the pose-graph edges the node publishes
(selavpr_ros/PoseGraphEdge: keys, robot ids, relative pose of the robot
frames, covariance in GTSAM order) as they are, adds each session's odometry
chain, places B by its first edge into A, optimises with GTSAM (graduated
non-convexity with a truncated least-squares loss on the loop edges, as
Kimera-RPGO does; --robust huber for a Huber kernel) and scores every trajectory against the ground truth with evo
(ATE RMSE after SE(3) alignment, RPE over 10 keyframes): once with retrieval
alone ("same place" edges), once with the geometric stage (verified relative
poses, metric with depth).

By default it first records simulated sessions (`selavpr-ros sim`): A drives
--laps laps around a block, the later laps in another lane; B drives one lap
in that lane under other light, as robot 1. --bag / --bag-b take recorded
sessions with /camera/image_raw, /camera/camera_info, /camera/depth, /odom,
/tf_static (the camera's mount on the odometry's child frame) and a ground-
truth topic. Writes slam_eval.json and trajectories.png to --out.
"""


def cmd_slam_eval(args: argparse.Namespace) -> int:
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.models.zoo import resolve_checkpoint
    from selavpr_ros.slam.evaluate import (
        RUN_PARAMS,
        odometry_from_bag,
        plot_trajectories,
        result_dict,
        slam_eval,
        truth_from_bag,
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bag_a, bag_b = (Path(args.bag) if args.bag else None), (Path(args.bag_b) if args.bag_b else None)
    if bag_a is None:
        from selavpr_ros.cli import main as cli_main

        code = cli_main(["sim", "--out", str(out / "sim"), "--laps", str(args.laps), "--step", "1.0",
                         *(["--quiet"] if args.quiet else [])])
        if code:
            return code
        bag_a, bag_b = out / "sim" / "session_a", (None if args.no_session_b else out / "sim" / "session_b")
    sessions = []
    for bag, name, robot in ((bag_a, "a", 0), (bag_b, "b", args.robot_b)):
        if bag is not None:
            truth, stamps = truth_from_bag(bag, args.ground_truth)
            sessions.append((bag, name, robot, truth, stamps))
    extractor = open_extractor(resolve_checkpoint(args.checkpoint), device=args.device)
    runs = {stages: dict(params) for stages, params in RUN_PARAMS.items()}
    if args.min_score is not None:
        runs["binary,float"]["loop_closure.min_score"] = args.min_score
    results = [slam_eval(sessions, out, stages, extractor, params, args.base_frame, not args.quiet, args.robust)
               for stages, params in runs.items()]
    rows = [result_dict(r) for r in results]
    (out / "slam_eval.json").write_text(json.dumps({"bags": {s[1]: str(s[0]) for s in sessions}, "runs": rows},
                                                   indent=1))
    plot_trajectories(out / "trajectories.png", {s[1]: s[3] for s in sessions},
                      {s[1]: odometry_from_bag(s[0]) for s in sessions}, results)
    print(format_table(rows))
    print(json.dumps({"json": str(out / "slam_eval.json"), "plot": str(out / "trajectories.png")}))
    return 0


def format_table(rows: list[dict]) -> str:
    """The slam-eval table: per session, odometry only and each run's optimised trajectory."""
    lines = [f"{'':34s} {'closures':>8s} {'to A':>5s} {'false':>6s} {'metric':>7s} {'ATE m':>8s} {'RPE m':>8s}"]
    for name, first in rows[0]["sessions"].items():
        lines.append(f"session {name} (robot {first['robot_id']}, {first['keyframes']} keyframes)")
        lines.append(f"  {'odometry only':32s} {'':>8s} {'':>5s} {'':>6s} {'':>7s} {first['ate_odometry_m']:8.3f} "
                     f"{first['rpe_odometry_m']:8.3f}")
        for r in rows:
            s = r["sessions"][name]
            ate = f"{s['ate_optimised_m']:8.3f}" if "ate_optimised_m" in s else f"{'not placed':>8s}"
            rpe = f"{s['rpe_optimised_m']:8.3f}" if "rpe_optimised_m" in s else ""
            lines.append(f"  {'+ loops, ' + r['stages']:32s} {s['closures']:8d} {s['inter_session_closures']:5d} "
                         f"{s['false_closures']:6d} {s['metric_closures']:7d} {ate} {rpe}")
    if len(rows[0]["sessions"]) > 1:
        lines.append("all sessions under one alignment (B placed in A's frame by its edges):")
        for r in rows:
            joint = r["joint_ate_optimised_m"]
            text = f"{joint:8.3f}" if joint is not None else "session B not relocalised"
            lines.append(f"  {'+ loops, ' + r['stages']:32s} {'':>8s} {'':>5s} {'':>6s} {'':>7s} {text}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    from selavpr_ros.cli import HelpFormatter
    from selavpr_ros.slam.pose_graph import ROBUST

    p = sub.add_parser("slam-eval", help="published pose-graph edges into GTSAM, trajectory error with evo",
                       description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--out", default="slam_eval", help="output folder")
    p.add_argument("--bag", help="recorded session A (default: simulate sessions A and B)")
    p.add_argument("--bag-b", help="recorded session B, relocalised against A's map (optional)")
    p.add_argument("--no-session-b", action="store_true", help="simulate and evaluate session A only")
    p.add_argument("--robot-b", type=int, default=1, help="robot id of session B (the same as A's, 0, for a later "
                   "visit of one robot)")
    p.add_argument("--laps", type=float, default=2.0, help="laps of the simulated session A")
    p.add_argument("--ground-truth", default="/ground_truth", help="ground-truth pose topic of the bags")
    p.add_argument("--base-frame", default="", help="robot frame of the graph's poses (default: the child_frame_id "
                   "of /odom); the camera's mount on it comes from /tf_static")
    p.add_argument("--checkpoint", help="model (.ckpt or .onnx); default: the built-in demo model")
    p.add_argument("--min-score", type=float, help="loop_closure.min_score of the retrieval-only run (default 0.3: "
                   "permissive, to show what retrieval alone accepts); `eval --target-precision 1.0` on "
                   "held-out data gives a model's own")
    p.add_argument("--robust", default="gnc", choices=ROBUST,
                   help="back-end treatment of loop edges: gnc (truncated least squares by graduated "
                        "non-convexity: a wrong edge ends with weight 0) or huber (bounded pull)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_slam_eval)
