"""Maps from bags: every image topic message through the keyframe gate into a map session.

One bag becomes one session (named after the bag unless told otherwise).
Each keyframe stores the camera model of its CameraInfo (the ``camera_info``
topic beside the images) and, for the geometric stage, its keypoints (with
depth when a registered depth topic is given).
The build is resumable: a session already in the map continues after its
newest keyframe, so re-running after a crash or Ctrl-C adds only what is
missing. Keyframes are committed in small groups, each atomically.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from selavpr_ros.bags.poses import PoseTrack, load_pose_track
from selavpr_ros.bags.reader import (
    StampedLookup,
    camera_info_topic,
    image_count,
    iter_images,
    load_camera_track,
    open_bags,
)
from selavpr_ros.errors import BagError, CameraError, ImageError
from selavpr_ros.geometry.camera import CameraTrack
from selavpr_ros.geometry.features import KeypointConfig, Keypoints, detect
from selavpr_ros.inference.base import Extractor
from selavpr_ros.loop_closure.config import KeyframeGateConfig
from selavpr_ros.loop_closure.engine import KeyframeGate
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.mapdb.records import StorageConfig
from selavpr_ros.node.pipeline import open_map
from selavpr_ros.transport.image_decoding import decode_any, decode_depth
from selavpr_ros.types import Descriptors, KeyframeRecord

log = logging.getLogger(__name__)
_NO_DESCRIPTOR = np.zeros(0, np.float32)  # for gate checks that do not compare appearance
DEFAULT_CHUNK_IMAGES = 2000  # image messages per unit of work (see build_map's chunk_images)


@dataclass
class SessionReport:
    session: str
    bag: str
    messages: int = 0
    bad_frames: int = 0
    already_in_map: int = 0
    gated_out: int = 0
    added: int = 0
    without_pose: int = 0
    without_camera: int = 0
    camera_problem: str = ""  # why keyframes have no camera model (the first reason seen)
    errors: list[str] = field(default_factory=list)


def session_name(bag: Path) -> str:
    bag = Path(bag)
    return bag.stem if bag.suffix in (".bag", ".db3", ".mcap", ".yaml") else bag.name


def build_map(
    bags: list[str | Path],
    image_topic: str,
    out: str | Path,
    extractor: Extractor,
    pose_topic: str | None = None,
    base_frame: str | None = None,
    map_frame: str | None = None,
    sessions: list[str] | None = None,
    gate: KeyframeGateConfig | None = None,
    storage: StorageConfig | None = None,
    save_images: bool = False,
    max_pose_gap_s: float = 0.5,
    commit_every: int = 32,
    progress: bool = True,
    camera_info: str | None = "",
    keypoints: KeypointConfig | str | None = "auto",
    depth_topic: str | None = None,
    batch_size: int = 8,
    chunk_images: int = DEFAULT_CHUNK_IMAGES,
) -> list[SessionReport]:
    """Add the keyframes of each bag to the map at ``out`` (created when absent).

    ``camera_info``: CameraInfo topic ("" = the one beside ``image_topic``, None = none);
    ``keypoints``: store keyframe keypoints for the geometric stage ("auto": ORB when the
    bag has CameraInfo, which verification needs anyway); ``depth_topic``:
    a depth image registered to the camera, stamped like it, for metric (PnP) poses;
    ``batch_size``: keyframes described per model call (one when the gate compares appearance,
    ``max_similarity`` < 1, since each descriptor decides the next keyframe). Batching changes
    no result: the gate decides on time and motion before any descriptor exists.
    """
    names, _ = check_inputs(bags, image_topic, sessions, pose_topic, base_frame, map_frame, batch_size, chunk_images)
    reports = []
    with writing_map(out, extractor, storage) as db:
        for bag, name in zip(bags, names):
            geometry = _Geometry(camera_info, keypoints, depth_topic)
            sink = _MapSink(db, name)
            images = db.path if save_images else None
            reports.append(build_session(sink, Path(bag), name, image_topic, extractor, pose_topic, base_frame,
                                         map_frame, gate or KeyframeGateConfig(), max_pose_gap_s, commit_every,
                                         progress, geometry, batch_size, newest=db.newest_keyframe(name),
                                         images=images, chunk_images=chunk_images))
    return reports


@contextlib.contextmanager
def writing_map(out: str | Path, extractor: Extractor, storage: StorageConfig | None) -> Iterator[MapDatabase]:
    """The map at ``out`` opened for mapping (created when absent), closed after; a run that made the
    folder and put nothing in it leaves no empty map behind."""
    out = Path(out)
    created = not out.exists()
    db = open_map(out, extractor, "mapping", storage)
    try:
        yield db
    except BaseException:
        empty = db.count == 0
        db.close()
        if created and empty:
            shutil.rmtree(out, ignore_errors=True)
        raise
    db.close()


def check_inputs(bags: list[str | Path], image_topic: str, sessions: list[str] | None, pose_topic: str | None,
                 base_frame: str | None, map_frame: str | None, batch_size: int,
                 chunk_images: int) -> tuple[list[str], list[int]]:
    """Check every bag before the map is created or touched; returns the session names and each
    bag's image messages."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if chunk_images < 1:
        raise ValueError(f"chunk_images must be >= 1, got {chunk_images}")
    if sessions is not None and len(sessions) != len(bags):
        raise BagError(f"{len(sessions)} session names for {len(bags)} bags")
    counts = []
    for bag in bags:
        with open_bags([bag]) as reader:
            counts.append(image_count(reader, image_topic))  # BagError when the topic is missing
            if pose_topic:
                load_pose_track(reader, pose_topic, base_frame=base_frame, map_frame=map_frame)
    return (list(sessions) if sessions else [session_name(Path(b)) for b in bags]), counts


