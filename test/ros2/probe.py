"""An rclpy client for the ROS 2 graph tests: run with a sourced ROS 2 install, prints JSON.

``stream``   publish bundled Nordland frames (Image or CompressedImage) and collect the
             node's LoopClosureCandidateArray and /diagnostics messages;
``services`` call ~/save_map, ~/set_mode, ~/reset and the parameter services with rclpy clients;
``diagnostics-rate`` count /diagnostics messages for a few seconds;
``query``    call ~/query with a SLAM's keyframes (images, ids, CameraInfo) and collect the answers
             and the PoseGraph edges on loop_closure_edges.

It talks to the node only through ROS 2 (rclpy, rmw), never through the package's own DDS code.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TransformStamped
from PIL import Image as PILImage
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from selavpr_ros.msg import LoopClosureCandidateArray, PoseGraph
from selavpr_ros.srv import QueryPlace, SaveMap, SetMode

DEMO = Path(__file__).resolve().parents[2] / "selavpr_ros" / "data" / "nordland_demo"


def frames(season: str, start: int, n: int, step: int) -> list[np.ndarray]:
    names = sorted((DEMO / season).glob("*.png"))[start : start + n * step : step]
    return [np.asarray(PILImage.open(p).convert("RGB")) for p in names]


def image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str, compressed: bool):
    msg = CompressedImage() if compressed else Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp_ns // 10**9, stamp_ns % 10**9
    msg.header.frame_id = frame_id
    if compressed:
        buf = io.BytesIO()
        PILImage.fromarray(rgb).save(buf, format="JPEG", quality=92)
        msg.format = "jpeg"
        msg.data = buf.getvalue()
    else:
        h, w, _ = rgb.shape
        msg.height, msg.width, msg.encoding, msg.step = h, w, "rgb8", w * 3
        msg.data = rgb.tobytes()
    return msg


def wait_for(node: Node, condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"probe: timed out waiting for {what}")
        rclpy.spin_once(node, timeout_sec=0.05)


def transform(parent: str, child: str, stamp_ns: int, x: float) -> TransformStamped:
    t = TransformStamped()
    t.header.stamp.sec, t.header.stamp.nanosec = stamp_ns // 10**9, stamp_ns % 10**9
    t.header.frame_id, t.child_frame_id = parent, child
    t.transform.translation.x = x
    t.transform.rotation.w = 1.0
    return t


def cmd_stream(args) -> dict:
    node = Node("vpr_probe")
    reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(CompressedImage if args.compressed else Image, args.image_topic, reliable)
    tf_pub = node.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))
    info_pub = node.create_publisher(CameraInfo, args.camera_info, reliable) if args.camera_info else None
    static_pub = node.create_publisher(TFMessage, "/tf_static", QoSProfile(
        depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    got: list = []
    diagnostics: list = []
    node.create_subscription(LoopClosureCandidateArray, args.candidates_topic, got.append, reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
    wait_for(node, lambda: pub.get_subscription_count() > 0, 90, f"a subscriber on {args.image_topic}")
    if info_pub is not None:  # a CameraInfo sent before the node's subscription matched would be lost
        wait_for(node, lambda: info_pub.get_subscription_count() > 0, 30, f"a subscriber on {args.camera_info}")
    wait_for(node, lambda: node.count_publishers(args.candidates_topic) > 0, 30, "the candidate publisher")
    route = frames("summer", args.start, args.n, 3) + frames("winter", args.start, args.n, 3)
    if args.tf:  # the camera 0.25 m ahead of base_link; the robot drives 1 m per frame, TF at 10 Hz
        static_pub.publish(TFMessage(transforms=[transform("base_link", "cam_optical", 0, 0.25)]))
    stamps = []
    for i, rgb in enumerate(route):
        t = (i if i < args.n else 1000 + i) * 10**9 + 123
        if args.tf:
            tf_pub.publish(TFMessage(transforms=[transform("odom", "base_link", t + k * 10**8, i + k / 10)
                                                 for k in range(-5, 6)]))
        if info_pub is not None:  # nominal pinhole of the frame's size, stamped like the image
            info = CameraInfo(width=rgb.shape[1], height=rgb.shape[0], distortion_model="plumb_bob")
            info.header.stamp.sec, info.header.stamp.nanosec = t // 10**9, t % 10**9
            info.header.frame_id = "cam_optical"
            f = rgb.shape[1] / 2 / np.tan(np.radians(30))
            info.k = [f, 0.0, rgb.shape[1] / 2, 0.0, f, rgb.shape[0] / 2, 0.0, 0.0, 1.0]
            info.d = [0.0] * 5
            info_pub.publish(info)
            time.sleep(0.02)  # a driver's CameraInfo leads its image; the two topics have no joint order
        pub.publish(image_msg(rgb, t, "cam_optical", args.compressed))
        stamps.append(t)
        end = time.monotonic() + args.period
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.02)
    expect = len(route) if args.expect is None else args.expect
    wait_for(node, lambda: len(got) >= expect, 60, f"{expect} candidate arrays")
    wait_for(node, lambda: len(diagnostics) > 0, 10, "/diagnostics")
    out = {
        "sent": stamps,
        "arrays": [{
            "stamp": a.header.stamp.sec * 10**9 + a.header.stamp.nanosec,
            "frame_id": a.header.frame_id,
            "candidates": [{"rank": c.rank, "match": c.match_keyframe_id, "query": c.query_keyframe_id,
                            "status": c.status, "score": c.score, "session": c.match_session,
                            "verification": c.verification, "reason": c.reason,
                            "stamp": c.header.stamp.sec * 10**9 + c.header.stamp.nanosec,
                            "match_stamp": c.match_stamp.sec * 10**9 + c.match_stamp.nanosec}
                           for c in a.candidates],
        } for a in got],
        "diagnostics": [{"name": s.name, "level": int.from_bytes(s.level, "little") if isinstance(s.level, bytes)
                         else int(s.level), "keys": [kv.key for kv in s.values]}
                        for d in diagnostics for s in d.status],
    }
    node.destroy_node()
    return out


def cmd_diagnostics_rate(args) -> dict:
    node = Node("vpr_diag_probe")
    got: list = []
    node.create_subscription(DiagnosticArray, "/diagnostics", got.append, 50)
    wait_for(node, lambda: len(got) > 0, 30, "/diagnostics")
    got.clear()
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.02)
    node.destroy_node()
    return {"messages": len(got), "seconds": args.seconds}


def _call(node: Node, client, request, timeout: float = 60.0):
    wait_for(node, lambda: client.service_is_ready(), 60, f"service {client.srv_name}")
    future = client.call_async(request)
    rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
    if not future.done():
        raise SystemExit(f"probe: {client.srv_name} did not answer")
    return future.result()


def _value(v: ParameterValue):
    return {ParameterType.PARAMETER_BOOL: v.bool_value, ParameterType.PARAMETER_INTEGER: v.integer_value,
            ParameterType.PARAMETER_DOUBLE: v.double_value, ParameterType.PARAMETER_STRING: v.string_value
            }.get(v.type)


def cmd_services(args) -> dict:
    node = Node("vpr_service_probe")
    target = args.node
    out: dict = {}
    save = node.create_client(SaveMap, f"{target}/save_map")
    r = _call(node, save, SaveMap.Request(path="../../escape"))
    out["save_map_escape"] = {"success": r.success, "message": r.message}
    r = _call(node, save, SaveMap.Request(path=args.copy_to))
    out["save_map"] = {"success": r.success, "message": r.message}
    reset = node.create_client(Trigger, f"{target}/reset")
    r = _call(node, reset, Trigger.Request())
    out["reset"] = {"success": r.success, "message": r.message}
    set_mode = node.create_client(SetMode, f"{target}/set_mode")
    r = _call(node, set_mode, SetMode.Request(mode="exploring"))
    out["set_mode_bad"] = {"success": r.success, "message": r.message}
    r = _call(node, set_mode, SetMode.Request(mode="localization"))
    out["set_mode"] = {"success": r.success, "message": r.message}
    get = node.create_client(GetParameters, f"{target}/get_parameters")
    r = _call(node, get, GetParameters.Request(names=["mode", "loop_closure.min_score"]))
    out["after_set_mode"] = [_value(v) for v in r.values]
    setp = node.create_client(SetParameters, f"{target}/set_parameters")

    def set_one(name, kind, **value):
        p = Parameter(name=name, value=ParameterValue(type=kind, **value))
        res = _call(node, setp, SetParameters.Request(parameters=[p])).results[0]
        return {"successful": res.successful, "reason": res.reason}

    out["set_valid"] = set_one("loop_closure.min_score", ParameterType.PARAMETER_DOUBLE, double_value=0.6)
    out["set_out_of_range"] = set_one("loop_closure.min_score", ParameterType.PARAMETER_DOUBLE, double_value=1.5)
    out["set_read_only"] = set_one("map_path", ParameterType.PARAMETER_STRING, string_value="/elsewhere")
    out["set_mode_param"] = set_one("mode", ParameterType.PARAMETER_STRING, string_value="mapping")
    r = _call(node, get, GetParameters.Request(names=["mode", "loop_closure.min_score", "map_path"]))
    out["final"] = [_value(v) for v in r.values]
    node.destroy_node()
    return out


def _edge(e) -> dict:
    p, q = e.pose.position, e.pose.orientation
    return {"key_from": e.key_from, "key_to": e.key_to, "robot_from": e.robot_from, "robot_to": e.robot_to,
            "type": e.type, "frame_id": e.header.frame_id, "position": [p.x, p.y, p.z],
            "quaternion": [q.x, q.y, q.z, q.w], "covariance": list(e.covariance)}


def cmd_query(args) -> dict:
    """The SLAM's side: each keyframe (image file, its id) through ~/query with its CameraInfo."""
    node = Node("vpr_query_probe")
    spec = json.loads(Path(args.spec).read_text())
    reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
    graphs: list = []
    node.create_subscription(PoseGraph, args.edges_topic, graphs.append, reliable)
    static_pub = node.create_publisher(TFMessage, "/tf_static", QoSProfile(
        depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    mount = TransformStamped()
    mount.header.frame_id, mount.child_frame_id = "base_link", "cam_optical"
    t, r = mount.transform.translation, mount.transform.rotation
    (t.x, t.y, t.z), (r.x, r.y, r.z, r.w) = spec["mount"][:3], spec["mount"][3:]
    static_pub.publish(TFMessage(transforms=[mount]))
    client = node.create_client(QueryPlace, f"{args.node}/query")
    answers = []
    for item in spec["keyframes"]:
        request = QueryPlace.Request(keyframe_id=item["id"])
        if item["path"]:
            request.image = image_msg(np.asarray(PILImage.open(item["path"]).convert("RGB")), item["stamp"],
                                      "cam_optical", False)
        else:  # a keyframe with no image at all: the node must answer, not fail
            request.image.header.stamp.sec = item["stamp"] // 10**9
        info = request.camera_info
        info.width, info.height, info.distortion_model = spec["width"], spec["height"], "plumb_bob"
        fx, fy, cx, cy = spec["k"]
        info.k, info.d = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0], [0.0] * 5
        r = _call(node, client, request, timeout=120)
        answers.append({"id": item["id"], "success": r.success, "message": r.message,
                        "candidates": [{"status": c.status, "verification": c.verification,
                                        "query_slam_id": c.query_slam_id, "match_slam_id": c.match_slam_id,
                                        "robot_id": c.robot_id, "match_robot_id": c.match_robot_id,
                                        "has_relative_pose": c.has_relative_pose} for c in r.candidates],
                        "edges": [_edge(e) for e in r.edges]})
    expected = sum(bool(a["edges"]) for a in answers)
    wait_for(node, lambda: len(graphs) >= expected, 30, f"{expected} PoseGraph messages")
    node.destroy_node()
    return {"answers": answers, "graphs": [[_edge(e) for e in g.edges] for g in graphs]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stream")
    s.add_argument("--image-topic", default="/camera/image_raw")
    s.add_argument("--candidates-topic", default="/loop_closures")
    s.add_argument("--compressed", action="store_true")
    s.add_argument("--camera-info", help="also publish a CameraInfo per frame on this topic")
    s.add_argument("--n", type=int, default=8)
    s.add_argument("--start", type=int, default=30)
    s.add_argument("--period", type=float, default=0.5)
    s.add_argument("--tf", action="store_true", help="publish /tf and /tf_static for the frames")
    s.add_argument("--expect", type=int, help="candidate arrays to wait for (default: one per frame)")
    d = sub.add_parser("diagnostics-rate")
    d.add_argument("--seconds", type=float, default=3.0)
    v = sub.add_parser("services")
    v.add_argument("--node", default="/vpr_node")
    v.add_argument("--copy-to", required=True)
    q = sub.add_parser("query")
    q.add_argument("--spec", required=True, help="JSON: keyframes [{id, path, stamp}], camera k/width/height, mount")
    q.add_argument("--node", default="/vpr_node")
    q.add_argument("--edges-topic", default="/loop_closure_edges")
    args = parser.parse_args()
    rclpy.init()
    try:
        commands = {"stream": cmd_stream, "services": cmd_services, "diagnostics-rate": cmd_diagnostics_rate,
                    "query": cmd_query}
        result = commands[args.cmd](args)
    finally:
        rclpy.try_shutdown()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
