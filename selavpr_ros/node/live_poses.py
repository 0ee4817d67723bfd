"""Keyframe poses from a live robot, without ROS: a bounded TF buffer and an odometry track.

SLAM stacks publish where the camera is as TF (``odom``/``map`` -> ... ->
camera frame) or as ``nav_msgs/Odometry``. Both sources here are fed message
objects (rclpy, CycloneDDS or rosbags alike) and answer "pose at this image
stamp", interpolating between samples with the same quaternion and track code
the bag reader uses. A lookup for a stamp newer than the newest sample waits
up to a timeout for the sample to arrive (transforms often lag the camera), so
the worker thread never blocks for long. Poses carry the fixed frame they are
expressed in (REP 105).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np

from selavpr_ros.bags.poses import (
    IDENTITY_QUAT,
    PoseTrack,
    quat_conj,
    quat_mul,
    quat_rotate,
    root_path,
    transform_parts,
)
from selavpr_ros.types import Pose, stamp_ns

_WAIT = object()  # a lookup that may succeed once newer samples arrive


class _Samples:
    """Timed (translation, rotation) samples of one edge or one odometry stream, oldest first."""

    def __init__(self, history_s: float) -> None:
        self.history_ns = int(history_s * 1e9)
        self.stamps: deque[int] = deque()
        self.values: deque[tuple[list[float], list[float], tuple[float, ...] | None]] = deque()

    def add(self, stamp: int, trans: list[float], rot: list[float], cov: tuple[float, ...] | None = None) -> None:
        if self.stamps and stamp < self.stamps[-1]:  # out of order: insert (rare, small buffers)
            items = sorted([*zip(self.stamps, self.values), (stamp, (trans, rot, cov))], key=lambda x: x[0])
            self.stamps = deque(s for s, _ in items)
            self.values = deque(v for _, v in items)
        else:
            self.stamps.append(stamp)
            self.values.append((trans, rot, cov))
        while self.stamps and self.stamps[-1] - self.stamps[0] > self.history_ns:
            self.stamps.popleft()
            self.values.popleft()

    def at(self, stamp: int, max_gap_s: float) -> Any:
        """(position, quaternion, covariance) at ``stamp``; None when it cannot be known, _WAIT when it
        is newer than the newest sample."""
        if not self.stamps:
            return _WAIT
        if stamp > self.stamps[-1]:
            return _WAIT
        if stamp < self.stamps[0]:
            return None
        cov = None if self.values[0][2] is None else np.asarray([v[2] for v in self.values], np.float64)
        track = PoseTrack(
            np.asarray(self.stamps, np.int64),
            np.asarray([v[0] for v in self.values], np.float64),
            np.asarray([v[1] for v in self.values], np.float64),
            cov,
            "",
            "live",
        )
        pose = track.interpolate(np.array([stamp]), max_gap_s)[0]
        if pose is None:
            return None
        return np.asarray(pose.position), np.asarray(pose.orientation), pose.covariance


class LiveTransforms:
    """A TF buffer: ``/tf`` samples for the last ``history_s`` seconds and every ``/tf_static`` edge."""

    def __init__(self, history_s: float = 30.0) -> None:
        self.history_s = history_s
        self._parents: dict[str, str] = {}
        self._dynamic: dict[str, _Samples] = {}
        self._static: dict[str, tuple[list[float], list[float]]] = {}
        self._cond = threading.Condition()
        self.conflicts = 0  # transforms that tried to give a frame a second parent

    def add(self, msg: Any, static: bool = False) -> None:
        """Add a ``tf2_msgs/TFMessage`` (from ``/tf``, or ``/tf_static`` with ``static``)."""
        with self._cond:
            for tf in msg.transforms:
                parent, child, trans, rot = transform_parts(tf)
                if self._parents.setdefault(child, parent) != parent:
                    self.conflicts += 1
                    continue
                if static:
                    self._static[child] = (trans, rot)
                else:
                    self._dynamic.setdefault(child, _Samples(self.history_s)).add(stamp_ns(tf), trans, rot)
            self._cond.notify_all()

    def _to_root(self, frame: str, stamp: int, max_gap_s: float) -> Any:
        """(root frame, position, rotation) of ``frame`` in its tree's root at ``stamp``."""
        path = root_path(frame, self._parents)
        if path[-1] in self._parents:  # the walk stopped at a cycle: no root
            return None
        pos, rot = np.zeros(3), IDENTITY_QUAT.copy()
        for child in path[:-1]:  # compose T_parent_child upward, as the bag reader does
            if child in self._dynamic:
                got = self._dynamic[child].at(stamp, max_gap_s)
                if got is None or got is _WAIT:
                    return got
                t, q = got[0], got[1]
            else:
                t, q = (np.asarray(v, np.float64) for v in self._static[child])
            pos, rot = quat_rotate(q[None], pos[None])[0] + t, quat_mul(q[None], rot[None])[0]
        return path[-1], pos, rot

    def is_static(self, frame: str, fixed_frame: str) -> bool:
        """Whether every transform between the two frames is a ``/tf_static`` one."""
        with self._cond:
            a = root_path(frame.lstrip("/"), self._parents)
            b = root_path(fixed_frame.lstrip("/"), self._parents)
        common = set(a) & set(b)
        return not any(f in self._dynamic for f in [*a, *b] if f not in common)

    def lookup(self, fixed_frame: str, frame: str, stamp: int, timeout_s: float = 0.0,
               max_gap_s: float = 0.5) -> Pose | None:
        """Pose of ``frame`` in ``fixed_frame`` at ``stamp``; waits up to ``timeout_s`` for late samples."""
        fixed_frame, frame = fixed_frame.lstrip("/"), frame.lstrip("/")
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                a = self._to_root(frame, stamp, max_gap_s)
                b = self._to_root(fixed_frame, stamp, max_gap_s)
                if a is not _WAIT and b is not _WAIT:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
        if a is None or b is None or a[0] != b[0]:
            return None  # unknown frame, a gap, a stamp older than the buffer, or separate trees
        inv = quat_conj(b[2][None])  # T_fixed_frame = T_root_fixed^-1 T_root_frame
        pos = quat_rotate(inv, (a[1] - b[1])[None])[0]
        rot = quat_mul(inv, a[2][None])[0]
        return Pose(tuple(float(v) for v in pos), tuple(float(v) for v in rot), None, fixed_frame)  # type: ignore[arg-type]


