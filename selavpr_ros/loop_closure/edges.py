"""Accepted loop closures as pose-graph edges, in the shape SLAM back-ends take.

A place-recognition match is useful to a pose graph only as an edge: "keyframe
``key_to`` of robot ``robot_to`` lies at this pose in the frame of keyframe
``key_from`` of robot ``robot_from``, with this covariance". That is the
layout of pose_graph_tools' ``PoseGraphEdge`` (Kimera-Multi, Kimera-RPGO,
DPGO) and of cslam's keyframe matches; :mod:`selavpr_ros.msg` carries it as
``PoseGraphEdge`` inside a ``PoseGraph`` (same fields, same order).

Conventions, stated once here and in ``msg/PoseGraphEdge.msg``:

* **Keys.** The SLAM's own keyframe ids where it gave them (the node's
  ``~/query`` service takes the caller's id with the image); else the map's
  keyframe ids (unique across the sessions of a map); a query that is not
  stored in the map (localization mode) and has no SLAM id is keyed by its
  image stamp in nanoseconds, which is how time-keyed back-ends name frames.
* **Frames.** By default the camera optical frames of the two images. With
  ``base_frame`` set, the robot frames carrying the cameras: the edge is
  conjugated by each camera's mount (its pose in ``base_frame``, from TF).
* **Covariance.** GTSAM's ``Pose3`` tangent order — rotation first, then
  translation, a perturbation on the right (in ``key_to``'s frame) — which is
  what ``BetweenFactor<Pose3>`` takes as it is. (The candidates'
  ``relative_pose`` uses the ROS order of ``PoseWithCovariance``;
  :func:`tangent_covariance` converts exactly, to first order.)
* **What becomes an edge.** Accepted candidates with a verified relative pose
  (stage ``geometric``). Accepted candidates without one become "same place"
  edges (identity, ``same_place_sigma_m`` / ``same_place_sigma_deg``) only when
  ``same_place_sigma_m > 0``: place recognition alone says nothing metric.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from selavpr_ros.config import check
from selavpr_ros.geometry.estimation import rotation_to_quaternion, skew
from selavpr_ros.types import header_fields

LOOPCLOSE = 1  # PoseGraphEdge.type (pose_graph_tools numbering)


@dataclass(frozen=True)
class EdgeConfig:
    """How accepted closures become edges (node parameters ``edges.*``)."""

    base_frame: str = ""  # "" = edges between camera optical frames
    same_place_sigma_m: float = 0.0  # > 0: unverified closures become "same place" edges with this sigma
    same_place_sigma_deg: float = 5.0

    def __post_init__(self) -> None:
        check(self.same_place_sigma_m >= 0, "edges.same_place_sigma_m must be >= 0")
        check(self.same_place_sigma_deg > 0, "edges.same_place_sigma_deg must be > 0")


@dataclass
class PoseGraphEdge:
    key_from: int
    key_to: int
    robot_from: int
    robot_to: int
    transform: np.ndarray  # 4 x 4: pose of key_to in key_from's frame
    covariance: np.ndarray  # 6 x 6, GTSAM Pose3 tangent order (rotation, translation; right perturbation)
    stamp_ns: int  # stamp of the query image (key_from)
    frame_id: str  # frame of key_from: the query camera, or base_frame
    model: str = ""  # pnp, essential, rotation, or "" for a same-place edge
    metric: bool = False
    type: int = LOOPCLOSE


def adjoint(transform: np.ndarray) -> np.ndarray:
    """6 x 6 adjoint of a rigid transform in GTSAM's tangent order (rotation, translation)."""
    r, t = transform[:3, :3], transform[:3, 3]
    ad = np.zeros((6, 6))
    ad[:3, :3] = ad[3:, 3:] = r
    ad[3:, :3] = skew(t) @ r
    return ad


def tangent_covariance(transform: np.ndarray, cov_ros: np.ndarray) -> np.ndarray:
    """The package's covariance of ``transform`` (ROS order: translation added, rotation about the
    *from* frame's axes) as GTSAM's Pose3 tangent covariance (rotation first, right perturbation)."""
    t = transform[:3, 3]
    jac = np.zeros((6, 6))  # (dt, w) -> left twist (w, v) with v = dt - w x t = dt + t x w
    jac[:3, 3:] = np.eye(3)
    jac[3:, :3] = np.eye(3)
    jac[3:, 3:] = skew(t)
    to_right = adjoint(np.linalg.inv(transform))  # left twist -> right twist
    m = to_right @ jac
    return m @ np.asarray(cov_ros, np.float64).reshape(6, 6) @ m.T


