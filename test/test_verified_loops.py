"""Verified loop closures end to end on real images with known geometry: bags with CameraInfo ->
build-map (cameras and keypoints stored) -> replay with the geometric stage -> candidates with
relative poses; false candidates injected by a permissive retrieval are all refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from selavpr_ros.bags.reader import open_bags
from selavpr_ros.bags.writer import write_image_bag
from selavpr_ros.datasets.rotated_views import write_rotated_views
from selavpr_ros.geometry.camera import CameraModel
from selavpr_ros.geometry.estimation import rotation_angle_deg

T_MAP, T_QUERY, PERIOD = 1_700_000_000 * 10**9, 1_700_100_000 * 10**9, 10**8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Map bag (tiles of real photographs) and query bag (rotated views, plus views of unmapped photos)."""
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.loop_closure.config import KeyframeGateConfig
    from selavpr_ros.models.zoo import builtin_checkpoint
    from selavpr_ros.offline.build_map import build_map

    root = tmp_path_factory.mktemp("verified")
    views = write_rotated_views(root / "views")
    ev = views.eval_set
    load = [np.asarray(Image.open(p).convert("RGB")) for p in ev.database]
    queries = [np.asarray(Image.open(p).convert("RGB")) for p in ev.queries]
    map_bag = write_image_bag(root / "map_bag", load, [T_MAP + i * PERIOD for i in range(len(load))],
                              camera=views.camera, frame_id="cam")
    query_bag = write_image_bag(root / "query_bag", queries, [T_QUERY + i * PERIOD for i in range(len(queries))],
                                camera=views.camera, frame_id="cam", storage="mcap")
    extractor = open_extractor(builtin_checkpoint(), device="cpu")
    report = build_map([map_bag], "/camera/image_raw", root / "map", extractor, sessions=["tiles"],
                       gate=KeyframeGateConfig(min_interval_s=0.0), progress=False)[0]
    assert report.added == len(load) and report.without_camera == 0
    return {"root": root, "views": views, "extractor": extractor, "query_bag": query_bag, "map": root / "map",
            "queries": queries}


def replay_with(world, stages: str, camera_info: str | None = "", topic: str = "/camera/image_raw", **params):
    from selavpr_ros.node.params import validate
    from selavpr_ros.node.pipeline import VPRPipeline
    from selavpr_ros.offline.replay import replay

    values = {"map_path": str(world["map"]), "mode": "localization", "device": "cpu",
              "loop_closure.min_score": -1.0,  # retrieval alone accepts anything: false candidates galore
              "loop_closure.consistency.n": 1, "loop_closure.keyframe.min_interval_s": 0.0,
              "loop_closure.top_n": 3, "loop_closure.retrieval.k": 20, "loop_closure.retrieval.stages": stages,
              **params}
    pipeline = VPRPipeline(validate(values), extractor=world["extractor"])
    try:
        return replay(world["query_bag"], topic, pipeline, progress=False, camera_info=camera_info), pipeline
    finally:
        pipeline.close()


def closures(world, result):
    """(query index, accepted candidate, correct?) for every accepted candidate."""
    ev = world["views"].eval_set
    out = []
    for outcome in result.queries:
        q = (outcome.result.stamp_ns - T_QUERY) // PERIOD
        for c in outcome.result.accepted:
            row = (c.match_stamp_ns - T_MAP) // PERIOD
            out.append((q, c, row in ev.positives[q]))
    return out


def test_map_stores_cameras_and_keypoints(world):
    from selavpr_ros.mapdb.database import MapDatabase

    with MapDatabase.open(world["map"]) as db:
        records = list(db.iterate())
        cam = world["views"].camera
        assert {(r.camera.width, r.camera.height, r.camera.k, r.camera.frame_id) for r in records} == \
            {(cam.width, cam.height, cam.k, "cam")}
        kps = db.keypoints([r.keyframe_id for r in records])
        assert len(kps) == len(records) and all(k.kind == "orb" for k in kps.values())
        assert np.median([len(k) for k in kps.values()]) > 100
        stats = db.stats()
        assert 4_000 < stats["keypoint_bytes_per_keyframe"] < 36_010  # <= 1000 ORB keypoints of 36 B


