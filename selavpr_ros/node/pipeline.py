"""The node's work for one frame, without ROS: decode, describe, retrieve, judge, store.

The rclpy node, the ROS-less DDS node, ``build-map``, ``replay`` and the
demo all drive this class, so everything the robot runs is exercised here.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selavpr_ros.errors import CameraError, ImageError, MapError, SelaVPRError, StampError
from selavpr_ros.geometry.camera import CameraModel, CameraTrack
from selavpr_ros.geometry.features import detect
from selavpr_ros.inference.base import Extractor
from selavpr_ros.inference.loader import open_extractor
from selavpr_ros.loop_closure.config import LoopClosureConfig
from selavpr_ros.loop_closure.edges import PoseGraphEdge, closure_edges, pose_graph_fields
from selavpr_ros.loop_closure.engine import FrameResult, LoopCandidate, LoopClosureEngine
from selavpr_ros.mapdb.database import DB_NAME, MapDatabase
from selavpr_ros.models.zoo import resolve_checkpoint
from selavpr_ros.node.params import edge_config, loop_closure_config
from selavpr_ros.retrieval.verification import QueryView
from selavpr_ros.threads import node_threads, set_thread_budget
from selavpr_ros.transport.image_decoding import check_string_field, decode_any, decode_depth, shown
from selavpr_ros.types import Descriptors, KeyframeRecord, Pose, header_fields, ns_to_stamp, stamp_ns

SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class DepthBuffer:
    """The newest depth messages by stamp (a registered depth image carries its colour image's stamp);
    decoded only when a frame takes one, in the worker thread."""

    def __init__(self, capacity: int = 30) -> None:
        self._messages: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.capacity = capacity
        self.received = 0
        self.errors = 0
        self.last_error = ""

    def add(self, stamp: int, msg: Any) -> None:
        with self._lock:
            self.received += 1
            self._messages[int(stamp)] = msg
            while len(self._messages) > self.capacity:
                self._messages.popitem(last=False)

    def take(self, stamp: int, max_pixels: int) -> np.ndarray | None:
        """The depth image (metres) stamped ``stamp``, or None; a broken one is counted, never raised."""
        with self._lock:
            msg = self._messages.pop(int(stamp), None)
        if msg is None:
            return None
        try:
            return decode_depth(msg, max_pixels=max_pixels)
        except ImageError as exc:
            self.errors += 1
            self.last_error = str(exc)
            return None


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
    camera: CameraModel | None = None  # from the CameraInfo matched to the image
    camera_problem: str = ""  # why there is no camera model (shown in the candidates' reason, counted)
    depth: np.ndarray | None = None  # (H, W) metres, registered to the image
    slam_id: int | None = None  # the SLAM's id of this keyframe (the ~/query service), stored with it


@dataclass
class FrameOutcome:
    frame: Frame
    result: FrameResult
    timings_ms: dict[str, float]
    edges: list[PoseGraphEdge] = field(default_factory=list)  # the accepted closures as pose-graph edges

    @property
    def query_key(self) -> int:
        """The query's pose-graph key: the SLAM's id, else its map keyframe id, else its stamp (ns)."""
        if self.frame.slam_id is not None:
            return self.frame.slam_id
        return self.result.keyframe_id if self.result.keyframe_id >= 0 else self.frame.stamp_ns


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


class StampGuard:
    """Keeps one wild header stamp from poisoning the keyframe gate and the exclusion window.

    A frame's stamp is expected near the last accepted stamp plus the time
    that passed since it was received; a frame more than ``max_jump_ns`` from
    that (say sec = 2^31 - 1, or 1970 stamps from a replayed bag amid live
    frames) is held back. When ``confirm`` frames in a row agree on a new time,
    the clock really was reset (a restarted bag or simulator): the stream's time
    moves there and :meth:`check` says so, so the caller restarts its gate.
    A robot that pauses its camera for hours is not affected: wall time passed too.
    """

    def __init__(self, max_jump_ns: int, confirm: int = 5) -> None:
        self.max_jump_ns = max_jump_ns
        self.confirm = confirm
        self.last: tuple[int, float] | None = None  # (stamp, monotonic receive time) of the last accepted frame
        self._candidate: list[tuple[int, float]] = []
        self.held_back = 0
        self.resets = 0

    @property
    def last_ns(self) -> int | None:
        return None if self.last is None else self.last[0]

    def _expected(self, ref: tuple[int, float], received: float) -> int:
        return ref[0] + int(max(received - ref[1], 0.0) * 1e9)

    def check(self, stamp: int, received: float | None = None) -> str:
        """``"ok"``, ``"reset"`` (a new time base was confirmed) or ``"jump"`` (hold this frame back).

        ``received`` is the frame's ``time.monotonic()`` arrival time (default: now).
        """
        received = time.monotonic() if received is None else received
        if self.max_jump_ns <= 0 or self.last is None or \
                abs(stamp - self._expected(self.last, received)) <= self.max_jump_ns:
            if self.last is None or stamp >= self.last[0]:
                self.last = (stamp, received)
            self._candidate.clear()
            return "ok"
        if self._candidate and abs(stamp - self._expected(self._candidate[-1], received)) > self.max_jump_ns:
            self._candidate.clear()
        self._candidate.append((stamp, received))
        if len(self._candidate) >= self.confirm:
            self.last = max(self._candidate)
            self._candidate.clear()
            self.resets += 1
            return "reset"
        self.held_back += 1
        return "jump"


class VPRPipeline:
    """Extractor + map + loop-closure engine, with the node's services (mode, save, reset).

    ``pose_lookup(frame)``, when set by a transport, gives the pose of a frame
    that arrived without one (from TF or odometry); it may wait briefly.
    ``mount_lookup(camera_frame, stamp)``, set by a transport when
    ``edges.base_frame`` is, gives a camera's pose in that frame (from TF).
    """

    def __init__(self, params: dict[str, Any], extractor: Extractor | None = None) -> None:
        self.params = dict(params)
        if params["threads"]:
            set_thread_budget(params["threads"])  # before the model's pools start
        self.extractor = extractor or open_extractor(resolve_checkpoint(params["checkpoint"] or None),
                                                     device=params["device"])
        self.map_path = Path(params["map_path"]).expanduser()
        self.lock = threading.RLock()  # frames vs services
        self.db = open_map(self.map_path, self.extractor, params["mode"])
        self.engine = self._engine(self.db, self.lc_config)
        self.geometry_skipped = 0  # frames the geometric stage could not verify (no or unusable CameraInfo)
        self.last_geometry_skip = ""
        # CameraInfo from the transport's camera_info subscription (replay sets Frame.camera itself)
        self.cameras = CameraTrack(int(float(params["camera_info.max_age_s"]) * 1e9))
        self.depths = DepthBuffer()  # fed by the transport's depth subscription (parameter depth)
        self.stamps = StampGuard(int(float(params["max_stamp_jump_s"]) * 1e9))
        self.pose_lookup: Callable[[Frame], Pose | None] | None = None
        self.mount_lookup: Callable[[str, int], np.ndarray | None] | None = None
        self.edges_published = 0  # edges built from accepted closures
        self.edges_skipped = 0  # accepted closures left without an edge (no camera mount in TF)
        self.last_edge_problem = ""
        self._copying = threading.Lock()

    @property
    def lc_config(self) -> LoopClosureConfig:
        return loop_closure_config(self.params)

    def _engine(self, db: MapDatabase, config: LoopClosureConfig) -> LoopClosureEngine:
        return LoopClosureEngine(db, config, self.extractor.preprocess)

    def query_view(self, rgb: np.ndarray, frame: Frame, local: np.ndarray | None) -> QueryView | None:
        """The frame's camera model and keypoints for the geometric stage (None when it is off)."""
        config = self.engine.config
        if not config.verifies:
            return None
        problem = frame.camera_problem
        if problem or frame.camera is None:
            self.geometry_skipped += 1
            self.last_geometry_skip = problem
            return QueryView(skip_reason=f"geometry skipped: {problem or 'no camera model'}")
        keypoints = None
        if config.geometry.matcher == "keypoints" or config.mode == "mapping":
            keypoints = detect(rgb, config.geometry.keypoints, frame.depth)
        return QueryView(frame.camera, keypoints, local)

    @property
    def map_id(self) -> str:
        return f"{self.db.model_id}@{self.map_path}"

    def close(self) -> None:
        self.db.close()

    # -- frames ----------------------------------------------------------------------
    def process(self, frame: Frame, gate: bool = True) -> FrameOutcome:
        """Decode, describe and judge one frame; raises ImageError for a bad frame.

        The pixel budget is checked on the message header, before any decoding.
        ``gate=False``: the frame is a keyframe whatever the keyframe gate says.
        """
        t0 = time.perf_counter()
        rgb = decode_any(frame.msg, max_pixels=int(self.params["max_image_pixels"]))
        t1 = time.perf_counter()
        return self.process_rgb(rgb, frame, {"decode": (t1 - t0) * 1000}, gate)

    def process_rgb(self, rgb: np.ndarray, frame: Frame, timings: dict[str, float] | None = None,
                    gate: bool = True) -> FrameOutcome:
        timings = dict(timings or {})
        frame.frame_id = check_string_field("frame_id", frame.frame_id)  # stored per keyframe: bounded
        self._check_stamp(frame)
        self._prepare(rgb, frame)
        t1 = time.perf_counter()
        desc = self.extractor.extract([rgb], batch_size=1)
        timings["describe"] = (time.perf_counter() - t1) * 1000
        return self._judge(rgb, frame, desc, timings, gate)

    def process_batch(self, frames: list[Frame], gate: bool = True) -> list[FrameOutcome | SelaVPRError]:
        """Like :meth:`process` for each frame, the frames described in one model call (offline work:
        replay). Each entry is the frame's outcome, or the error that refused it (a bad frame costs
        only itself). The outcomes equal those of one call per frame, in order."""
        results: list[FrameOutcome | SelaVPRError | None] = [None] * len(frames)
        ready: list[tuple[int, np.ndarray, dict[str, float]]] = []
        for i, frame in enumerate(frames):
            t0 = time.perf_counter()
            try:
                rgb = decode_any(frame.msg, max_pixels=int(self.params["max_image_pixels"]))
                frame.frame_id = check_string_field("frame_id", frame.frame_id)
            except SelaVPRError as exc:
                results[i] = exc
                continue
            ready.append((i, rgb, {"decode": (time.perf_counter() - t0) * 1000}))
        if ready:
            for i, rgb, _ in ready:
                self._prepare(rgb, frames[i])
            t1 = time.perf_counter()
            desc = self.extractor.extract([rgb for _, rgb, _ in ready], batch_size=len(ready))
            per_frame = (time.perf_counter() - t1) * 1000 / len(ready)
            for j, (i, rgb, timings) in enumerate(ready):
                timings["describe"] = per_frame
                try:
                    self._check_stamp(frames[i])
                    results[i] = self._judge(rgb, frames[i], desc[j], timings, gate)
                except SelaVPRError as exc:
                    results[i] = exc
        return [r for r in results if r is not None]

    def _check_stamp(self, frame: Frame) -> None:
        with self.lock:
            verdict = self.stamps.check(frame.stamp_ns, frame.received)
            if verdict == "jump":
                raise StampError(
                    f"stamp {frame.stamp_ns * 1e-9:.3f} s is more than max_stamp_jump_s "
                    f"{self.params['max_stamp_jump_s']} s from the stream's time "
                    f"{(self.stamps.last_ns or 0) * 1e-9:.3f} s; held back until confirmed"
                )
            if verdict == "reset":  # the clock was reset: restart the gate and consistency
                self.engine = self._engine(self.db, self.lc_config)

    def _prepare(self, rgb: np.ndarray, frame: Frame) -> None:
        """The frame's pose, camera model and depth image, as they stand at its stamp."""
        if frame.pose is None and self.pose_lookup is not None:
            frame.pose = self.pose_lookup(frame)
        if frame.camera is None and not frame.camera_problem:  # stored with the keyframe, verifying or not
            frame.camera, frame.camera_problem = self.cameras.lookup(frame.stamp_ns)
        if frame.depth is None and self.depths.received:
            frame.depth = self.depths.take(frame.stamp_ns, int(self.params["max_image_pixels"]))
            if frame.depth is not None and frame.depth.shape != rgb.shape[:2]:
                self.depths.errors += 1
                self.depths.last_error = (f"depth image {frame.depth.shape[1]}x{frame.depth.shape[0]} is not "
                                          f"registered to the {rgb.shape[1]}x{rgb.shape[0]} camera image")
                frame.depth = None
        if frame.camera is not None:
            try:
                frame.camera.check_image(rgb.shape[1], rgb.shape[0])
            except CameraError as exc:  # a wrong camera_info is not stored
                frame.camera, frame.camera_problem = None, str(exc)

    def _judge(self, rgb: np.ndarray, frame: Frame, desc: Descriptors, timings: dict[str, float],
               gate: bool) -> FrameOutcome:
        """Keypoints, the loop-closure engine and the pose-graph edges of one described frame."""
        t2 = time.perf_counter()
        view = self.query_view(rgb, frame, None if desc.local_features is None else desc.local_features[0])
        t3 = time.perf_counter()
        record = KeyframeRecord(stamp_ns=frame.stamp_ns, frame_id=frame.frame_id, source=frame.source,
                                topic=frame.topic, pose=frame.pose, camera=frame.camera, slam_id=frame.slam_id)
        with self.lock:
            result = self.engine.process(desc, record, view, gate)
        if view is not None:
            timings["keypoints"] = (t3 - t2) * 1000
        timings.update({f"retrieval.{k}": v for k, v in result.timings_ms.items()})
        timings["total"] = sum(v for k, v in timings.items() if k in ("decode", "describe", "keypoints")) + \
            result.timings_ms.get("total", 0.0)
        outcome = FrameOutcome(frame, result, timings)
        if result.accepted:
            self._add_edges(outcome)
        return outcome

    def _add_edges(self, outcome: FrameOutcome) -> None:
        frame, mounts = outcome.frame, self.mount_lookup
        outcome.edges, problem = closure_edges(
            outcome.result.accepted, outcome.query_key, int(self.params["robot_id"]), frame.stamp_ns,
            self.params["frame_id"] or frame.frame_id, edge_config(self.params),
            None if mounts is None else lambda camera_frame: mounts(camera_frame, frame.stamp_ns))
        self.edges_published += len(outcome.edges)
        if problem:
            self.edges_skipped += 1
            self.last_edge_problem = problem

    def query(self, msg: Any, slam_id: int | None = None, camera_info: Any = None,
              topic: str = "query") -> FrameOutcome:
        """One image the caller chose (a SLAM keyframe), whatever the keyframe gate says: the ``~/query``
        service. ``slam_id`` is stored with it in mapping mode and keys its edges; a ``camera_info`` with a
        non-zero K is its camera model (else the camera_info topic's)."""
        stamp = stamp_ns(msg.header)
        if camera_info is not None and any(float(v) for v in camera_info.k):
            self.cameras.add(stamp, camera_info)
        frame = Frame(msg, stamp, str(msg.header.frame_id), source="query", topic=topic, slam_id=slam_id)
        return self.process(frame, gate=False)

    # -- services --------------------------------------------------------------------
    def set_mode(self, mode: str) -> str:
        """Switch mapping/localization; on failure the node keeps its old mode, map and state."""
        if mode not in ("mapping", "localization"):
            raise ValueError(f"mode must be 'mapping' or 'localization', got {mode!r}")
        return self.update_params({"mode": mode})

    def reset(self) -> str:
        """Forget the consistency history and the keyframe gate (the map keeps its entries)."""
        with self.lock:
            self.engine = self._engine(self.db, self.lc_config)
        return "loop-closure state reset"

    @property
    def snapshot_dir(self) -> Path:
        configured = str(self.params["snapshot_dir"])
        if configured:
            return Path(configured).expanduser()
        return self.map_path.with_name(self.map_path.name + ".snapshots")

    def save_map(self, name: str = "") -> str:
        """Entries are committed as they are added; this checkpoints the WAL and, given a snapshot
        ``name``, copies the map to ``snapshot_dir/name``.

        ``name`` comes from any peer on the DDS domain: it must be one plain path
        component, at most ``max_snapshots`` copies exist, and one copy runs at a
        time. The copy is a consistent snapshot taken without stopping the node:
        only its first, brief step holds the map (frames keep being processed).
        """
        with self.lock:
            db = self.db
            if db.writable:
                db.query("PRAGMA wal_checkpoint(TRUNCATE)")
            if not name:
                return f"map {self.map_path} is up to date ({db.count} keyframes)"
        if not SNAPSHOT_NAME.fullmatch(name) or len(name) > 128:
            raise ValueError(f"snapshot name {shown(name)} refused: give one name of letters, digits, '.', '_', '-' "
                             "(no '/', '..', '~' or leading '.'); copies go to the node's snapshot_dir")
        folder = self.snapshot_dir
        if not self._copying.acquire(blocking=False):
            raise MapError("another copy of the map is in progress; try again when it is done")
        try:
            existing = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
            if len(existing) >= int(self.params["max_snapshots"]):
                raise MapError(f"{folder} holds {len(existing)} snapshots, the max_snapshots limit; remove some")
            folder.mkdir(parents=True, exist_ok=True)
            count = db.snapshot(folder / name)
        finally:
            self._copying.release()
        return f"map copied to {folder / name} ({count} keyframes)"

    def update_params(self, changes: dict[str, Any]) -> str:
        """Apply validated run-time parameter changes all at once, or none of them.

        The new state (map opened in the new mode, a new engine) is built first
        and swapped in only when everything succeeded.
        """
        with self.lock:
            new_params = {**self.params, **changes}
            if new_params == self.params:
                return f"already in {self.params['mode']} mode" if set(changes) == {"mode"} else "no change"
            config = loop_closure_config(new_params)  # configuration errors before the map is touched
            mode_changed = new_params["mode"] != self.params["mode"]
            db: MapDatabase | None = None
            if mode_changed:
                self.db.close()  # one writer per map: release it before reopening in the other mode
            try:
                db = open_map(self.map_path, self.extractor, new_params["mode"]) if mode_changed else self.db
                engine = self._engine(db, config)
            except Exception:
                if mode_changed:  # back to the old mode, map and a fresh engine on them
                    if db is not None:
                        db.close()
                    self.db = open_map(self.map_path, self.extractor, self.params["mode"])
                    self.engine = self._engine(self.db, self.lc_config)
                raise
            self.params, self.db, self.engine = new_params, db, engine
            if mode_changed:
                return f"switched to {new_params['mode']} mode ({db.count} keyframes in the map)"
            return "parameters updated"


def node_pipeline(params: dict[str, Any]) -> VPRPipeline:
    """A live node's pipeline (the rclpy node and ``selavpr-ros node``): on a robot's shared computer
    ``threads: 0`` gives it half the cores (:func:`~selavpr_ros.threads.node_threads`), set before
    the model's pools start; offline replays keep every core."""
    set_thread_budget(node_threads(params["threads"]))
    return VPRPipeline(params)


def candidate_fields(c: LoopCandidate, map_id: str) -> dict[str, Any]:
    """Fields of one ``selavpr_ros/LoopClosureCandidate`` (nested messages as dicts)."""
    pose: dict[str, Any] = {}
    if c.match_pose is not None:
        p, q = c.match_pose.position, c.match_pose.orientation
        pose = {"pose": {"position": dict(zip("xyz", map(float, p))),
                         "orientation": dict(zip("xyzw", map(float, q)))}}
        if c.match_pose.covariance is not None:
            pose["covariance"] = np.asarray(c.match_pose.covariance, np.float64)
    rel: dict[str, Any] = {}
    rp = c.relative_pose
    if rp is not None:
        rel = {"pose": {"position": dict(zip("xyz", map(float, rp.translation))),
                        "orientation": dict(zip("xyzw", rp.quaternion()))},
               "covariance": np.asarray(rp.covariance, np.float64).ravel()}
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
        "match_pose_frame_id": c.match_pose.frame_id if c.match_pose is not None else "",
        "verification": int(c.verification),
        "has_relative_pose": rp is not None,
        "relative_pose_metric": bool(rp is not None and rp.metric),
        "relative_pose": rel,
        "relative_pose_model": rp.model if rp is not None else "",
        "inlier_count": int(c.geometry.inliers) if c.geometry is not None and not c.geometry.skipped else -1,
        "inlier_ratio": float(c.geometry.inlier_ratio) if c.geometry is not None else 0.0,
        "robot_id": int(c.robot_id),
        "match_robot_id": int(c.match_robot_id),
        "query_slam_id": -1 if c.query_slam_id is None else int(c.query_slam_id),
        "match_slam_id": -1 if c.match_slam_id is None else int(c.match_slam_id),
    }


def edges_message_fields(outcome: FrameOutcome) -> dict[str, Any]:
    """Fields of the ``selavpr_ros/PoseGraph`` published for one processed frame (its edges)."""
    frame_id = outcome.edges[0].frame_id if outcome.edges else outcome.frame.frame_id
    return pose_graph_fields(outcome.edges, outcome.frame.stamp_ns, frame_id)


def candidate_array_fields(outcome: FrameOutcome, map_id: str, frame_id: str = "") -> dict[str, Any]:
    """Fields of a ``selavpr_ros/LoopClosureCandidateArray`` for one processed frame."""
    header = header_fields(outcome.frame.stamp_ns, frame_id or outcome.frame.frame_id)
    cands = []
    for c in outcome.result.candidates:
        f = candidate_fields(c, map_id)
        f["header"] = header
        cands.append(f)
    return {"header": header, "candidates": cands}