class _MapSink:
    """Commits described keyframes to the map (the serial executor's writer)."""

    def __init__(self, db: MapDatabase, session: str) -> None:
        self.db, self.session = db, session

    def __call__(self, desc: Descriptors, records: list[KeyframeRecord], kps: list[Keypoints | None]) -> None:
        stored = any(k is not None for k in kps)  # detected for every keyframe of a bag, or for none
        self.db.add(desc, records, session=self.session, keypoints=kps if stored else None)


@dataclass
class _Geometry:
    camera_info: str | None
    keypoints: KeypointConfig | str | None
    depth_topic: str | None
    track: CameraTrack | None = None
    depth: StampedLookup | None = None

    def open(self, reader, image_topic: str) -> None:
        if self.camera_info is not None:
            self.track = load_camera_track(reader, self.camera_info or camera_info_topic(image_topic))
        if self.keypoints == "auto":
            self.keypoints = KeypointConfig() if self.track is not None and len(self.track) else None
        if self.depth_topic:
            self.depth = StampedLookup(reader, self.depth_topic)

    def validate(self, rgb: np.ndarray, stamp: int) -> np.ndarray | None:
        """The frame's registered depth image, if any; ImageError if the frame cannot be a keyframe."""
        if not isinstance(self.keypoints, KeypointConfig) or self.depth is None:
            return None
        msg = self.depth.get(stamp)
        depth = decode_depth(msg) if msg is not None else None
        if depth is not None and depth.shape != rgb.shape[:2]:
            raise ImageError(f"depth image {depth.shape[1]}x{depth.shape[0]} at {stamp} is not registered "
                             f"to the {rgb.shape[1]}x{rgb.shape[0]} camera image")
        return depth

    def keypoints_of(self, rgb: np.ndarray, stamp: int) -> Keypoints | None:
        if not isinstance(self.keypoints, KeypointConfig):
            return None
        return detect(rgb, self.keypoints, self.validate(rgb, stamp))


@dataclass
class _Ready:
    """A frame that passed the gate's time and motion tests, decoded, waiting for its descriptor."""

    rgb: np.ndarray
    record: KeyframeRecord
    keypoints: Keypoints | None
    camera_problem: str