def test_geometric_stage_accepts_no_false_closure_and_recovers_rotation(world):
    plain, _ = replay_with(world, "binary,float")
    verified, _ = replay_with(world, "binary,float,geometric")
    false_plain = [c for c in closures(world, plain) if not c[2]]
    accepted = closures(world, verified)
    assert len(false_plain) > 2 * len(world["queries"])  # top 3 of every query, most of them wrong
    assert accepted and all(ok for _, _, ok in accepted), [(q, c.reason) for q, c, ok in accepted if not ok]
    assert len(accepted) >= 0.4 * (len(world["queries"]) - world["views"].eval_set.queries_without_match)
    truth = world["views"].rotations
    for q, c, _ in accepted:
        rel = c.relative_pose
        assert rel is not None and c.verification.name == "VERIFIED" and rel.model == "rotation"
        assert rotation_angle_deg(rel.rotation, truth[q]) < 1.0  # benchmark: median 0.04, max 0.5 deg
    rejected = [c for o in verified.queries for c in o.result.candidates if c.status.name == "GEOMETRY_REJECTED"]
    assert rejected and all("; geometry: " in c.reason for c in rejected)
    assert sum("min_inliers" in c.reason for c in rejected) > 0.8 * len(rejected)  # the rest: degenerate matches


def test_candidate_messages_carry_the_relative_pose(world, tmp_path):
    from selavpr_ros.offline.replay import ReplayWriter

    result, pipeline = replay_with(world, "binary,float,geometric")
    pipeline.db = pipeline.db.open(world["map"])  # reopened read-only for map_id
    with ReplayWriter(pipeline, tmp_path / "c.json", None, tmp_path / "bag") as writer:
        for outcome in result.outcomes:
            writer(outcome, outcome.frame.stamp_ns)
    pipeline.close()
    with open_bags([tmp_path / "bag"]) as reader:
        msgs = [reader.deserialize(raw, conn.msgtype).candidates for conn, _, raw in reader.messages()
                if conn.topic == "/loop_closures"]
    verified = [c for cands in msgs for c in cands if c.verification == 1]
    assert verified and all(c.has_relative_pose and c.status == 0 and not c.relative_pose_metric for c in verified)
    c = verified[0]
    assert c.relative_pose_model == "rotation" and c.inlier_count >= 30 and 0.3 <= c.inlier_ratio <= 1
    q = c.relative_pose.pose.orientation
    assert q.x**2 + q.y**2 + q.z**2 + q.w**2 == pytest.approx(1.0)
    cov = c.relative_pose.covariance.reshape(6, 6)
    assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > 0 and cov[0, 0] == pytest.approx(1e6)
    rejected = [c for cands in msgs for c in cands if c.verification == 2]
    assert rejected and all(c.status == 4 and not c.has_relative_pose and c.inlier_count >= 0 for c in rejected)
    rows = json.loads((tmp_path / "c.json").read_text())
    assert any(c.get("relative_model") == "rotation" for r in rows for c in r["candidates"])


def test_missing_or_mismatched_camera_info_skips_geometry_but_not_retrieval(world, tmp_path):
    result, pipeline = replay_with(world, "binary,float,geometric", camera_info=None)
    cands = [c for o in result.queries for c in o.result.candidates]
    assert all(c.verification.name == "SKIPPED" for c in cands)
    assert all("geometry skipped: no CameraInfo received" in c.reason for c in cands)
    assert sum(c.status.name == "ACCEPTED" for c in cands) == len(cands)  # retrieval still decides
    assert pipeline.geometry_skipped == len(result.queries)
    strict, _ = replay_with(world, "binary,float,geometric", camera_info=None,
                            **{"loop_closure.geometry.required": True})
    assert {c.status.name for o in strict.queries for c in o.result.candidates} == {"GEOMETRY_REJECTED"}
    # a CameraInfo of another image size: detected, named, skipped
    big = CameraModel.nominal(640, 480)
    shutil.rmtree(tmp_path / "b", ignore_errors=True)
    bag = write_image_bag(tmp_path / "b", world["queries"][:3], [T_QUERY + i * PERIOD for i in range(3)],
                          camera=big)
    world_b = {**world, "query_bag": bag}
    result_b, _ = replay_with(world_b, "binary,float,geometric")
    reasons = {c.reason.split("geometry skipped: ")[-1] for o in result_b.queries for c in o.result.candidates}
    assert reasons == {"image is 224x168 but its CameraInfo describes 640x480; the intrinsics do not apply "
                       "(wrong camera_info topic, or a resized image)"}


