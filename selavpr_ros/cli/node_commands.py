"""``selavpr-ros node``: the loop-closure node over CycloneDDS, without a ROS 2 install."""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time

from selavpr_ros.cli import json_text

DESCRIPTION = """\
Run the place-recognition node on a live camera topic without ROS 2: the same
pipeline as `ros2 launch selavpr_ros vpr.launch.py`, talking to ROS 2 nodes
(rmw_cyclonedds_cpp, same ROS_DOMAIN_ID) or to other DDS programs. It
subscribes to sensor_msgs/Image (or CompressedImage) on `image`, publishes
selavpr_ros/LoopClosureCandidateArray on `loop_closures` and
diagnostic_msgs/DiagnosticArray on /diagnostics, reads poses from /tf or `odom`
(pose_source), and flushes the map on Ctrl-C. Topic names are relative:
remap them as with ros2 run (-r image:=/camera/image_raw) or set --namespace.
Discovery honours ROS_AUTOMATIC_DISCOVERY_RANGE and ROS_LOCALHOST_ONLY.

example:
  selavpr-ros node --params config/vpr.yaml -r image:=/camera/image_raw -p map_path:=~/maps/lab
"""


def cmd_node(args: argparse.Namespace) -> int:
    from selavpr_ros.node.dds_node import DDSNode, parse_remaps
    from selavpr_ros.node.params import load_params_file, parse_overrides, validate
    from selavpr_ros.node.pipeline import node_pipeline

    params = load_params_file(args.params) if args.params else validate({})
    params = validate({**params, **parse_overrides(args.param)})
    pipeline = node_pipeline(params)
    node = DDSNode(pipeline, namespace=args.namespace, domain_id=args.domain_id, remaps=parse_remaps(args.remap))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    started = time.monotonic()
    try:
        while not stop.wait(0.2):
            if args.duration and time.monotonic() - started > args.duration:
                break
    finally:
        node.close()
        stats = node.worker.snapshot()
        stats["published"] = node.published
        stats["map_size"] = pipeline.db.count
        pipeline.close()
        print(json_text(stats, indent=None), flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from selavpr_ros.cli import HelpFormatter

    p = sub.add_parser("node", help="run the loop-closure node over DDS (no ROS 2 needed)", description=DESCRIPTION,
                       formatter_class=HelpFormatter)
    p.add_argument("--params", help="ROS 2 parameter file (e.g. config/vpr.yaml); defaults otherwise")
    p.add_argument("-p", "--param", action="append", metavar="NAME:=VALUE",
                   help="override one parameter, as `ros2 run ... --ros-args -p` does")
    p.add_argument("-r", "--remap", action="append", metavar="FROM:=TO",
                   help="remap a topic, as `ros2 run ... --ros-args -r` does (image, loop_closures, odom)")
    p.add_argument("--namespace", default="", help="node namespace for relative topic names")
    p.add_argument("--domain-id", type=int, default=int(os.environ.get("ROS_DOMAIN_ID", "0")), help="DDS domain")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = run until Ctrl-C)")
    p.set_defaults(func=cmd_node)
