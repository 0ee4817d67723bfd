"""``slam-eval``: what selavpr_ros loop closures do to a SLAM trajectory, end to end.

Each recorded session (simulated by default) runs through the node's
pipeline in mapping mode (``replay``: every image with the odometry pose at
its stamp, its CameraInfo and, for metric closures, its depth image), into
one map: session A first, then session B (another robot id, or a later
visit) which also finds its place in A's keyframes. The back-end then does
what a SLAM user's back-end does with the node's output and nothing else: it
takes the **published pose-graph edges** (:class:`PoseGraphEdge`: keys,
robot ids, relative pose of the robot frames, covariance in GTSAM order) as
they are, adds each session's odometry chain, anchors session B by its
first edge into A, and optimises with GTSAM (Huber kernel on the loops).
evo scores every trajectory against the ground truth: ATE RMSE after SE(3)
alignment (per session, and of A and B together under one alignment, which
shows whether B was put in the right place) and RPE over 10 keyframes.

With the geometric stage off a closure has no relative pose; the node then
publishes it only as a "same place" edge (``edges.same_place_sigma_m``): 1 m
and 5 degrees here, which is what a back-end can do with place recognition
alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selavpr_ros.errors import BagError
from selavpr_ros.geometry.estimation import RelativePose, planar_pose, pose_errors
from selavpr_ros.loop_closure.edges import PoseGraphEdge
from selavpr_ros.slam.pose_graph import Edge, odometry_edges, optimise
from selavpr_ros.types import Pose

IMAGE, CAMERA_INFO, DEPTH, ODOM = "/camera/image_raw", "/camera/camera_info", "/camera/depth", "/odom"
ROBOT_BITS = 40  # graph key = robot_id << ROBOT_BITS | keyframe key (as Kimera-Multi prefixes keys per robot)


def graph_key(robot_id: int, key: int) -> int:
    return (int(robot_id) << ROBOT_BITS) | int(key)


@dataclass
class SessionTrack:
    """What one session contributed: its keyframes (map ids), their odometry and true base poses."""

    name: str
    robot_id: int
    keyframe_ids: list[int]
    stamps: np.ndarray
    odometry: np.ndarray  # (N, 3) x, y, yaw of the base in the session's odometry frame
    truth: np.ndarray  # (N, 3) x, y, yaw of the base in the world

    def graph_keys(self) -> list[int]:
        return [graph_key(self.robot_id, k) for k in self.keyframe_ids]


@dataclass
class LoopEdge:
    """A published edge and what the ground truth says of it."""

    edge: PoseGraphEdge
    session: str  # of the query
    inter_session: bool
    false: bool = False
    squared_error: float = float("nan")  # Mahalanobis, against the truth (edges with a relative pose)


@dataclass
class SlamResult:
    stages: str
    sessions: dict[str, dict[str, Any]]  # per session: keyframes, closures, false, metric, ATE/RPE
    joint_ate_optimised_m: float | None  # every session under one alignment (None: B was not relocalised)
    relocalised: bool
    optimised: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # session -> (N, 4, 4)


def bag_frames(bag: Path, base_frame: str = "") -> tuple[str, str, np.ndarray]:
    """(camera frame, base frame, camera mount: 4 x 4 pose of the camera in the base) of a session bag.

    The base frame is the odometry's ``child_frame_id`` unless given; the mount comes from ``/tf_static``.
    Missing topics and a camera TF does not connect to the odometry's frame are errors naming them.
    """
    from selavpr_ros.bags.poses import load_pose_track
    from selavpr_ros.bags.reader import iter_images, open_bags, topic_summary
    from selavpr_ros.offline.replay import static_transforms

    with open_bags([bag]) as reader:
        topics = topic_summary(reader)
        for topic, what in ((IMAGE, "images"), (CAMERA_INFO, "the camera model (sensor_msgs/CameraInfo)"),
                            (ODOM, "odometry (nav_msgs/Odometry)")):
            if topic not in topics:
                raise BagError(f"{bag}: no {topic} topic; slam-eval needs {what} (topics: {', '.join(sorted(topics))})")
        odom = load_pose_track(reader, ODOM)
        base = base_frame.lstrip("/") or odom.child_frame_id
        if not base:
            raise BagError(f"{bag}: {ODOM} names no child_frame_id; give the robot frame with --base-frame")
        camera = next(iter(iter_images(reader, IMAGE))).frame_id.lstrip("/")
        transforms = static_transforms(reader)
        pose = transforms.lookup(base, camera, int(odom.stamps_ns[0]))
    if pose is None:
        raise BagError(f"{bag}: /tf_static does not connect the camera frame {camera!r} to {base!r}, the frame "
                       f"{ODOM} moves (child_frame_id); the camera's mount on the robot is unknown")
    return camera, base, pose.matrix()


def run_session(bag: Path, map_dir: Path, session: str, robot_id: int, stages: str, extractor, base_frame: str,
                params: dict[str, Any] | None = None,
                progress: bool = True) -> tuple[list[int], np.ndarray, np.ndarray, list[PoseGraphEdge]]:
    """One session through the node's pipeline in mapping mode: its keyframe ids, stamps, odometry poses
    (N x (x, y, yaw)) and the pose-graph edges the node published."""
    from selavpr_ros.node.params import validate
    from selavpr_ros.node.pipeline import VPRPipeline
    from selavpr_ros.offline.replay import replay

    values = {"map_path": str(map_dir), "mode": "mapping", "device": "cpu", "session": session,
              "robot_id": robot_id, "edges.base_frame": base_frame,
              "loop_closure.retrieval.stages": stages, "loop_closure.keyframe.min_interval_s": 0.0,
              **(params or {})}
    pipeline = VPRPipeline(validate(values), extractor=extractor)
    try:
        result = replay(bag, IMAGE, pipeline, progress, camera_info=CAMERA_INFO, pose_topic=ODOM, depth_topic=DEPTH)
    finally:
        pipeline.close()
    ids: list[int] = []
    stamps: list[int] = []
    odometry: list[tuple[float, float, float]] = []
    edges: list[PoseGraphEdge] = []
    for outcome in result.queries:  # keyframes, in stream order
        pose = outcome.frame.pose
        if pose is None:
            raise BagError(f"{bag}: {ODOM} has no pose at image stamp {outcome.frame.stamp_ns * 1e-9:.3f} s")
        ids.append(outcome.result.keyframe_id)
        stamps.append(outcome.frame.stamp_ns)
        odometry.append((pose.position[0], pose.position[1], pose.yaw()))
        edges += outcome.edges
    odo = np.asarray(odometry)
    odo[:, 2] = np.unwrap(odo[:, 2])
    return ids, np.asarray(stamps, np.int64), odo, edges


def is_false(edge: PoseGraphEdge, truth_from: np.ndarray, truth_to: np.ndarray, mount: np.ndarray,
             max_distance: float = 10.0, max_rotation_deg: float = 10.0, max_translation_m: float = 1.0) -> bool:
    """Whether an edge joins places farther apart than ``max_distance``, or its relative pose is wrong by
    more than the given errors (ground truth: base poses (x, y, yaw); ``mount``: the camera in the base)."""
    q, m = planar_pose(*truth_from), planar_pose(*truth_to)
    if np.linalg.norm(q[:2, 3] - m[:2, 3]) > max_distance:
        return True
    if not edge.model:  # a "same place" edge claims nothing more
        return False
    cam_truth = np.linalg.inv(q @ mount) @ (m @ mount)
    cam_est = np.linalg.inv(mount) @ edge.transform @ mount  # the edge between the cameras again
    est = RelativePose(True, "", model=edge.model, rotation=cam_est[:3, :3],  # type: ignore[arg-type]
                       translation=cam_est[:3, 3], metric=edge.metric)
    e = pose_errors(est, cam_truth[:3, :3], cam_truth[:3, 3])
    return (e["rotation_deg"] or 0.0) > max_rotation_deg or (e["translation_m"] or 0.0) > max_translation_m


def squared_error(edge: PoseGraphEdge, truth_from: np.ndarray, truth_to: np.ndarray) -> float:
    """The edge's error against the true relative base pose, squared and weighted by its own covariance
    (Mahalanobis; a 6-dof chi-square with median 5.35 when the covariance is right)."""
    import gtsam

    true = np.linalg.inv(planar_pose(*truth_from)) @ planar_pose(*truth_to)
    error = gtsam.Pose3.Logmap(gtsam.Pose3(np.linalg.inv(edge.transform) @ true))  # right tangent, as the covariance
    return float(error @ np.linalg.solve(edge.covariance, error))


def trajectory_errors(truth: np.ndarray, estimate: np.ndarray, stamps: np.ndarray) -> tuple[float, float]:
    """(ATE RMSE after SE(3) alignment, RPE RMSE over 10 keyframes), metres, with evo."""
    from evo.core import metrics
    from evo.core.trajectory import PoseTrajectory3D

    def trajectory(poses: np.ndarray) -> PoseTrajectory3D:
        return PoseTrajectory3D(poses_se3=list(poses), timestamps=stamps * 1e-9)

    ref, est = trajectory(truth), trajectory(estimate)
    est.align(ref, correct_scale=False)
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((ref, est))
    rpe = metrics.RPE(metrics.PoseRelation.translation_part, delta=10, delta_unit=metrics.Unit.frames,
                      all_pairs=False)
    rpe.process_data((ref, trajectory(estimate)))
    return float(ape.get_statistic(metrics.StatisticsType.rmse)), float(rpe.get_statistic(metrics.StatisticsType.rmse))


def _initial(tracks: list[SessionTrack], loops: list[LoopEdge]) -> tuple[dict[int, np.ndarray], bool]:
    """Initial poses: the first session in its odometry frame; each later one placed in an earlier
    session's frame (its own odometry frame is unknown to the back-end) by the edge whose placement
    most of its other edges agree with (within 1 m), else left out."""
    initial: dict[int, np.ndarray] = {}
    placed = True
    for track in tracks:
        odo = [planar_pose(*p) for p in track.odometry]
        keys = track.graph_keys()
        if not initial:
            initial.update(zip(keys, odo))
            continue
        index = {k: i for i, k in enumerate(keys)}
        corrections = []
        for le in loops:
            key_from, key_to = graph_key(le.edge.robot_from, le.edge.key_from), graph_key(le.edge.robot_to,
                                                                                         le.edge.key_to)
            if key_from in index and key_to in initial:
                at = initial[key_to] @ np.linalg.inv(le.edge.transform)
                corrections.append(at @ np.linalg.inv(odo[index[key_from]]))
        if not corrections:
            placed = False
            continue
        shifts = np.array([c[:3, 3] for c in corrections])
        support = [(np.linalg.norm(shifts - c[:3, 3], axis=1) < 1.0).sum() for c in corrections]
        correction = corrections[int(np.argmax(support))]  # the first of the best supported
        initial.update((k, correction @ p) for k, p in zip(keys, odo))
    return initial, placed


def slam_eval(sessions: list[tuple[Path, str, int, np.ndarray, np.ndarray]], work: Path, stages: str, extractor,
              params: dict[str, Any] | None = None, base_frame: str = "", progress: bool = True,
              robust: str = "gnc") -> SlamResult:
    """One run over ``sessions`` (bag, session name, robot id, true base poses (x, y, yaw), their stamps),
    mapped in that order into one map: pipeline, published edges, graph, optimisation, scores."""
    import shutil

    map_dir = work / f"map_{stages.replace(',', '_')}"
    shutil.rmtree(map_dir, ignore_errors=True)
    tracks: list[SessionTrack] = []
    loops: list[LoopEdge] = []
    mount = np.eye(4)
    for bag, name, robot_id, truth, truth_stamps in sessions:
        _, base, mount = bag_frames(bag, base_frame)
        ids, stamps, odometry, edges = run_session(bag, map_dir, name, robot_id, stages, extractor, base, params,
                                                   progress)
        gt = truth[np.clip(np.searchsorted(truth_stamps, stamps), 0, len(truth) - 1)]
        tracks.append(SessionTrack(name, robot_id, ids, stamps, odometry, gt))
        loops += [LoopEdge(e, name, False) for e in edges]
    truth_of = {k: t for track in tracks for k, t in zip(track.graph_keys(), track.truth)}
    session_of = {k: track.name for track in tracks for k in track.graph_keys()}
    for le in loops:
        le.inter_session = session_of[graph_key(le.edge.robot_to, le.edge.key_to)] != le.session
        truth_from = truth_of[graph_key(le.edge.robot_from, le.edge.key_from)]
        truth_to = truth_of[graph_key(le.edge.robot_to, le.edge.key_to)]
        le.false = is_false(le.edge, truth_from, truth_to, mount)
        if le.edge.model:
            le.squared_error = squared_error(le.edge, truth_from, truth_to)
    initial, placed = _initial(tracks, loops)
    graph = [e for t in tracks if t.graph_keys()[0] in initial for e in odometry_edges(t.odometry, t.graph_keys())]
    graph += [Edge(graph_key(le.edge.robot_from, le.edge.key_from), graph_key(le.edge.robot_to, le.edge.key_to),
                   le.edge.transform, le.edge.covariance, "loop") for le in loops
              if graph_key(le.edge.robot_from, le.edge.key_from) in initial
              and graph_key(le.edge.robot_to, le.edge.key_to) in initial]
    optimised = optimise(initial, graph, prior_key=tracks[0].graph_keys()[0], robust=robust)
    per_session: dict[str, dict[str, Any]] = {}
    poses: dict[str, np.ndarray] = {}
    for track in tracks:
        truth_poses = np.array([planar_pose(*p) for p in track.truth])
        odo_poses = np.array([planar_pose(*p) for p in track.odometry])
        mine = [le for le in loops if le.session == track.name]
        row: dict[str, Any] = {
            "robot_id": track.robot_id, "keyframes": len(track.keyframe_ids), "closures": len(mine),
            "false_closures": sum(le.false for le in mine), "metric_closures": sum(le.edge.metric for le in mine),
            "inter_session_closures": sum(le.inter_session for le in mine),
        }
        errors = [le.squared_error for le in mine if le.edge.model]
        if errors:  # how honest the published covariances are: 5.35 expected
            row["edge_squared_error_median"] = float(np.median(errors))
        row["ate_odometry_m"], row["rpe_odometry_m"] = trajectory_errors(truth_poses, odo_poses, track.stamps)
        if track.graph_keys()[0] in optimised:
            poses[track.name] = np.array([optimised[k] for k in track.graph_keys()])
            row["ate_optimised_m"], row["rpe_optimised_m"] = trajectory_errors(truth_poses, poses[track.name],
                                                                               track.stamps)
        per_session[track.name] = row
    joint = None
    if placed and len(tracks) > 1:
        order = np.argsort(np.concatenate([t.stamps for t in tracks]), kind="stable")
        truth_all = np.concatenate([[planar_pose(*p) for p in t.truth] for t in tracks])[order]
        est_all = np.concatenate([poses[t.name] for t in tracks])[order]
        joint = trajectory_errors(truth_all, est_all, np.concatenate([t.stamps for t in tracks])[order])[0]
    return SlamResult(stages, per_session, joint, placed, poses)


def result_dict(r: SlamResult) -> dict[str, Any]:
    return {"stages": r.stages, "sessions": r.sessions, "joint_ate_optimised_m": r.joint_ate_optimised_m,
            "relocalised": r.relocalised}


# What slam-eval passes to the node per run: the geometric stage decides on its own (any retrieval score,
# confirmed by 2 consecutive queries); retrieval alone needs a score (the built-in model's true matches
# score above 0.3 here) and the same confirmation, and its closures are published as "same place" edges.
RUN_PARAMS = {
    "binary,float": {"loop_closure.min_score": 0.3, "loop_closure.consistency.n": 2, "loop_closure.top_n": 3,
                     "edges.same_place_sigma_m": 1.0, "edges.same_place_sigma_deg": 5.0},
    "binary,float,geometric": {"loop_closure.min_score": -1.0, "loop_closure.consistency.n": 2,
                               "loop_closure.top_n": 3},
}


def truth_from_bag(bag: Path, topic: str = "/ground_truth") -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth base poses (N x (x, y, yaw)) and stamps from a nav_msgs/Odometry (or pose) topic."""
    from selavpr_ros.bags.poses import load_pose_track
    from selavpr_ros.bags.reader import open_bags

    with open_bags([bag]) as reader:
        track = load_pose_track(reader, topic)
    yaw = np.unwrap([Pose((0.0, 0.0, 0.0), tuple(q)).yaw() for q in track.orientations])
    return np.column_stack([track.positions[:, 0], track.positions[:, 1], yaw]), track.stamps_ns


def odometry_from_bag(bag: Path) -> np.ndarray:
    """(N, 2) odometry positions of a session bag (for the plot)."""
    from selavpr_ros.bags.poses import load_pose_track
    from selavpr_ros.bags.reader import open_bags

    with open_bags([bag]) as reader:
        return load_pose_track(reader, ODOM).positions[:, :2]


def plot_trajectories(path: Path, truths: dict[str, np.ndarray], odometry: dict[str, np.ndarray],
                      results: list[SlamResult]) -> Path:
    """Ground truth, odometry and every run's optimised trajectory, one panel per session."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(truths)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5), squeeze=False)
    for ax, name in zip(axes[0], names):
        truth = truths[name]
        ax.plot(truth[:, 0], truth[:, 1], "k-", lw=2, label="ground truth")
        ax.plot(odometry[name][:, 0], odometry[name][:, 1], "r--", lw=1, label="odometry (own frame)")
        for r in results:
            if name in r.optimised:
                opt = r.optimised[name]
                ate = r.sessions[name].get("ate_optimised_m", float("nan"))
                ax.plot(opt[:, 0, 3], opt[:, 1, 3], lw=1, label=f"optimised, {r.stages} (ATE {ate:.2f} m)")
        ax.set_title(f"session {name}")
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
