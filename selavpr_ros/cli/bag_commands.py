"""``selavpr-ros build-map`` and ``selavpr-ros replay``: the node's work on recorded bags."""

from __future__ import annotations

import argparse
from pathlib import Path

from selavpr_ros.cli import add_storage_arguments, json_text, storage_from_args
from selavpr_ros.inference.base import DEVICES

BUILD_DESCRIPTION = """\
Build (or extend) a map from bags: rosbag2 folders (sqlite3 or mcap) and ROS 1
.bag files. Each bag becomes one session; images pass the keyframe gate and
their descriptors, stamps and (with --pose-topic) interpolated poses are
stored. Re-running the same command resumes where it stopped.

Poses: nav_msgs/Odometry, geometry_msgs/PoseStamped, PoseWithCovarianceStamped,
sensor_msgs/NavSatFix (local east-north-up metres) or /tf (with --base-frame
and --map-frame).
"""

REPLAY_DESCRIPTION = """\
Run the loop-closure engine on a bag against a map, as the node would live,
and write the candidates to JSON (per query), CSV (per candidate) and a
rosbag2 of selavpr_ros/msg/LoopClosureCandidateArray messages.
"""


def _extractor(args):
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.models.zoo import resolve_checkpoint

    return open_extractor(resolve_checkpoint(args.checkpoint), device=args.device)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def cmd_build_map(args: argparse.Namespace) -> int:
    from selavpr_ros.geometry.features import KeypointConfig
    from selavpr_ros.loop_closure.config import KeyframeGateConfig
    from selavpr_ros.offline.build_map import build_map

    gate = KeyframeGateConfig(args.min_interval, args.min_translation, args.min_rotation, args.max_similarity)
    keypoints = args.keypoints if args.keypoints in ("auto", "none") else \
        KeypointConfig(detector=args.keypoints, max_keypoints=args.max_keypoints)
    storage = storage_from_args(args)
    common = dict(pose_topic=args.pose_topic, base_frame=args.base_frame, map_frame=args.map_frame,
                  sessions=args.session, gate=gate, storage=storage, max_pose_gap_s=args.max_pose_gap,
                  progress=not args.quiet, camera_info=None if args.camera_info == "none" else args.camera_info,
                  keypoints=None if keypoints == "none" else keypoints, depth_topic=args.depth_topic,
                  batch_size=args.batch_size, chunk_images=args.chunk_images)
    failed: dict[str, str] = {}
    if args.executor == "ray":
        from selavpr_ros.errors import ConfigError
        from selavpr_ros.offline.ray_executor import RayOptions, build_map_on_ray

        if args.save_images:
            raise ConfigError("--save-images writes on the workers' disks: use the serial executor for it")
        options = RayOptions(address=args.address, workers=args.workers, threads_per_worker=args.worker_threads)
        reports, failed = build_map_on_ray(args.bags, args.image_topic, args.out, _extractor(args), args.checkpoint,
                                           args.device, options, **common)
    else:
        reports = build_map(args.bags, args.image_topic, args.out, _extractor(args), save_images=args.save_images,
                            **common)
    for r in reports:
        line = (f"{r.session}: {r.messages} images, {r.added} keyframes added, {r.gated_out} gated out, "
                f"{r.already_in_map} already in the map, {r.bad_frames} bad frames")
        if args.pose_topic:
            line += f", {r.without_pose} without pose"
        if r.without_camera:
            line += f", {r.without_camera} without camera model ({r.camera_problem}; geometric verification skipped)"
        print(line)
        for e in r.errors:
            print(f"  bad frame {e}")
    for bag, why in failed.items():
        print(f"FAILED {bag}: {why} (its earlier chunks are committed; rerun to resume)")
    return 1 if failed else 0


def replay_params(args: argparse.Namespace) -> dict:
    from selavpr_ros.node.params import load_params_file, parse_overrides, validate

    params = load_params_file(args.params) if args.params else validate({})
    params.update({"map_path": str(args.map), "mode": "localization", "device": args.device,
                   "checkpoint": args.checkpoint or ""})
    return validate({**params, **parse_overrides(args.param)})