def conjugate(transform: np.ndarray, cov: np.ndarray, mount_from: np.ndarray,
              mount_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An edge between two sensor frames as the edge between the bodies carrying them
    (``mount_*``: each sensor's pose in its body): T_body = M_from T M_to^-1; the right-perturbation
    covariance moves by the adjoint of M_to."""
    body = mount_from @ transform @ np.linalg.inv(mount_to)
    ad = adjoint(mount_to)
    return body, ad @ cov @ ad.T


def same_place_covariance(config: EdgeConfig) -> np.ndarray:
    rot, trans = np.radians(config.same_place_sigma_deg), config.same_place_sigma_m
    return np.diag([rot**2] * 3 + [trans**2] * 3)


MountLookup = Callable[[str], "np.ndarray | None"]  # camera frame -> its 4 x 4 pose in base_frame, or None


def closure_edges(candidates: list[Any], query_key: int, robot_id: int, stamp_ns: int, frame_id: str,
                  config: EdgeConfig, mounts: MountLookup | None = None) -> tuple[list[PoseGraphEdge], str]:
    """Edges of the accepted ``candidates`` (:class:`~selavpr_ros.loop_closure.engine.LoopCandidate`) of one
    query; also the reason edges were left out for want of a camera mount ("" when none was)."""
    edges: list[PoseGraphEdge] = []
    problem = ""
    for c in candidates:
        if int(c.status) != 0:  # ACCEPTED
            continue
        rel = c.relative_pose
        if rel is not None:
            transform = np.eye(4)
            transform[:3, :3], transform[:3, 3] = rel.rotation, rel.translation
            cov = tangent_covariance(transform, rel.covariance)
        elif config.same_place_sigma_m > 0:
            transform, cov = np.eye(4), same_place_covariance(config)
        else:
            continue
        out_frame = frame_id
        if config.base_frame:
            mount_q = mounts(frame_id) if mounts is not None else None
            mount_m = mounts(c.match_frame_id or frame_id) if mounts is not None else None
            if mount_q is None or mount_m is None:
                missing = frame_id if mount_q is None else (c.match_frame_id or frame_id)
                problem = f"no transform from camera frame {missing!r} to edges.base_frame {config.base_frame!r}"
                continue
            transform, cov = conjugate(transform, cov, mount_q, mount_m)
            out_frame = config.base_frame
        key_to = c.match_slam_id if c.match_slam_id is not None else c.match_keyframe_id
        edges.append(PoseGraphEdge(int(query_key), int(key_to), int(robot_id), int(c.match_robot_id), transform,
                                   0.5 * (cov + cov.T), int(stamp_ns), out_frame,
                                   rel.model if rel is not None else "", bool(rel is not None and rel.metric)))
    return edges, problem


def edge_fields(edge: PoseGraphEdge) -> dict[str, Any]:
    """Fields of one ``selavpr_ros/msg/PoseGraphEdge``."""
    t = edge.transform
    return {
        "header": header_fields(edge.stamp_ns, edge.frame_id),
        "key_from": edge.key_from,
        "key_to": edge.key_to,
        "robot_from": edge.robot_from,
        "robot_to": edge.robot_to,
        "type": edge.type,
        "pose": {"position": dict(zip("xyz", map(float, t[:3, 3]))),
                 "orientation": dict(zip("xyzw", rotation_to_quaternion(t[:3, :3])))},
        "covariance": np.asarray(edge.covariance, np.float64).ravel(),
    }


def pose_graph_fields(edges: list[PoseGraphEdge], stamp_ns: int, frame_id: str) -> dict[str, Any]:
    """Fields of a ``selavpr_ros/msg/PoseGraph`` holding ``edges`` (no nodes: the SLAM owns those)."""
    return {"header": header_fields(stamp_ns, frame_id), "nodes": [], "edges": [edge_fields(e) for e in edges]}
