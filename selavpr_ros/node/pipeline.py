"""The node's work for one frame, without ROS: decode, describe, retrieve, judge, store.

The rclpy node, the ROS-less DDS node, ``build-map``, ``replay`` and the
demo all drive this class, so everything the robot runs is exercised here.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selavpr_ros.errors import MapError
from selavpr_ros.inference.base import Extractor
from selavpr_ros.inference.loader import open_extractor
from selavpr_ros.loop_closure.config import LoopClosureConfig
from selavpr_ros.loop_closure.engine import FrameResult, LoopCandidate, LoopClosureEngine
from selavpr_ros.mapdb.database import DB_NAME, MapDatabase
from selavpr_ros.models.zoo import resolve_checkpoint
from selavpr_ros.node.params import loop_closure_config
from selavpr_ros.transport.image_decoding import decode_any
from selavpr_ros.types import KeyframeRecord, Pose, header_fields, ns_to_stamp


@dataclass
class Frame:
    """One camera message as received (decoded lazily, in the worker)."""

    msg: Any  # sensor_msgs Image or CompressedImage (rosbags, DDS or rclpy object)
    stamp_ns: int
    frame_id: str
    received: float = field(default_factory=time.monotonic)
    pose: Pose | None = None
    source: str = "live"
    topic: str = ""


@dataclass
class FrameOutcome:
    frame: Frame
    result: FrameResult
    timings_ms: dict[str, float]


def open_map(path: str | Path, extractor: Extractor, mode: str, storage=None) -> MapDatabase:
    """Open (or, for mapping, create) the map at ``path`` and check it belongs to ``extractor``'s model."""
    path = Path(path).expanduser()
    if mode == "mapping":
        if (path / DB_NAME).is_file():
            db = MapDatabase.open(path, "w")
        else:
            db = MapDatabase.create(path, extractor.layout, extractor.model_id, extractor.model_config,
                                    storage)
    else:
        db = MapDatabase.open(path, "r")
    try:
        db.check_model(extractor.layout, extractor.model_id)
    except MapError:
        db.close()
        raise
    return db