def build_session(sink: Callable[[Descriptors, list[KeyframeRecord], list[Keypoints | None]], None], bag: Path,
                  session: str, image_topic: str, extractor: Extractor, pose_topic: str | None,
                  base_frame: str | None, map_frame: str | None, gate_cfg: KeyframeGateConfig, max_pose_gap_s: float,
                  commit_every: int, progress: bool, geometry: _Geometry, batch_size: int = 8,
                  newest: tuple[KeyframeRecord, np.ndarray] | None = None, images: Path | None = None,
                  chunk_images: int = DEFAULT_CHUNK_IMAGES, window: tuple[int, int | None] = (0, None)
                  ) -> SessionReport:
    """One bag's keyframes, described and handed to ``sink`` in commit groups.

    ``newest``: the session's newest keyframe in the map (resume after it);
    ``images``: the map folder, to keep keyframe images under ``images/SESSION``;
    ``window``: image messages ``[start, stop)`` (in bag order) to describe; those before
    ``start`` only pass through the keyframe gate (decoded, not described) so that the gate
    decides as it would in one pass over the whole bag.
    """
    report = SessionReport(session, str(bag))
    gate = KeyframeGate(gate_cfg)
    appearance = gate_cfg.max_similarity < 1.0  # the gate reads descriptors: each one before the next decision
    batch_size = 1 if appearance else batch_size
    resume_stamp = -1
    if newest is not None:
        record, descriptor = newest
        resume_stamp = record.stamp_ns
        gate.accept(record.stamp_ns, descriptor, record.pose)
    start, stop = window
    if appearance and (start or stop is not None):
        raise ValueError("a keyframe gate that compares appearance (max_similarity < 1) cannot split a bag")
    image_dir = images / "images" / session if images is not None else None
    if image_dir is not None:
        image_dir.mkdir(parents=True, exist_ok=True)
    ready: list[_Ready] = []
    pending_desc: list[Descriptors] = []
    pending_rec: list[KeyframeRecord] = []
    pending_kp: list[Keypoints | None] = []

    def describe() -> None:
        """Describe the ready frames in one batch and queue those that stay keyframes."""
        if not ready:
            return
        desc = extractor.extract([r.rgb for r in ready], batch_size=len(ready))
        keep = []
        for i, r in enumerate(ready):
            if appearance and gate.check(r.record.stamp_ns, desc.descriptors[i], r.record.pose):
                report.gated_out += 1
                continue
            if appearance:
                gate.accept(r.record.stamp_ns, desc.descriptors[i], r.record.pose)
            if image_dir is not None:
                name = f"{r.record.stamp_ns}.jpg"
                Image.fromarray(r.rgb).save(image_dir / name, quality=92)
                r.record.image_ref = f"images/{session}/{name}"
            if geometry.track is not None and r.record.camera is None:
                report.without_camera += 1
                report.camera_problem = report.camera_problem or r.camera_problem
            keep.append(i)
            pending_kp.append(r.keypoints)
            pending_rec.append(r.record)
        if keep:
            pending_desc.append(desc if len(keep) == len(ready) else desc[np.asarray(keep)])
        ready.clear()

    def commit() -> None:
        describe()
        if pending_rec:
            sink(Descriptors.concat(pending_desc), list(pending_rec), list(pending_kp))
            report.added += len(pending_rec)
            pending_desc.clear()
            pending_rec.clear()
            pending_kp.clear()

    with open_bags([bag]) as reader:
        total = image_count(reader, image_topic)
        track: PoseTrack | None = None
        if pose_topic:
            track = load_pose_track(reader, pose_topic, base_frame=base_frame, map_frame=map_frame)
        geometry.open(reader, image_topic)
        posed = 0
        bar = tqdm(total=total, desc=f"{session}", unit="img", disable=not progress)
        for index, item in enumerate(iter_images(reader, image_topic)):
            if stop is not None and index >= stop:
                break
            if index and index % chunk_images == 0:
                commit()  # a chunk boundary: every executor describes and commits the same groups
            dry = index < start  # before this window: only the gate's decisions matter
            if not dry:
                bar.update()
                report.messages += 1
            if item.stamp_ns <= resume_stamp:
                report.already_in_map += not dry
                continue
            pose = track.interpolate(np.array([item.stamp_ns]), max_pose_gap_s)[0] if track is not None else None
            if track is not None and pose is None and not dry:
                report.without_pose += 1
                if item.stamp_ns > track.stamps_ns[-1] and not posed:
                    _no_overlap(bag, pose_topic, track, item.stamp_ns)
            posed += pose is not None
            # time and motion first: most frames are rejected before any inference (with max_similarity >= 1
            # the gate never reads the descriptor, so an empty one stands in for the one not yet computed)
            reason = gate.check(item.stamp_ns, _NO_DESCRIPTOR, pose) if not appearance else ""
            if reason:
                report.gated_out += not dry
                continue
            if dry:
                try:  # what makes a frame a bad frame, without describing it
                    geometry.validate(decode_any(item.msg), item.stamp_ns)
                except ImageError:
                    continue
                gate.accept(item.stamp_ns, _NO_DESCRIPTOR, pose)
                continue
            problem = ""
            try:
                rgb = decode_any(item.msg)
                camera = None
                if geometry.track is not None:
                    camera, problem = geometry.track.lookup(item.stamp_ns)
                    if camera is not None:
                        camera.check_image(rgb.shape[1], rgb.shape[0])
                kp = geometry.keypoints_of(rgb, item.stamp_ns)
            except CameraError as exc:
                camera, problem, kp = None, str(exc), geometry.keypoints_of(rgb, item.stamp_ns)
            except ImageError as exc:
                report.bad_frames += 1
                if len(report.errors) < 10:
                    report.errors.append(f"{item.stamp_ns}: {exc}")
                continue
            if not appearance:  # the decision is final now: later frames are gated against this one
                gate.accept(item.stamp_ns, _NO_DESCRIPTOR, pose)
            ready.append(_Ready(rgb, KeyframeRecord(stamp_ns=item.stamp_ns, frame_id=item.frame_id, source=str(bag),
                                                    topic=image_topic, pose=pose, session=session, camera=camera),
                                kp, problem))
            if len(ready) >= batch_size:
                describe()
            if len(pending_rec) >= commit_every and (track is None or posed):
                commit()
        if track is not None and not posed and report.messages > report.already_in_map:
            _no_overlap(bag, pose_topic, track, item.stamp_ns)  # nothing was committed
        commit()
        bar.close()
    return report


def _no_overlap(bag: Path, topic: str | None, track: PoseTrack, stamp_ns: int) -> None:
    raise BagError(f"{bag}: pose topic '{topic}' ({track.stamps_ns[0] * 1e-9:.1f}-{track.stamps_ns[-1] * 1e-9:.1f} s) "
                   f"does not overlap the images (image at {stamp_ns * 1e-9:.1f} s has no pose); nothing was added")
