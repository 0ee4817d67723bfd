"""``slam-eval``: what selavpr_ros loop closures do to a SLAM trajectory, end to end.

A recorded session (a simulated one by default) is run through the node's
pipeline in mapping mode, frame by frame, with the odometry pose at each
image stamp, its CameraInfo and (for metric closures) its depth image. The
accepted loop closures become pose-graph edges beside the odometry edges;
GTSAM optimises the graph with a Huber kernel on the loops; evo scores the
odometry-only and the optimised trajectories against the ground truth
(ATE RMSE after SE(3) alignment, RPE over 10 keyframes).

With the geometric stage off, a closure carries no relative pose; it enters
the graph as "the two keyframes are at the same place" with a covariance of
1 m and 5 degrees, which is what a back-end can do with place recognition
alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selavpr_ros.errors import BagError
from selavpr_ros.geometry.estimation import RelativePose, planar_pose, pose_errors
from selavpr_ros.slam.pose_graph import Edge, conjugate, odometry_edges, optimise, to_gtsam_covariance
from selavpr_ros.types import Pose

UNVERIFIED_SIGMA = (np.radians(5.0), 1.0)  # rad, m: a closure without a relative pose


@dataclass
class Closure:
    query: int  # keyframe index
    match: int
    transform: np.ndarray | None  # camera of ``match`` in the camera of ``query`` (verified), else None
    covariance: np.ndarray | None  # ROS order, package convention
    metric: bool = False
    false: bool = False


@dataclass
class SlamResult:
    stages: str
    keyframes: int
    closures: int
    false_closures: int
    metric_closures: int
    ate_odometry_m: float
    ate_optimised_m: float
    rpe_odometry_m: float
    rpe_optimised_m: float
    optimised: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 4, 4)))


def run_pipeline(bag: Path, map_dir: Path, stages: str, extractor, params: dict[str, Any] | None = None,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray, list[Closure]]:
    """Keyframe stamps, their odometry poses (N x (x, y, yaw)) and the accepted closures of one session."""
    from selavpr_ros.node.params import validate
    from selavpr_ros.node.pipeline import VPRPipeline
    from selavpr_ros.offline.replay import replay

    values = {"map_path": str(map_dir), "mode": "mapping", "device": "cpu", "session": bag.name,
              "loop_closure.retrieval.stages": stages, "loop_closure.keyframe.min_interval_s": 0.0,
              **(params or {})}
    pipeline = VPRPipeline(validate(values), extractor=extractor)
    try:
        result = replay(bag, "/camera/image_raw", pipeline, progress, camera_info="/camera/camera_info",
                        pose_topic="/odom", depth_topic="/camera/depth")
    finally:
        pipeline.close()
    stamps: list[int] = []
    odometry: list[tuple[float, float, float]] = []
    closures: list[Closure] = []
    index: dict[int, int] = {}
    for outcome in result.queries:  # keyframes, in stream order
        pose = outcome.frame.pose
        if pose is None:
            raise BagError(f"{bag}: /odom has no pose at image stamp {outcome.frame.stamp_ns * 1e-9:.3f} s")
        index[outcome.result.keyframe_id] = len(stamps)
        stamps.append(outcome.frame.stamp_ns)
        odometry.append((pose.position[0], pose.position[1], pose.yaw()))
        for c in outcome.result.accepted:
            rel = c.relative_pose
            transform = covariance = None
            if rel is not None:
                transform = np.eye(4)
                transform[:3, :3], transform[:3, 3] = rel.rotation, rel.translation
                covariance = rel.covariance
            closures.append(Closure(len(stamps) - 1, index[c.match_keyframe_id], transform, covariance,
                                    bool(rel is not None and rel.metric)))
    odo = np.asarray(odometry)
    odo[:, 2] = np.unwrap(odo[:, 2])
    return np.asarray(stamps, np.int64), odo, closures


def loop_edges(closures: list[Closure], mount: np.ndarray) -> list[Edge]:
    """Closures as edges between the robot's base poses (``mount``: the camera's pose in the base)."""
    edges = []
    for c in closures:
        if c.transform is None:  # place recognition only: the two bases at the same place
            rot, trans = UNVERIFIED_SIGMA
            cov = np.diag([rot**2] * 3 + [trans**2] * 3)
            edges.append(Edge(c.query, c.match, np.eye(4), cov, "loop"))
            continue
        assert c.covariance is not None
        body, cov = conjugate(c.transform, to_gtsam_covariance(c.transform, c.covariance), mount)
        edges.append(Edge(c.query, c.match, body, cov, "loop"))
    return edges


def mark_false(closures: list[Closure], truth: np.ndarray, mount: np.ndarray, max_distance: float = 10.0,
               max_rotation_deg: float = 10.0, max_translation_m: float = 1.0) -> None:
    """Mark closures between places farther apart than ``max_distance`` or whose relative pose is
    wrong by more than the given errors (ground truth: base poses N x (x, y, yaw))."""
    for c in closures:
        q, m = planar_pose(*truth[c.query]), planar_pose(*truth[c.match])
        if np.linalg.norm(q[:2, 3] - m[:2, 3]) > max_distance:
            c.false = True
            continue
        if c.transform is None:
            continue
        cam = np.linalg.inv(q @ mount) @ (m @ mount)
        est = RelativePose(True, "", model="pnp" if c.metric else "essential", rotation=c.transform[:3, :3],
                           translation=c.transform[:3, 3], metric=c.metric)
        e = pose_errors(est, cam[:3, :3], cam[:3, 3])
        c.false = (e["rotation_deg"] or 0.0) > max_rotation_deg or (e["translation_m"] or 0.0) > max_translation_m


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


def slam_eval(bag: Path, truth: np.ndarray, truth_stamps: np.ndarray, work: Path, stages: str, extractor,
              mount: np.ndarray, params: dict[str, Any] | None = None, progress: bool = True) -> SlamResult:
    """One run: pipeline, graph, optimisation, scores. ``truth``: base poses (x, y, yaw) at ``truth_stamps``."""
    import shutil

    map_dir = work / f"map_{stages.replace(',', '_')}"
    shutil.rmtree(map_dir, ignore_errors=True)
    stamps, odometry, closures = run_pipeline(bag, map_dir, stages, extractor, params, progress)
    idx = np.searchsorted(truth_stamps, stamps)
    gt = truth[np.clip(idx, 0, len(truth) - 1)]
    mark_false(closures, gt, mount)
    initial = {i: planar_pose(*p) for i, p in enumerate(odometry)}
    edges = odometry_edges(odometry) + loop_edges(closures, mount)
    optimised = optimise(initial, edges, prior_key=0)
    truth_poses = np.array([planar_pose(*p) for p in gt])
    odo_poses = np.array([initial[i] for i in range(len(initial))])
    opt_poses = np.array([optimised[i] for i in range(len(initial))])
    ate_odo, rpe_odo = trajectory_errors(truth_poses, odo_poses, stamps)
    ate_opt, rpe_opt = trajectory_errors(truth_poses, opt_poses, stamps)
    return SlamResult(stages, len(stamps), len(closures), sum(c.false for c in closures),
                      sum(c.metric for c in closures), ate_odo, ate_opt, rpe_odo, rpe_opt, opt_poses)


def result_dict(r: SlamResult) -> dict[str, Any]:
    d = asdict(r)
    d.pop("optimised")
    return d


# What slam-eval passes to the node per run: the geometric stage decides on its own (any retrieval score,
# confirmed by 2 consecutive queries); retrieval alone needs a score (the built-in model's true matches
# score above 0.3 here) and the same confirmation.
RUN_PARAMS = {
    "binary,float": {"loop_closure.min_score": 0.3, "loop_closure.consistency.n": 2, "loop_closure.top_n": 3},
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


def plot_trajectories(path: Path, truth: np.ndarray, odometry: np.ndarray, results: list[SlamResult]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot(truth[:, 0], truth[:, 1], "k-", lw=2, label="ground truth")
    ax.plot(odometry[:, 0], odometry[:, 1], "r--", lw=1, label="odometry")
    for r in results:
        ax.plot(r.optimised[:, 0, 3], r.optimised[:, 1, 3], lw=1,
                label=f"optimised, {r.stages} (ATE {r.ate_optimised_m:.2f} m)")
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