class VPRPipeline:
    """Extractor + map + loop-closure engine, with the node's services (mode, save, reset)."""

    def __init__(self, params: dict[str, Any], extractor: Extractor | None = None) -> None:
        self.params = dict(params)
        self.extractor = extractor or open_extractor(resolve_checkpoint(params["checkpoint"] or None),
                                                     device=params["device"])
        self.map_path = Path(params["map_path"]).expanduser()
        self.lock = threading.RLock()  # frames vs services
        self.db = open_map(self.map_path, self.extractor, params["mode"])
        self.engine = LoopClosureEngine(self.db, self.lc_config)

    @property
    def lc_config(self) -> LoopClosureConfig:
        return loop_closure_config(self.params)

    @property
    def map_id(self) -> str:
        return f"{self.db.model_id}@{self.map_path}"

    def close(self) -> None:
        self.db.close()

    # -- frames ----------------------------------------------------------------------
    def process(self, frame: Frame) -> FrameOutcome:
        """Decode, describe and judge one frame; raises ImageError for a bad frame."""
        t0 = time.perf_counter()
        rgb = decode_any(frame.msg)
        t1 = time.perf_counter()
        return self.process_rgb(rgb, frame, {"decode": (t1 - t0) * 1000})

    def process_rgb(self, rgb: np.ndarray, frame: Frame, timings: dict[str, float] | None = None) -> FrameOutcome:
        timings = dict(timings or {})
        t1 = time.perf_counter()
        desc = self.extractor.extract([rgb], batch_size=1)
        t2 = time.perf_counter()
        record = KeyframeRecord(stamp_ns=frame.stamp_ns, frame_id=frame.frame_id, source=frame.source,
                                topic=frame.topic, pose=frame.pose)
        with self.lock:
            result = self.engine.process(desc, record)
        timings["describe"] = (t2 - t1) * 1000
        timings.update({f"retrieval.{k}": v for k, v in result.timings_ms.items()})
        timings["total"] = sum(v for k, v in timings.items() if k in ("decode", "describe")) + \
            result.timings_ms.get("total", 0.0)
        return FrameOutcome(frame, result, timings)

    # -- services --------------------------------------------------------------------
    def set_mode(self, mode: str) -> str:
        if mode not in ("mapping", "localization"):
            raise ValueError(f"mode must be 'mapping' or 'localization', got {mode!r}")
        with self.lock:
            if mode == self.params["mode"]:
                return f"already in {mode} mode"
            old_db, old_params = self.db, dict(self.params)
            self.params["mode"] = mode
            try:
                old_db.close()
                self.db = open_map(self.map_path, self.extractor, mode)
                self.engine = LoopClosureEngine(self.db, self.lc_config)
            except Exception:
                self.params = old_params
                self.db = open_map(self.map_path, self.extractor, old_params["mode"])
                self.engine = LoopClosureEngine(self.db, self.lc_config)
                raise
            return f"switched to {mode} mode ({self.db.count} keyframes in the map)"

    def reset(self) -> str:
        """Forget the consistency history and the keyframe gate (the map keeps its entries)."""
        with self.lock:
            self.engine = LoopClosureEngine(self.db, self.lc_config)
        return "loop-closure state reset"

    def save_map(self, path: str = "") -> str:
        """Entries are committed as they are added; this checkpoints the WAL and optionally copies the map."""
        with self.lock:
            if self.db.writable:
                self.db.query("PRAGMA wal_checkpoint(TRUNCATE)")
            if not path:
                return f"map {self.map_path} is up to date ({self.db.count} keyframes)"
            dest = Path(path).expanduser()
            if dest.exists():
                raise MapError(f"{dest} exists; choose a new directory for the copy")
            shutil.copytree(self.map_path, dest, ignore=shutil.ignore_patterns("*.lock", "*-wal", "*-shm"))
            return f"map copied to {dest} ({self.db.count} keyframes)"

    def update_params(self, changes: dict[str, Any]) -> None:
        """Apply run-time parameter changes (already validated); a mode change reopens the map."""
        mode = changes.get("mode")
        rest = {k: v for k, v in changes.items() if k != "mode"}
        with self.lock:
            if rest:
                self.params.update(rest)
                self.engine = LoopClosureEngine(self.db, self.lc_config)
            if mode is not None:
                self.set_mode(mode)


def candidate_fields(c: LoopCandidate, map_id: str) -> dict[str, Any]:
    """Fields of one ``selavpr_ros/LoopClosureCandidate`` (nested messages as dicts)."""
    pose: dict[str, Any] = {}
    if c.match_pose is not None:
        p, q = c.match_pose.position, c.match_pose.orientation
        pose = {"pose": {"position": dict(zip("xyz", map(float, p))),
                         "orientation": dict(zip("xyzw", map(float, q)))}}
        if c.match_pose.covariance is not None:
            pose["covariance"] = np.asarray(c.match_pose.covariance, np.float64)
    return {
        "match_stamp": ns_to_stamp(c.match_stamp_ns),
        "query_keyframe_id": int(c.query_keyframe_id),
        "match_keyframe_id": int(c.match_keyframe_id),
        "map_id": map_id,
        "match_session": c.match_session,
        "score": float(c.score),
        "hamming_distance": int(c.hamming),
        "local_match_count": int(c.local_matches),
        "rank": int(c.rank),
        "status": int(c.status),
        "reason": c.reason,
        "has_match_pose": c.match_pose is not None,
        "match_pose": pose,
    }


def candidate_array_fields(outcome: FrameOutcome, map_id: str, frame_id: str = "") -> dict[str, Any]:
    """Fields of a ``selavpr_ros/LoopClosureCandidateArray`` for one processed frame."""
    header = header_fields(outcome.frame.stamp_ns, frame_id or outcome.frame.frame_id)
    cands = []
    for c in outcome.result.candidates:
        f = candidate_fields(c, map_id)
        f["header"] = header
        cands.append(f)
    return {"header": header, "candidates": cands}
