"""`selavpr-ros node` over real CycloneDDS traffic on loopback, with the ROS 2 wire conventions."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cyclonedds")

from cyclonedds.domain import DomainParticipant  # noqa: E402
from cyclonedds.pub import DataWriter  # noqa: E402
from cyclonedds.sub import DataReader  # noqa: E402
from cyclonedds.topic import Topic  # noqa: E402

from selavpr_ros.node.dds_node import reliable_qos, sensor_qos
from selavpr_ros.transport.image_decoding import encode_compressed, encode_image  # noqa: E402
from selavpr_ros.transport.msgtypes import dds_type, message, to_dds  # noqa: E402

CANDIDATES = "selavpr_ros/msg/LoopClosureCandidateArray"


def _images(nordland: Path, season: str, start: int, n: int) -> list[np.ndarray]:
    names = sorted((nordland / season).iterdir())[start : start + 5 * n : 5]
    return [np.asarray(Image.open(p).convert("RGB")) for p in names]


def _start_node(tmp_path: Path, domain: int, *params: str, remap: str = "") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "selavpr_ros", "node", "--domain-id", str(domain), "--namespace", "robot1",
           "-p", f"map_path:={tmp_path / 'map'}", "-p", "device:=cpu", "-p", "loop_closure.consistency.n:=1",
           "-p", "loop_closure.keyframe.min_interval_s:=0.0", "-p", "loop_closure.exclusion.recent_s:=5.0",
           "-p", "diagnostics_period_s:=0.2", *[a for p in params for a in ("-p", p)],
           *(["-r", remap] if remap else [])]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_matched(entity, what: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"node exited early: {proc.stderr.read()[-2000:]}")
        matched = (entity.get_matched_subscriptions() if isinstance(entity, DataWriter)
                   else entity.get_matched_publications())
        if matched:
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} never matched the node")


def _stop(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]

    def refuse(name):  # the final statistics are strict JSON: an unknown figure is null, never NaN
        raise AssertionError(f"{name} in the node's final JSON")

    return json.loads(out.strip().splitlines()[-1], parse_constant=refuse)


@pytest.mark.parametrize("compressed", [False, True])
def test_node_over_dds_publishes_candidates(tmp_path, nordland, compressed):
    domain = random.randint(1, 200)
    proc = _start_node(tmp_path, domain, f"compressed:={'true' if compressed else 'false'}",
                       remap="image:=camera/image" + ("/compressed" if compressed else ""))
    dp = DomainParticipant(domain)
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    topic = "rt/robot1/camera/image" + ("/compressed" if compressed else "")
    writer = DataWriter(dp, Topic(dp, topic, dds_type(msgtype)), reliable_qos(50))
    reader = DataReader(dp, Topic(dp, "rt/robot1/loop_closures", dds_type(CANDIDATES)), reliable_qos(200))
    diag = DataReader(dp, Topic(dp, "rt/diagnostics", dds_type("diagnostic_msgs/msg/DiagnosticArray")),
                      reliable_qos(50))
    try:
        _wait_matched(writer, "image writer", proc)
        _wait_matched(reader, "candidate reader", proc)
        route = _images(nordland, "summer", 0, 12) + _images(nordland, "winter", 0, 12)
        stamps = []
        for i, rgb in enumerate(route):
            t = (i if i < 12 else 1000 + i) * 10**9
            fields = encode_compressed(rgb) if compressed else encode_image(rgb, "bgr8")
            header = {"stamp": {"sec": t // 10**9, "nanosec": 0}, "frame_id": "cam_optical"}
            writer.write(to_dds(message(msgtype, header=header, **fields), msgtype))
            stamps.append(t)
            time.sleep(0.25)  # slower than inference: every frame is processed
        bad = message(msgtype, header={"frame_id": "cam_optical"},
                      **({"format": "jpeg", "data": np.frombuffer(b"\xff\xd8garbage", np.uint8)} if compressed else
                         {"height": 32, "width": 64, "encoding": "rgb8", "step": 192, "data": np.zeros(7, np.uint8)}))
        writer.write(to_dds(bad, msgtype))
        got = []
        deadline = time.monotonic() + 30
        while len(got) < len(route) and time.monotonic() < deadline:
            got += reader.take(N=100)
            time.sleep(0.05)
        time.sleep(0.6)
        diagnostics = diag.take(N=100)
    finally:
        stats = _stop(proc)
    assert len(got) == len(route)
    assert [g.header.stamp.sec * 10**9 for g in got] == stamps
    assert all(g.header.frame_id == "cam_optical" for g in got)
    winter = got[12:]
    assert all(len(g.candidates) == 3 for g in winter)
    assert all(c.match_session == "live" and c.rank == i + 1 for g in winter for i, c in enumerate(g.candidates))
    hits = sum(abs(g.candidates[0].match_keyframe_id - i) <= 1 for i, g in enumerate(winter))
    assert hits >= 3
    assert stats["bad_frames"] == 1 and stats["processed"] == len(route) and stats["map_size"] == len(route)
    assert diagnostics and diagnostics[-1].status[0].name == "vpr_node"
    keys = {kv.key for kv in diagnostics[-1].status[0].values}
    assert {"latency_p50_ms", "dropped", "bad_frames", "map_size"} <= keys


def test_node_drops_frames_when_the_stream_outpaces_inference(tmp_path, nordland):
    domain = random.randint(201, 230)
    proc = _start_node(tmp_path, domain, remap="image:=/cam")
    dp = DomainParticipant(domain)
    writer = DataWriter(dp, Topic(dp, "rt/cam", dds_type("sensor_msgs/msg/Image")), sensor_qos())
    try:
        _wait_matched(writer, "image writer", proc)
        imgs = _images(nordland, "summer", 100, 20)
        for i in range(600):  # 600 frames as fast as DDS takes them
            msg = message("sensor_msgs/msg/Image", header={"stamp": {"sec": i}, "frame_id": "c"},
                          **encode_image(imgs[i % 20]))
            writer.write(to_dds(msg, "sensor_msgs/msg/Image"))
        time.sleep(2.0)
    finally:
        stats = _stop(proc)
    assert stats["dropped"] > 0 and stats["processed"] < stats["received"]
    assert stats["received"] == stats["processed"] + stats["dropped"] + stats["bad_frames"]
    assert stats["latency_p95_ms"] < 2000  # answers stay fresh: no backlog builds up


def test_node_takes_keyframe_poses_from_a_tf_stream(tmp_path):
    """TF published next to the images: keyframes get the camera's pose in odom, and the motion gate works."""
    import math

    from conftest import demo_images

    from selavpr_ros.mapdb.database import MapDatabase
    from selavpr_ros.node.dds_node import static_qos

    domain = random.randint(1, 200)
    proc = _start_node(tmp_path, domain, "pose_source:=tf", "pose.fixed_frame:=odom",
                       "loop_closure.keyframe.min_translation_m:=1.5", "pose.timeout_s:=1.0", remap="image:=/cam")
    dp = DomainParticipant(domain)
    tf_type = dds_type("tf2_msgs/msg/TFMessage")
    images = DataWriter(dp, Topic(dp, "rt/cam", dds_type("sensor_msgs/msg/Image")), reliable_qos(50))
    tf_writer = DataWriter(dp, Topic(dp, "rt/tf", tf_type), reliable_qos(100))
    static_writer = DataWriter(dp, Topic(dp, "rt/tf_static", tf_type), static_qos())

    def transform(parent, child, t_ns, x, yaw=0.0):
        return message("geometry_msgs/msg/TransformStamped",
                       header={"stamp": {"sec": t_ns // 10**9, "nanosec": t_ns % 10**9}, "frame_id": parent},
                       child_frame_id=child,
                       transform={"translation": {"x": x, "y": 0.0, "z": 0.0},
                                  "rotation": {"z": math.sin(yaw / 2), "w": math.cos(yaw / 2)}})

    def tf_msg(*ts):
        return to_dds(message("tf2_msgs/msg/TFMessage", transforms=list(ts)), "tf2_msgs/msg/TFMessage")

    frames = demo_images("summer", 0, 10, step=3)
    try:
        for w in (images, tf_writer, static_writer):
            _wait_matched(w, "writer", proc)
        static_writer.write(tf_msg(transform("base_link", "cam_optical", 0, 0.25)))
        for i, rgb in enumerate(frames):  # the robot drives 1 m per image at 1 Hz; TF at 10 Hz
            t = (100 + i) * 10**9
            for k in range(10):
                tf_writer.write(tf_msg(transform("odom", "base_link", t + k * 10**8, i + k / 10)))
            tf_writer.write(tf_msg(transform("odom", "base_link", t + 10**9, i + 1.0)))
            header = {"stamp": {"sec": t // 10**9, "nanosec": 0}, "frame_id": "cam_optical"}
            images.write(to_dds(message("sensor_msgs/msg/Image", header=header, **encode_image(rgb)),
                                "sensor_msgs/msg/Image"))
            time.sleep(0.4)
        time.sleep(1.0)
    finally:
        stats = _stop(proc)
    assert stats["processed"] == len(frames) and stats["bad_frames"] == 0
    with MapDatabase.open(tmp_path / "map") as db:
        records = db.records(list(range(db.count)))
    # 1 m per frame, min_translation_m 1.5: every other frame becomes a keyframe
    assert [r.stamp_ns // 10**9 - 100 for r in records] == [0, 2, 4, 6, 8]
    for r in records:
        i = r.stamp_ns // 10**9 - 100
        assert r.pose is not None and r.pose.frame_id == "odom"
        assert r.pose.position[0] == pytest.approx(i + 0.25, abs=1e-6)  # base_link at i m, camera 0.25 m ahead


def test_node_verifies_loops_with_camera_info_over_dds(tmp_path):
    """camera_info beside the images: keyframes keep their intrinsics and keypoints, revisits from a
    turned camera come back VERIFIED with a relative pose; images before any CameraInfo are counted."""
    from selavpr_ros.bags.writer import camera_info_fields
    from selavpr_ros.datasets.rotated_views import write_rotated_views

    views = write_rotated_views(tmp_path / "views", held_out=0)
    ev = views.eval_set
    picks = [i for i, p in enumerate(ev.positives) if len(p)][:8]
    tiles = [np.asarray(Image.open(ev.database[ev.positives[i][0]]).convert("RGB")) for i in picks]
    turned = [np.asarray(Image.open(ev.queries[i]).convert("RGB")) for i in picks]
    domain = random.randint(1, 200)
    from selavpr_ros.loop_closure.edges import conjugate, tangent_covariance
    from selavpr_ros.node.dds_node import static_qos
    from selavpr_ros.types import Pose, quaternion_to_rotation

    proc = _start_node(tmp_path, domain, "loop_closure.retrieval.stages:=binary,float,geometric",
                       "loop_closure.min_score:=-1.0", "camera_info.max_age_s:=0.5", "depth:=true",
                       "loop_closure.top_n:=9",  # every tile is verified: retrieval alone misses some
                       "robot_id:=3", "edges.base_frame:=base_link", remap="image:=/cam/image_raw")
    dp = DomainParticipant(domain)
    info_type, tf_type = "sensor_msgs/msg/CameraInfo", "tf2_msgs/msg/TFMessage"
    images = DataWriter(dp, Topic(dp, "rt/cam/image_raw", dds_type("sensor_msgs/msg/Image")), reliable_qos(50))
    infos = DataWriter(dp, Topic(dp, "rt/robot1/camera_info", dds_type(info_type)), reliable_qos(50))
    reader = DataReader(dp, Topic(dp, "rt/robot1/loop_closures", dds_type(CANDIDATES)), reliable_qos(200))
    edge_reader = DataReader(dp, Topic(dp, "rt/robot1/loop_closure_edges", dds_type("selavpr_ros/msg/PoseGraph")),
                             reliable_qos(200))
    depths = DataWriter(dp, Topic(dp, "rt/robot1/depth", dds_type("sensor_msgs/msg/Image")), reliable_qos(50))
    statics = DataWriter(dp, Topic(dp, "rt/tf_static", dds_type(tf_type)), static_qos())
    mount = Pose((0.1, -0.05, 1.2), (-0.5, 0.5, -0.5, 0.5))  # an optical frame looking along the base's x
    statics.write(to_dds(message(tf_type, transforms=[{
        "header": {"frame_id": "base_link"}, "child_frame_id": "cam_optical",
        "transform": {"translation": dict(zip("xyz", mount.position)),
                      "rotation": dict(zip("xyzw", mount.orientation))}}]), tf_type))
    flat = np.full((168, 224), 2.0, "<f4")  # the first tile is a wall 2 m away
    got, graphs = [], []
    try:
        for entity in (images, infos, reader, depths, edge_reader):
            _wait_matched(entity, "endpoint", proc)
        stream = [(1, tiles[0])] + [(10 + i, t) for i, t in enumerate(tiles)] + \
            [(100 + i, q) for i, q in enumerate(turned)]  # the first image has no CameraInfo yet
        for n, (sec, rgb) in enumerate(stream):
            header = {"stamp": {"sec": sec, "nanosec": 0}, "frame_id": "cam_optical"}
            if n:
                infos.write(to_dds(message(info_type, header=header,
                                           **camera_info_fields(views.camera, "cam_optical")), info_type))
                if sec == 10:
                    depths.write(to_dds(message("sensor_msgs/msg/Image", header=header, height=168, width=224,
                                                encoding="32FC1", step=224 * 4,
                                                data=np.frombuffer(flat.tobytes(), np.uint8)),
                                        "sensor_msgs/msg/Image"))
                time.sleep(0.05)
            images.write(to_dds(message("sensor_msgs/msg/Image", header=header, **encode_image(rgb)),
                                "sensor_msgs/msg/Image"))
            time.sleep(0.5)
        deadline = time.monotonic() + 20
        while len(got) < len(stream) and time.monotonic() < deadline:
            got += reader.take(N=100)
            graphs += edge_reader.take(N=100)
            time.sleep(0.05)
        time.sleep(0.3)
        graphs += edge_reader.take(N=100)
    finally:
        _stop(proc)
    revisits = [g for g in got if g.header.stamp.sec >= 100]
    assert len(revisits) == len(turned)
    verified = [(g.header.stamp.sec - 100, c) for g in revisits for c in g.candidates if c.verification == 1]
    assert len(verified) >= len(turned) // 2
    assert all(c.match_keyframe_id == 1 + i and c.has_relative_pose for i, c in verified)  # keyframe 0: no CameraInfo
    assert all(c.relative_pose_model == "rotation" and not c.relative_pose_metric for i, c in verified if i)
    first = [c for i, c in verified if i == 0]  # keyframe 1 was mapped with its depth image: metric
    assert first and first[0].relative_pose_model == "pnp" and first[0].relative_pose_metric
    p = first[0].relative_pose.pose.position
    assert np.hypot(np.hypot(p.x, p.y), p.z) < 0.05  # the camera only turned
    assert all(c.status in (0, 4) for g in revisits for c in g.candidates if c.verification in (1, 2))
    # every accepted verified candidate is also an edge between the robot frames carrying the camera,
    # keyed by keyframe ids and the node's robot id, its covariance in GTSAM order
    accepted = {(c.query_keyframe_id, c.match_keyframe_id): c for g in got for c in g.candidates
                if c.status == 0 and c.has_relative_pose}
    edges = {(e.key_from, e.key_to): e for g in graphs for e in g.edges}
    assert accepted and set(edges) == set(accepted)
    m = mount.matrix()
    for key, e in edges.items():
        c = accepted[key]
        assert (e.robot_from, e.robot_to, e.type, e.header.frame_id) == (3, 3, 1, "base_link")
        assert c.robot_id == 3 and c.match_robot_id == 3 and c.query_slam_id == -1 and c.match_slam_id == -1
        rel = Pose(tuple(getattr(c.relative_pose.pose.position, a) for a in "xyz"),
                   tuple(getattr(c.relative_pose.pose.orientation, a) for a in "xyzw")).matrix()
        body, cov = conjugate(rel, tangent_covariance(rel, np.asarray(c.relative_pose.covariance)), m, m)
        p, q = e.pose.position, e.pose.orientation
        assert np.allclose([p.x, p.y, p.z], body[:3, 3], atol=1e-6)
        assert np.allclose(quaternion_to_rotation((q.x, q.y, q.z, q.w)), body[:3, :3], atol=1e-6)
        scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov)))  # compared as correlations: the quaternion
        assert np.allclose(np.asarray(e.covariance).reshape(6, 6) / scale, cov / scale, atol=1e-4)  # round trip
    assert len(got) == len(stream) and got[0].header.stamp.sec == 1 and not got[0].candidates
    from selavpr_ros.mapdb.database import MapDatabase

    with MapDatabase.open(tmp_path / "map") as db:
        records = db.records(list(range(db.count)))
        assert records[0].camera is None and all(r.camera == records[1].camera for r in records[1:])
        assert records[1].camera.k == views.camera.k and list(db.keypoints([0, 1])) == [1]
