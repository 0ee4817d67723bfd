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
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from selavpr_ros.errors import CameraError

__all__ = [
    "NS_PER_S",
    "CameraModel",
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


# -- cameras --------------------------------------------------------------------------
# Pinhole camera models from sensor_msgs/CameraInfo. Geometry works in undistorted, normalised
# image coordinates (x/z, y/z in the optical frame, REP 103: x right, y down, z forward); lens
# distortion is removed from keypoint positions, never from whole images. OpenCV when used.
# ROS distortion model names (sensor_msgs/distortion_models.hpp) and their coefficient counts.
PLUMB_BOB = "plumb_bob"
RATIONAL_POLYNOMIAL = "rational_polynomial"
EQUIDISTANT = "equidistant"
DISTORTION_MODELS = {PLUMB_BOB: (5,), RATIONAL_POLYNOMIAL: (8, 12, 14), EQUIDISTANT: (4,)}


@dataclass(frozen=True)
class CameraModel:
    """Image size, intrinsics ``k = (fx, fy, cx, cy)`` in pixels and lens distortion (ROS conventions)."""

    width: int
    height: int
    k: tuple[float, float, float, float]
    distortion_model: str = ""  # "" or a name of DISTORTION_MODELS; "" with no coefficients = no distortion
    d: tuple[float, ...] = ()
    frame_id: str = ""

    def __post_init__(self) -> None:
        fx, fy, cx, cy = self.k
        if self.width <= 0 or self.height <= 0:
            raise CameraError(f"camera image size {self.width}x{self.height} must be positive")
        if not all(math.isfinite(v) for v in (*self.k, *self.d)):
            raise CameraError(f"camera intrinsics {self.k} / distortion {self.d} hold NaN or infinity")
        if fx <= 0 or fy <= 0:
            raise CameraError(f"camera focal lengths fx={fx}, fy={fy} must be positive (an all-zero K means "
                              "the camera is uncalibrated)")
        if self.d and any(self.d):
            counts = DISTORTION_MODELS.get(self.distortion_model)
            if counts is None:
                raise CameraError(f"unknown distortion model {self.distortion_model!r}; supported: "
                                  f"{', '.join(DISTORTION_MODELS)}")
            if len(self.d) not in counts:
                raise CameraError(f"distortion model {self.distortion_model} takes {counts} coefficients, "
                                  f"got {len(self.d)}")

    # -- construction --------------------------------------------------------------
    @classmethod
    def from_camera_info(cls, msg: Any) -> CameraModel:
        """From a ``sensor_msgs/CameraInfo`` (rclpy, rosbags or CycloneDDS object).

        Binning and a region of interest are applied to K, so the model fits the
        image the camera actually published.
        """
        k = [float(v) for v in np.asarray(msg.k, np.float64).ravel()]
        if len(k) != 9 or not any(k):
            raise CameraError("CameraInfo has an all-zero K: the camera is uncalibrated; geometry is skipped")
        fx, cx, fy, cy = k[0], k[2], k[4], k[5]
        width, height = int(msg.width), int(msg.height)
        roi = getattr(msg, "roi", None)
        if roi is not None and int(roi.width) and int(roi.height):
            cx, cy = cx - int(roi.x_offset), cy - int(roi.y_offset)
            width, height = int(roi.width), int(roi.height)
        bx, by = max(int(getattr(msg, "binning_x", 0)), 1), max(int(getattr(msg, "binning_y", 0)), 1)
        fx, cx, width = fx / bx, cx / bx, width // bx
        fy, cy, height = fy / by, cy / by, height // by
        d = tuple(float(v) for v in np.asarray(msg.d, np.float64).ravel())
        frame = getattr(getattr(msg, "header", None), "frame_id", "")
        return cls(width, height, (fx, fy, cx, cy), str(msg.distortion_model) if d else "", d, str(frame))

    @classmethod
    def nominal(cls, width: int, height: int, hfov_deg: float = 60.0, frame_id: str = "") -> CameraModel:
        """An ideal pinhole of horizontal field of view ``hfov_deg`` (for image folders without calibration)."""
        if not 1.0 <= hfov_deg < 179.0:
            raise CameraError(f"horizontal field of view {hfov_deg} deg must be in [1, 179)")
        f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
        return cls(width, height, (f, f, width / 2.0, height / 2.0), frame_id=frame_id)

    # -- use -----------------------------------------------------------------------
    @property
    def matrix(self) -> np.ndarray:
        fx, fy, cx, cy = self.k
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)

    @property
    def focal(self) -> float:
        """Mean focal length in pixels (converts pixel thresholds to normalised units)."""
        return 0.5 * (self.k[0] + self.k[1])

    def check_image(self, width: int, height: int) -> None:
        """Refuse an image whose size differs from the calibration's (K would not apply)."""
        if (width, height) != (self.width, self.height):
            raise CameraError(f"image is {width}x{height} but its CameraInfo describes {self.width}x{self.height}; "
                              "the intrinsics do not apply (wrong camera_info topic, or a resized image)")

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Undistorted normalised coordinates (N, 2) of pixel positions (N, 2)."""
        pts = np.asarray(pixels, np.float64).reshape(-1, 1, 2)
        if not len(pts):
            return np.zeros((0, 2))
        if not any(self.d):
            fx, fy, cx, cy = self.k
            return np.column_stack([(pts[:, 0, 0] - cx) / fx, (pts[:, 0, 1] - cy) / fy])
        import cv2

        dist = np.asarray(self.d, np.float64)
        if self.distortion_model == EQUIDISTANT:
            return cv2.fisheye.undistortPoints(pts, self.matrix, dist).reshape(-1, 2)
        return cv2.undistortPoints(pts, self.matrix, dist).reshape(-1, 2)

    def project(self, normalized: np.ndarray) -> np.ndarray:
        """Pixels of undistorted normalised coordinates on the ideal pinhole (no distortion re-applied)."""
        n = np.asarray(normalized, np.float64).reshape(-1, 2)
        fx, fy, cx, cy = self.k
        return np.column_stack([n[:, 0] * fx + cx, n[:, 1] * fy + cy])

    # -- storage -------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CameraModel:
        try:
            data = json.loads(text)
            return cls(int(data["width"]), int(data["height"]), tuple(float(v) for v in data["k"]),  # type: ignore[arg-type]
                       str(data.get("distortion_model", "")), tuple(float(v) for v in data.get("d", ())),
                       str(data.get("frame_id", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise CameraError(f"stored camera model unreadable ({exc})") from None

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


# -- model identity ------------------------------------------------------------------
MODEL_ID_FORMAT = "2"  # ids written before it named the weights only


def model_id(method: str, weights: str, config: dict[str, Any]) -> str:
    """``method:hash`` of what makes descriptors: the weights (``weights``, their fingerprint) and the
    whole model configuration (input size, preprocessing, method options), its free-text ``name`` and
    the path its trunk weights came from aside. Two models with one id give the same descriptors; a map
    refuses every other id, so a 224 x 224 import is never queried with its 322 x 322 twin."""
    relevant = {k: v for k, v in config.items() if k != "name"}
    if isinstance(relevant.get("backbone"), dict):
        relevant["backbone"] = {k: v for k, v in relevant["backbone"].items() if k != "weights"}
    h = hashlib.blake2b(digest_size=8)
    h.update(weights.encode())
    h.update(json.dumps(relevant, sort_keys=True, default=str).encode())
    return f"{method}:{h.hexdigest()}"


def upgrade_model_id(stored: str, config: dict[str, Any] | None) -> str:
    """An id written before :data:`MODEL_ID_FORMAT` 2 (``method:`` and 16 hex digits of the weights
    fingerprint) in today's form, given the model configuration stored beside it (unchanged without)."""
    method, _, weights = stored.partition(":")
    return stored if not config else model_id(method, weights, config)


# -- keyframes ------------------------------------------------------------------------
def quaternion_to_rotation(q: tuple[float, float, float, float]) -> np.ndarray:
    """Rotation matrix of a unit quaternion (x, y, z, w)."""
    x, y, z, w = np.asarray(q, np.float64) / max(float(np.linalg.norm(q)), 1e-12)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


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

    def matrix(self) -> np.ndarray:
        """4 x 4 homogeneous transform of this pose."""
        out = np.eye(4)
        out[:3, :3] = quaternion_to_rotation(self.orientation)
        out[:3, 3] = self.position
        return out


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
    camera: CameraModel | None = None  # intrinsics of the image (CameraInfo), for geometric verification
    slam_id: int | None = None  # the SLAM's own id of this keyframe, when the SLAM gave one (pose-graph keys)
    robot_id: int = 0  # robot whose session holds the keyframe (multi-robot pose graphs)

    @property
    def stamp(self) -> float:
        return self.stamp_ns * 1e-9
