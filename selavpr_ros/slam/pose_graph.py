"""A pose graph from odometry and loop closures, optimised with GTSAM, robust to wrong loop edges.

Edges carry the pose of ``key_to`` in the frame of ``key_from`` and a 6 x 6
covariance in GTSAM's Pose3 tangent order (rotation first, perturbation on
the right), the convention of the node's published
:class:`~selavpr_ros.loop_closure.edges.PoseGraphEdge`, so its loop edges
enter the graph as they are. Covariances are checked: a NaN or a matrix
that is not positive definite never reaches the optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from selavpr_ros.errors import ConfigError
from selavpr_ros.geometry.estimation import planar_pose


@dataclass
class Edge:
    key_from: int
    key_to: int
    transform: np.ndarray  # 4 x 4: pose of key_to in key_from's frame
    covariance: np.ndarray  # 6 x 6 in GTSAM's Pose3 tangent order (rotation first, right perturbation)
    kind: Literal["odometry", "loop"] = "loop"


def check_covariance(cov: np.ndarray, what: str) -> np.ndarray:
    cov = np.asarray(cov, np.float64).reshape(6, 6)
    if not np.isfinite(cov).all():
        raise ConfigError(f"{what}: covariance holds NaN or infinity")
    cov = 0.5 * (cov + cov.T)
    if np.linalg.eigvalsh(cov).min() <= 0:
        raise ConfigError(f"{what}: covariance is not positive definite")
    return cov


ROBUST = ("gnc", "huber")


def optimise(initial: dict[int, np.ndarray], edges: list[Edge], prior_key: int, robust: str = "gnc",
             huber: float = 1.345, prior_sigma: float = 1e-3) -> dict[int, np.ndarray]:
    """Optimise the graph; returns the optimised poses.

    ``robust="gnc"``: graduated non-convexity with a truncated least-squares loss on the loop
    edges, odometry and the prior known inliers, as robust multi-robot back-ends (Kimera-RPGO)
    do: a loop edge that disagrees with the rest beyond its 99 % chi-square bound ends with
    weight 0 whatever its covariance claims. ``"huber"``: Levenberg-Marquardt with loop edges
    under a Huber kernel, whose pull on a gross outlier is bounded but never zero.
    """
    import gtsam

    if robust not in ROBUST:
        raise ConfigError(f"robust must be one of {', '.join(ROBUST)}, got {robust!r}")
    graph = gtsam.NonlinearFactorGraph()
    values = gtsam.Values()
    for key, pose in initial.items():
        values.insert(key, gtsam.Pose3(pose))
    graph.add(gtsam.PriorFactorPose3(prior_key, gtsam.Pose3(initial[prior_key]),
                                     gtsam.noiseModel.Isotropic.Sigma(6, prior_sigma)))
    inliers = [0]
    for e in edges:
        if e.key_from not in initial or e.key_to not in initial:
            missing = e.key_from if e.key_from not in initial else e.key_to
            raise ConfigError(f"{e.kind} edge {e.key_from} -> {e.key_to}: unknown key {missing}")
        cov = check_covariance(e.covariance, f"{e.kind} edge {e.key_from} -> {e.key_to}")
        gaussian = gtsam.noiseModel.Gaussian.Covariance(cov)
        noise = gtsam.noiseModel.Robust.Create(gtsam.noiseModel.mEstimator.Huber.Create(huber), gaussian) \
            if e.kind == "loop" and robust == "huber" else gaussian
        if e.kind != "loop":
            inliers.append(graph.size())
        graph.add(gtsam.BetweenFactorPose3(e.key_from, e.key_to, gtsam.Pose3(e.transform), noise))
    lm = gtsam.LevenbergMarquardtParams()
    lm.setMaxIterations(100)
    if robust == "huber" or len(inliers) == graph.size():
        return _poses(gtsam.LevenbergMarquardtOptimizer(graph, values, lm).optimize(), initial)
    params = gtsam.GncLMParams(lm)
    params.setLossType(gtsam.GncLossType.TLS)
    params.setKnownInliers(inliers)
    return _poses(gtsam.GncLMOptimizer(graph, values, params).optimize(), initial)


def _poses(result, initial: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    return {key: result.atPose3(key).matrix() for key in initial}


def odometry_edges(poses: np.ndarray, keys: list[int] | None = None, noise_per_m: float = 0.02,
                   heading_per_m: float = 0.005) -> list[Edge]:
    """Edges between consecutive planar odometry poses (N x (x, y, yaw)), covariances in GTSAM order;
    ``keys`` names the poses in the graph (default 0 ... N-1)."""
    keys = list(range(len(poses))) if keys is None else keys
    edges = []
    for i in range(len(poses) - 1):
        a, b = planar_pose(*poses[i]), planar_pose(*poses[i + 1])
        rel = np.linalg.inv(a) @ b
        step = max(float(np.linalg.norm(rel[:2, 3])), 0.05)
        sigma_t, sigma_h = noise_per_m * step, heading_per_m * step + 1e-3
        cov = np.diag([1e-6, 1e-6, sigma_h**2, sigma_t**2, sigma_t**2, 1e-6])  # rot x, y, z, x, y, z
        edges.append(Edge(keys[i], keys[i + 1], rel, cov, "odometry"))
    return edges