class LiveOdometry:
    """``nav_msgs/Odometry`` samples of the last ``history_s`` seconds; poses in the message's frame."""

    def __init__(self, history_s: float = 30.0) -> None:
        self._samples = _Samples(history_s)
        self._cond = threading.Condition()
        self.frame_id = ""

    def add(self, msg: Any) -> None:
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        cov = tuple(float(v) for v in np.asarray(msg.pose.covariance, np.float64).reshape(-1))
        with self._cond:
            self.frame_id = str(msg.header.frame_id).lstrip("/")
            self._samples.add(stamp_ns(msg), [float(p.x), float(p.y), float(p.z)],
                              [float(q.x), float(q.y), float(q.z), float(q.w)], cov if len(cov) == 36 else None)
            self._cond.notify_all()

    def lookup(self, stamp: int, timeout_s: float = 0.0, max_gap_s: float = 0.5) -> Pose | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (got := self._samples.at(stamp, max_gap_s)) is _WAIT:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
        if got is None:
            return None
        pos, rot, cov = got
        return Pose(tuple(float(v) for v in pos), tuple(float(v) for v in rot), cov, self.frame_id)  # type: ignore[arg-type]


def mount_lookup(transforms: LiveTransforms, base_frame: str, timeout_s: float = 0.0):
    """The pipeline's ``mount_lookup``: a camera frame's 4 x 4 pose in ``base_frame`` (None when TF does not
    connect them within ``timeout_s``); a static mount is looked up once."""
    cache: dict[str, np.ndarray] = {}

    def lookup(camera_frame: str, stamp: int) -> np.ndarray | None:
        if camera_frame in cache:
            return cache[camera_frame]
        pose = transforms.lookup(base_frame, camera_frame, stamp, timeout_s)
        if pose is None:
            return None
        mount = pose.matrix()
        if transforms.is_static(camera_frame, base_frame):
            cache[camera_frame] = mount
        return mount

    return lookup


def pose_lookup(params: dict[str, Any], transforms: LiveTransforms | None, odometry: LiveOdometry | None):
    """The pipeline's ``pose_lookup`` for the node's pose parameters (None for ``pose_source: none``)."""
    source = params["pose_source"]
    timeout, gap = float(params["pose.timeout_s"]), float(params["pose.max_gap_s"])
    if source == "tf":
        assert transforms is not None
        fixed, camera = params["pose.fixed_frame"], params["pose.camera_frame"]
        return lambda frame: transforms.lookup(fixed, camera or frame.frame_id, frame.stamp_ns, timeout, gap)
    if source == "odom":
        assert odometry is not None
        return lambda frame: odometry.lookup(frame.stamp_ns, timeout, gap)
    return None