def cmd_replay(args: argparse.Namespace) -> int:
    from selavpr_ros.node.pipeline import VPRPipeline
    from selavpr_ros.offline.replay import ReplayWriter, replay

    pipeline = VPRPipeline(replay_params(args))
    try:
        out = Path(args.out)
        with ReplayWriter(pipeline, out / "candidates.json", out / "candidates.csv", out / "candidates_bag") as sink:
            result = replay(args.bag, args.image_topic, pipeline, progress=not args.quiet,
                            camera_info=None if args.camera_info == "none" else args.camera_info, sinks=[sink],
                            keep_outcomes=False,  # streamed: memory does not grow with the bag
                            batch_size=args.batch_size)
    finally:
        pipeline.close()
    summary = {"queries": result.keyframes, "accepted": result.accepted, "edges": pipeline.edges_published,
               "bad_frames": result.bad_frames, "stage_ms": result.stage_ms(), "out": str(out)}
    if pipeline.edges_skipped:
        summary["edges_left_out"] = f"{pipeline.edges_skipped} closures: {pipeline.last_edge_problem}"
    print(json_text(summary))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    p.add_argument("--checkpoint", help="model (.ckpt or .onnx); default: the built-in demo model")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--camera-info", default="", metavar="TOPIC",
                   help="sensor_msgs/CameraInfo topic (geometric verification); default: camera_info beside the "
                        "image topic (/cam/image_raw -> /cam/camera_info); 'none' to ignore")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    from selavpr_ros.cli import HelpFormatter

    p = sub.add_parser("build-map", help="build a map from rosbag2 / ROS 1 bags", description=BUILD_DESCRIPTION,
                       formatter_class=HelpFormatter)
    p.add_argument("bags", nargs="+", help="bag folders or files")
    p.add_argument("--out", required=True, help="map directory (created, or extended)")
    _common(p)
    p.add_argument("--pose-topic", help="pose source for keyframes (odometry, pose, NavSatFix or /tf)")
    p.add_argument("--base-frame", help="with /tf: the robot/camera frame")
    p.add_argument("--map-frame", help="with /tf: the fixed frame")
    p.add_argument("--max-pose-gap", type=float, default=0.5, help="max gap (s) between poses to interpolate")
    p.add_argument("--session", action="append", help="session name per bag (default: bag name)")
    p.add_argument("--min-interval", type=float, default=0.5, help="keyframe gate: min seconds between keyframes")
    p.add_argument("--min-translation", type=float, default=0.0, help="keyframe gate: min metres (needs poses)")
    p.add_argument("--min-rotation", type=float, default=0.0, help="keyframe gate: min degrees (needs poses)")
    p.add_argument("--max-similarity", type=float, default=1.0, help="keyframe gate: novelty (1 = off)")
    p.add_argument("--batch-size", type=_positive, default=8,
                   help="keyframes described per model call (memory: this many decoded images); 1 when "
                        "--max-similarity < 1, whose decisions need each descriptor before the next frame")
    p.add_argument("--chunk-images", type=_positive, default=2000,
                   help="image messages per unit of work: keyframes are committed at these boundaries, and "
                        "--executor ray spreads the chunks over workers")
    g = p.add_argument_group("distributed (--executor ray; pip install 'selavpr_ros[ray]')")
    g.add_argument("--executor", default="serial", choices=("serial", "ray"),
                   help="serial: this process; ray: workers of a Ray cluster describe the chunks, this process "
                        "writes the map (same map as serial)")
    g.add_argument("--address", help="Ray cluster: host:port of its head, or 'auto' for the one this machine "
                                     "runs (default: start Ray on this machine)")
    g.add_argument("--workers", type=int, default=0, help="workers (0: the cluster's CPUs / --worker-threads, or "
                                                          "one per GPU)")
    g.add_argument("--worker-threads", type=_positive, default=1, help="CPU threads per worker")
    add_storage_arguments(p)
    p.add_argument("--save-images", action="store_true", help="keep keyframe images (for training and reports)")
    p.add_argument("--keypoints", default="auto", choices=("auto", "orb", "sift", "none"),
                   help="keyframe keypoints for the geometric stage (ORB 36 B, SIFT 132 B each); auto: ORB when the "
                        "bag has CameraInfo")
    p.add_argument("--max-keypoints", type=int, default=1000, help="keypoints per keyframe")
    p.add_argument("--depth-topic", help="depth image registered to the camera (16UC1 mm / 32FC1 m, same stamps): "
                                         "keypoints get depth and verified loops a metric 6-DoF pose (PnP)")
    p.set_defaults(func=cmd_build_map)

    p = sub.add_parser("replay", help="run loop closure on a bag against a map, offline",
                       description=REPLAY_DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("bag", help="bag folder or file")
    p.add_argument("--map", required=True, help="map directory")
    p.add_argument("--out", default="replay_out", help="output folder")
    p.add_argument("--params", help="node parameter file (config/vpr.yaml) for the loop-closure settings")
    p.add_argument("-p", "--param", action="append", metavar="NAME:=VALUE", help="override one node parameter")
    p.add_argument("--batch-size", type=_positive, default=8,
                   help="frames described per model call (at most 30; results equal one frame per call)")
    _common(p)
    p.set_defaults(func=cmd_replay)