def test_old_candidate_bags_still_read(tmp_path):
    """Bags written with the first-release message (no geometry fields) read with the new code."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from selavpr_ros.transport.msgtypes import message, typestore

    old = typestore(legacy=True)
    fields = {"header": {"frame_id": "cam"}, "score": 0.75, "rank": 1}
    for storage, embedded in (("SQLITE3", True), ("MCAP", True), ("SQLITE3", False)):
        path = tmp_path / f"{storage}{embedded}"
        with Writer(path, version=9, storage_plugin=getattr(StoragePlugin, storage)) as w:
            conn = w.add_connection("/loop_closures", "selavpr_ros/msg/LoopClosureCandidateArray", typestore=old)
            msg = old.types["selavpr_ros/msg/LoopClosureCandidateArray"](
                header=message("std_msgs/msg/Header", frame_id="cam"),
                candidates=[_old_candidate(old, fields)])
            w.write(conn, 1, old.serialize_cdr(msg, "selavpr_ros/msg/LoopClosureCandidateArray"))
        if not embedded:  # as rosbag2 wrote sqlite3 before Iron: no message definitions in the bag
            import sqlite3

            with sqlite3.connect(next(path.glob("*.db3"))) as db:
                db.execute("DELETE FROM message_definitions")
        with open_bags([path]) as reader:
            conn, _, raw = next(reader.messages())
            if not embedded:
                with pytest.raises(Exception):  # noqa: B017 - the current definition cannot decode it ...
                    reader.deserialize(raw, conn.msgtype)
            m = reader.deserialize(raw, conn.msgtype) if embedded else old.deserialize_cdr(raw, conn.msgtype)
            assert m.candidates[0].score == 0.75 and not hasattr(m.candidates[0], "verification")


def _old_candidate(store, fields):
    from selavpr_ros.transport.msgtypes import message

    new = message("selavpr_ros/msg/LoopClosureCandidate", **fields)
    cls = store.types["selavpr_ros/msg/LoopClosureCandidate"]
    return cls(**{k: getattr(new, k) for k in cls.__dataclass_fields__ if k != "__msgtype__"})


def test_depth_topic_gives_metric_loop_closures(tmp_path):
    """A keyframe with a registered depth image (Middlebury's calibrated stereo): its revisit from the
    other camera comes back as a metric 6-DoF pose (PnP), the baseline to millimetres."""
    import skimage.data

    from selavpr_ros.bags.writer import camera_info_fields, write_topics
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.loop_closure.config import KeyframeGateConfig
    from selavpr_ros.models.zoo import builtin_checkpoint
    from selavpr_ros.offline.build_map import build_map
    from selavpr_ros.transport.image_decoding import encode_image
    from selavpr_ros.transport.msgtypes import message

    focal, cx, cy, doffs, baseline = 994.978, 311.193, 254.877, 31.086, 0.193001
    left, right, disparity = skimage.data.stereo_motorcycle()
    depth = (baseline * focal / (disparity + doffs)).astype("<f4")
    depth[~np.isfinite(depth)] = np.nan
    cam_left = CameraModel(741, 500, (focal, focal, cx, cy))
    cam_right = CameraModel(741, 500, (focal, focal, cx + doffs, cy))

    def header(t):
        return {"stamp": {"sec": t // 10**9, "nanosec": t % 10**9}, "frame_id": "cam"}

    def bag(path, rgb, cam, t, with_depth):
        streams = [("/cam/image_raw", "sensor_msgs/msg/Image",
                    [(t, message("sensor_msgs/msg/Image", header=header(t), **encode_image(rgb)))]),
                   ("/cam/camera_info", "sensor_msgs/msg/CameraInfo",
                    [(t, message("sensor_msgs/msg/CameraInfo", header=header(t), **camera_info_fields(cam, "cam")))])]
        if with_depth:
            streams.append(("/cam/depth", "sensor_msgs/msg/Image", [(t, message(
                "sensor_msgs/msg/Image", header=header(t), height=500, width=741, encoding="32FC1", step=741 * 4,
                data=np.frombuffer(depth.tobytes(), np.uint8)))]))
        return write_topics(path, streams)

    extractor = open_extractor(builtin_checkpoint(), device="cpu")
    build_map([bag(tmp_path / "left", left, cam_left, T_MAP, True)], "/cam/image_raw", tmp_path / "map", extractor,
              gate=KeyframeGateConfig(min_interval_s=0.0), depth_topic="/cam/depth", progress=False)
    world = {"map": tmp_path / "map", "extractor": extractor,
             "query_bag": bag(tmp_path / "right", right, cam_right, T_QUERY, False)}
    result, _ = replay_with(world, "binary,float,geometric", topic="/cam/image_raw")
    (c,) = [c for o in result.queries for c in o.result.accepted]
    rel = c.relative_pose
    assert rel is not None and rel.model == "pnp" and rel.metric
    assert rel.translation == pytest.approx([-baseline, 0, 0], abs=0.01)  # right camera 193 mm to the left's right
    assert rotation_angle_deg(rel.rotation, np.eye(3)) < 0.3
    with pytest.raises(Exception, match="no topic '/cam/nodepth'"):
        build_map([tmp_path / "left"], "/cam/image_raw", tmp_path / "map2", extractor, depth_topic="/cam/nodepth",
                  progress=False)


def test_eval_on_maps_reports_relative_pose_errors(tmp_path):
    """The map layout brings poses and stored cameras: eval scores the verified relative poses against
    them (Middlebury stereo: the right camera 193 mm to the right of the left one)."""
    import skimage.data

    from selavpr_ros.evaluation.evaluate import evaluate, load_eval_set
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.loop_closure.config import KeyframeGateConfig
    from selavpr_ros.models.zoo import builtin_checkpoint
    from selavpr_ros.offline.build_map import build_map
    from selavpr_ros.types import Pose

    focal, cx, cy, doffs, baseline = 994.978, 311.193, 254.877, 31.086, 0.193001
    left, right, _ = skimage.data.stereo_motorcycle()
    extractor = open_extractor(builtin_checkpoint(), device="cpu")
    for name, rgb, cam, x in (("left", left, CameraModel(741, 500, (focal, focal, cx, cy)), 0.0),
                              ("right", right, CameraModel(741, 500, (focal, focal, cx + doffs, cy)), baseline)):
        bag = write_image_bag(tmp_path / f"{name}_bag", [rgb], [T_MAP], poses=[Pose((x, 0.0, 0.0))], camera=cam,
                              frame_id="cam_optical")
        build_map([bag], "/camera/image_raw", tmp_path / name, extractor, pose_topic="/odom", save_images=True,
                  gate=KeyframeGateConfig(min_interval_s=0.0), progress=False)
    ev = load_eval_set(tmp_path / "left", "map", query_map=tmp_path / "right", cache_dir=tmp_path / "gt")
    assert ev.pose_axes == "optical" and ev.query_cameras[0].k[2] == pytest.approx(cx + doffs)
    report, _ = evaluate(extractor, ev, ["float", "geometric"], progress=False, work_dir=tmp_path / "w")
    errors = report.geometry["pose_errors"]
    assert errors["rotation_deg"]["n"] == 1 and errors["rotation_deg"]["max"] < 0.5
    assert errors["direction_deg"]["max"] < 2.0  # essential matrix: the baseline's direction (measured 0.5 deg)


def test_live_depth_gives_metric_loops_in_mapping_mode(tmp_path):
    """The node's depth subscription (parameter depth): a keyframe mapped with its depth image is later
    revisited by the other stereo camera, and the loop closure is metric; a broken depth image is
    counted and the frame still maps."""
    import skimage.data

    from selavpr_ros.bags.writer import camera_info_fields
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.models.zoo import builtin_checkpoint
    from selavpr_ros.node.params import validate
    from selavpr_ros.node.pipeline import Frame, VPRPipeline
    from selavpr_ros.transport.image_decoding import encode_image
    from selavpr_ros.transport.msgtypes import message

    focal, cx, cy, doffs, baseline = 994.978, 311.193, 254.877, 31.086, 0.193001
    left, right, disparity = skimage.data.stereo_motorcycle()
    depth = (baseline * focal / (disparity + doffs)).astype("<f4")
    depth_mm = np.nan_to_num(depth * 1000, nan=0, posinf=0).astype("<u2")

    def header(t):
        return {"stamp": {"sec": t // 10**9, "nanosec": t % 10**9}, "frame_id": "cam_optical"}

    params = validate({"map_path": str(tmp_path / "map"), "device": "cpu", "depth": True,
                       "loop_closure.retrieval.stages": "binary,float,geometric", "loop_closure.min_score": -1.0,
                       "loop_closure.consistency.n": 1, "loop_closure.keyframe.min_interval_s": 0.0})
    pipe = VPRPipeline(params, extractor=open_extractor(builtin_checkpoint(), device="cpu"))
    try:
        for t, rgb, cam_cx, depth_msg in (
                (10**9, left, cx, message("sensor_msgs/msg/Image", header=header(10**9), height=500, width=741,
                                          encoding="16UC1", step=741 * 2,
                                          data=np.frombuffer(depth_mm.tobytes(), np.uint8))),
                (2 * 10**9, left, cx, message("sensor_msgs/msg/Image", header=header(2 * 10**9), height=2, width=2,
                                              encoding="16UC1", step=4, data=np.zeros(8, np.uint8))),
                (100 * 10**9, right, cx + doffs, None)):
            cam = CameraModel(741, 500, (focal, focal, cam_cx, cy))
            pipe.cameras.add(t, message("sensor_msgs/msg/CameraInfo", header=header(t),
                                        **camera_info_fields(cam, "cam_optical")))
            if depth_msg is not None:
                pipe.depths.add(t, depth_msg)
            outcome = pipe.process(Frame(message("sensor_msgs/msg/Image", header=header(t), **encode_image(rgb)),
                                         t, "cam_optical"))
        assert pipe.depths.received == 2 and pipe.depths.errors == 1 and "not registered" in pipe.depths.last_error
        metric = [c for c in outcome.result.accepted if c.relative_pose is not None and c.relative_pose.metric]
        assert [c.match_keyframe_id for c in metric] == [0]  # the keyframe with depth; keyframe 1 has none
        assert metric[0].relative_pose.translation == pytest.approx([-baseline, 0, 0], abs=0.01)
    finally:
        pipe.close()
