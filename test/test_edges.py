"""Pose-graph edges: the covariance conventions against GTSAM, keys and robot ids, camera mounts, the
pose_graph_tools wire layout, and SLAM ids and robot ids stored in the map."""

from __future__ import annotations

import sqlite3

import cv2
import numpy as np
import pytest

from selavpr_ros.errors import MapError
from selavpr_ros.geometry.estimation import RelativePose
from selavpr_ros.loop_closure.config import ConsistencyConfig, KeyframeGateConfig, LoopClosureConfig
from selavpr_ros.loop_closure.edges import (
    EdgeConfig,
    closure_edges,
    conjugate,
    edge_fields,
    pose_graph_fields,
    tangent_covariance,
)
from selavpr_ros.loop_closure.engine import LoopCandidate, LoopClosureEngine, Status, Verification
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.retrieval.config import RetrievalConfig
from selavpr_ros.types import DescriptorLayout, KeyframeRecord

gtsam = pytest.importorskip("gtsam")


def _transform(rvec, t) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = cv2.Rodrigues(np.asarray(rvec, np.float64))[0]
    out[:3, 3] = t
    return out


def _right_tangent_covariance(nominal: np.ndarray, samples: list[np.ndarray]) -> np.ndarray:
    xi = [gtsam.Pose3.Logmap(gtsam.Pose3(np.linalg.inv(nominal) @ s)) for s in samples]
    return np.cov(np.array(xi).T)


def test_covariance_conversion_and_conjugation_match_gtsam_tangent():
    """A perturbation in the package's convention (rotation about the from-frame axes, additive
    translation) maps onto GTSAM's right tangent as tangent_covariance says; moving the edge onto the
    bodies carrying the cameras moves its covariance as conjugate says. Both checked by sampling."""
    rng = np.random.default_rng(0)
    transform = _transform([0.2, -0.4, 0.3], (1.0, -2.0, 0.5))
    cov = np.diag(rng.uniform(1e-6, 1e-4, 6))
    samples = []
    for dt_w in rng.multivariate_normal(np.zeros(6), cov, 4000):
        perturbed = np.eye(4)
        perturbed[:3, :3] = cv2.Rodrigues(dt_w[3:])[0] @ transform[:3, :3]
        perturbed[:3, 3] = transform[:3, 3] + dt_w[:3]
        samples.append(perturbed)
    tangent = tangent_covariance(transform, cov)
    assert np.allclose(tangent, _right_tangent_covariance(transform, samples), atol=0.1 * cov.max())

    mount_q, mount_m = _transform([1.2, -1.2, 1.2], (0.1, 0.0, 1.2)), _transform([1.1, -1.3, 1.2], (0.0, 0.2, 1.0))
    body, body_cov = conjugate(transform, tangent, mount_q, mount_m)
    assert np.allclose(body, mount_q @ transform @ np.linalg.inv(mount_m))
    moved = [mount_q @ s @ np.linalg.inv(mount_m) for s in samples]
    assert np.allclose(body_cov, _right_tangent_covariance(body, moved), atol=0.1 * body_cov.max())


def _candidate(status=Status.ACCEPTED, verified=True, match_id=7, slam_id=None, robot=2, frame="cam"):
    rel = RelativePose(True, "ok", 80, 60, "pnp", cv2.Rodrigues(np.array([0.0, 0.1, 0.0]))[0],
                       np.array([0.3, 0.0, 1.0]), True, np.diag([1e-4] * 3 + [1e-5] * 3))
    c = LoopCandidate(5, 9, match_id, 3, 4, "s", 0.7, 10, -1, 1, status, "r", match_slam_id=slam_id,
                      match_robot_id=robot, match_frame_id=frame)
    if verified:
        c.verification, c.geometry = Verification.VERIFIED, rel
    return c


def test_closure_edges_keys_robots_mounts_and_same_place():
    accepted, rejected = _candidate(), _candidate(Status.GEOMETRY_REJECTED)
    edges, problem = closure_edges([accepted, rejected], query_key=11, robot_id=0, stamp_ns=5, frame_id="cam",
                                   config=EdgeConfig())
    assert problem == "" and len(edges) == 1
    e = edges[0]
    assert (e.key_from, e.key_to, e.robot_from, e.robot_to, e.frame_id) == (11, 7, 0, 2, "cam")
    assert e.model == "pnp" and e.metric and np.allclose(e.transform[:3, 3], (0.3, 0.0, 1.0))
    assert np.allclose(e.covariance, tangent_covariance(e.transform, accepted.geometry.covariance))
    # the SLAM's own id of the matched keyframe wins over the map's keyframe id
    assert closure_edges([_candidate(slam_id=4242)], 11, 0, 5, "cam", EdgeConfig())[0][0].key_to == 4242
    # an accepted closure without a relative pose: an edge only when "same place" edges are asked for
    unverified = _candidate(verified=False)
    assert closure_edges([unverified], 11, 0, 5, "cam", EdgeConfig())[0] == []
    (same,), _ = closure_edges([unverified], 11, 0, 5, "cam", EdgeConfig(same_place_sigma_m=1.0))
    assert same.model == "" and np.allclose(same.transform, np.eye(4))
    assert np.allclose(np.diag(same.covariance), [np.radians(5) ** 2] * 3 + [1.0] * 3)
    # between robot frames: each camera's mount from the lookup; an unknown mount leaves the edge out
    mount = _transform([1.2, -1.2, 1.2], (0.1, 0.0, 1.2))
    config = EdgeConfig(base_frame="base_link")
    (body,), _ = closure_edges([accepted], 11, 0, 5, "cam", config, lambda frame: mount)
    assert body.frame_id == "base_link"
    assert np.allclose(body.transform, mount @ edges[0].transform @ np.linalg.inv(mount))
    none, problem = closure_edges([accepted], 11, 0, 5, "cam", config, lambda frame: None)
    assert none == [] and "'cam'" in problem and "'base_link'" in problem
    with pytest.raises(Exception, match="same_place_sigma_m"):
        EdgeConfig(same_place_sigma_m=-1.0)


