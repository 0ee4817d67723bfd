"""Value types that cross subpackages: what a model writes, what a map stores, when and where.

Models produce :class:`Descriptors` of a :class:`DescriptorLayout`; maps store
them with a :class:`KeyframeRecord` (stamp, provenance, :class:`Pose`); bags,
the node and the loop-closure engine pass the same records around. Keeping
them here, with NumPy as the only dependency, lets every layer share them
without importing the layers above it (no PyTorch, faiss or ROS).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "NS_PER_S",
    "DescriptorLayout",
    "Descriptors",
    "KeyframeRecord",
    "Pose",
    "header_fields",
    "ns_to_stamp",
    "stamp_ns",
]

NS_PER_S = 1_000_000_000


# -- time -----------------------------------------------------------------------------
def stamp_ns(obj: Any) -> int:
    """Nanoseconds of a ROS time (``builtin_interfaces/Time``), a header, or a stamped message.

    Works on rclpy messages, rosbags dataclasses and CycloneDDS samples alike.
    """
    for attr in ("header", "stamp"):
        obj = getattr(obj, attr, obj)
    return int(obj.sec) * NS_PER_S + int(obj.nanosec)


def ns_to_stamp(ns: int) -> dict[str, int]:
    """Fields of a ``builtin_interfaces/Time`` for ``ns`` nanoseconds (non-negative)."""
    ns = int(ns)
    return {"sec": ns // NS_PER_S, "nanosec": ns % NS_PER_S}


def header_fields(stamp: int, frame_id: str) -> dict[str, Any]:
    """Fields of a ``std_msgs/Header`` stamped ``stamp`` nanoseconds."""
    return {"stamp": ns_to_stamp(stamp), "frame_id": frame_id}


# -- descriptors ----------------------------------------------------------------------
@dataclass(frozen=True)
class DescriptorLayout:
    """What a model writes per image; a map accepts only models of its own layout."""

    code_bits: int
    float_dim: int
    local_dim: int = 0
    local_grid: tuple[int, int] = (0, 0)

    @property
    def code_bytes(self) -> int:
        return self.code_bits // 8

    @property
    def has_local(self) -> bool:
        return self.local_dim > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "code_bits": self.code_bits,
            "float_dim": self.float_dim,
            "local_dim": self.local_dim,
            "local_grid": list(self.local_grid),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DescriptorLayout:
        grid = tuple(int(v) for v in data.get("local_grid", (0, 0)))
        return cls(
            code_bits=int(data["code_bits"]),
            float_dim=int(data["float_dim"]),
            local_dim=int(data.get("local_dim", 0)),
            local_grid=(grid[0], grid[1]),
        )

    def describe(self) -> str:
        local = (
            f", local {self.local_grid[0]}x{self.local_grid[1]}x{self.local_dim}" if self.has_local else ", no local"
        )
        return f"codes {self.code_bits} bit, float {self.float_dim}-d{local}"

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Descriptors:
    """Per-image model outputs as NumPy arrays, whatever backend produced them."""

    codes: np.ndarray  # (N, bits/8) uint8
    descriptors: np.ndarray  # (N, D) float32, L2-normalised
    hash_z: np.ndarray  # (N, bits) float32; codes are hash_z >= 0
    local_features: np.ndarray | None = None  # (N, h, w, C) float32

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: Any) -> Descriptors:
        idx = np.atleast_1d(np.arange(len(self))[index])
        return Descriptors(
            self.codes[idx],
            self.descriptors[idx],
            self.hash_z[idx],
            None if self.local_features is None else self.local_features[idx],
        )

    @staticmethod
    def empty(layout: DescriptorLayout) -> Descriptors:
        local = None
        if layout.has_local:
            local = np.zeros((0, *layout.local_grid, layout.local_dim), np.float32)
        return Descriptors(
            np.zeros((0, layout.code_bytes), np.uint8),
            np.zeros((0, layout.float_dim), np.float32),
            np.zeros((0, layout.code_bits), np.float32),
            local,
        )

    @staticmethod
    def concat(parts: Sequence[Descriptors]) -> Descriptors:
        if not parts:
            raise ValueError("nothing to concatenate")
        local = None
        if parts[0].local_features is not None:
            local = np.concatenate([p.local_features for p in parts if p.local_features is not None])
        return Descriptors(
            np.concatenate([p.codes for p in parts]),
            np.concatenate([p.descriptors for p in parts]),
            np.concatenate([p.hash_z for p in parts]),
            local,
        )


# -- keyframes ------------------------------------------------------------------------
@dataclass(frozen=True)
class Pose:
    """Position (m) and orientation (unit quaternion x, y, z, w) in the fixed frame ``frame_id``.

    ``frame_id`` is the frame the pose is expressed in (REP 105: ``map`` or ``odom``,
    ``enu`` for GNSS); empty when the source did not say.
    """

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    covariance: tuple[float, ...] | None = None  # 6x6 row-major (x, y, z, rot x, rot y, rot z), as in ROS
    frame_id: str = ""

    def yaw(self) -> float:
        x, y, z, w = self.orientation
        return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


@dataclass
class KeyframeRecord:
    """Metadata of one map entry. ``keyframe_id`` and ``row`` are assigned by the map."""

    stamp_ns: int
    frame_id: str = ""
    source: str = ""  # bag file, dataset, or live
    topic: str = ""
    image_ref: str = ""  # path of the image when known (evaluation, visualisation)
    pose: Pose | None = None
    session: str = ""
    keyframe_id: int = -1
    row: int = -1

    @property
    def stamp(self) -> float:
        return self.stamp_ns * 1e-9