# The layout of pose_graph_tools_msgs (Kimera-Multi's edges), written from its field list.
PGT = {
    "pose_graph_tools_msgs/msg/PoseGraphNode": "std_msgs/Header header\nint32 robot_id\nuint64 key\n"
                                               "geometry_msgs/Pose pose\n",
    "pose_graph_tools_msgs/msg/PoseGraphEdge": "std_msgs/Header header\nuint64 key_from\nuint64 key_to\n"
                                               "int32 robot_from\nint32 robot_to\nint32 type\nint32 ODOM=0\n"
                                               "int32 LOOPCLOSE=1\ngeometry_msgs/Pose pose\n"
                                               "float64[36] covariance\n",
    "pose_graph_tools_msgs/msg/PoseGraph": "std_msgs/Header header\npose_graph_tools_msgs/PoseGraphNode[] nodes\n"
                                           "pose_graph_tools_msgs/PoseGraphEdge[] edges\n",
}


def test_published_edges_have_the_pose_graph_tools_wire_layout():
    """The same values serialise to the same CDR bytes as pose_graph_tools_msgs/PoseGraph: a back-end
    reading those edges reads ours (the type name aside)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from selavpr_ros.transport.msgtypes import message, typestore

    store = get_typestore(Stores.ROS2_HUMBLE)  # ours and theirs side by side, the shared store untouched
    types = {k: v for k, v in typestore().fielddefs.items() if k.startswith("selavpr_ros/")}
    for name, text in PGT.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    edges, _ = closure_edges([_candidate(), _candidate(match_id=8, slam_id=2**40)], 2**33, 3, 1_700_000_000_123,
                             "cam", EdgeConfig())
    fields = pose_graph_fields(edges, 1_700_000_000_123, "cam")
    assert fields["edges"][1]["key_to"] == edge_fields(edges[1])["key_to"] == 2**40

    graph = message("selavpr_ros/msg/PoseGraph", **fields)
    ours = store.serialize_cdr(graph, "selavpr_ros/msg/PoseGraph")
    assert ours == store.serialize_cdr(graph, "pose_graph_tools_msgs/msg/PoseGraph")  # field by field, same bytes
    back = store.deserialize_cdr(ours, "pose_graph_tools_msgs/msg/PoseGraph")
    assert [(e.key_from, e.key_to, e.robot_from, e.robot_to, e.type) for e in back.edges] == [
        (2**33, 7, 3, 2, 1), (2**33, 2**40, 3, 2, 1)]
    assert np.allclose(np.asarray(back.edges[0].covariance).reshape(6, 6), edges[0].covariance)


def _engine(db: MapDatabase, robot_id: int, session: str) -> LoopClosureEngine:
    return LoopClosureEngine(db, LoopClosureConfig(
        mode="mapping", session=session, robot_id=robot_id, min_score=0.0, keyframe=KeyframeGateConfig(60.0),
        consistency=ConsistencyConfig(n=1), retrieval=RetrievalConfig(stages=["binary", "float"], k=5)))


def test_map_keeps_slam_ids_and_robot_ids_and_a_session_has_one_robot(tmp_path):
    from test_loop_closure import frame

    db = MapDatabase.create(tmp_path / "map", DescriptorLayout(512, 32), "t:1")
    eng = _engine(db, robot_id=4, session="r4")
    first = eng.process(frame(0), KeyframeRecord(stamp_ns=1, frame_id="cam", slam_id=900))
    skipped = eng.process(frame(1), KeyframeRecord(stamp_ns=2, frame_id="cam"))  # inside the 60 s gate
    forced = eng.process(frame(1), KeyframeRecord(stamp_ns=3, frame_id="cam", slam_id=901), gate=False)
    assert first.is_keyframe and not skipped.is_keyframe and forced.is_keyframe
    other = _engine(db, robot_id=5, session="r5")
    revisit = other.process(frame(0, seed=9), KeyframeRecord(stamp_ns=10**12, frame_id="cam"))
    best = revisit.candidates[0]
    assert (best.match_keyframe_id, best.match_slam_id, best.match_robot_id, best.robot_id) == (0, 900, 4, 5)
    records = db.records([0, 1, 2])
    assert [(r.slam_id, r.robot_id) for r in records] == [(900, 4), (901, 4), (None, 5)]
    with pytest.raises(MapError, match="belongs to robot 4"):
        _engine(db, robot_id=6, session="r4")
    db.close()

    # a map written before these columns existed: readers see no ids, a writer adds the columns
    conn = sqlite3.connect(tmp_path / "map" / "map.sqlite")
    conn.execute("ALTER TABLE keyframes DROP COLUMN slam_id")
    conn.execute("ALTER TABLE sessions DROP COLUMN robot_id")
    conn.commit()
    conn.close()
    with MapDatabase.open(tmp_path / "map", "r") as old:
        assert [(r.slam_id, r.robot_id) for r in old.records([0, 1, 2])] == [(None, 0)] * 3
    with MapDatabase.open(tmp_path / "map", "w") as upgraded:
        assert upgraded.records([0])[0].robot_id == 0
        upgraded.add(frame(3), [KeyframeRecord(stamp_ns=5, slam_id=77)], session="new")
        assert upgraded.records([3])[0].slam_id == 77
