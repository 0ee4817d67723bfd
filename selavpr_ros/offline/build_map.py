"""Maps from bags: every image topic message through the keyframe gate into a map session.

One bag becomes one session (named after the bag unless told otherwise).
The build is resumable: a session already in the map continues after its
newest keyframe, so re-running after a crash or Ctrl-C adds only what is
missing. Keyframes are committed in small groups, each atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from selavpr_ros.bags.poses import PoseTrack, load_pose_track
from selavpr_ros.bags.reader import image_connections, iter_images, open_bags
from selavpr_ros.errors import BagError, ImageError
from selavpr_ros.inference.base import Extractor
from selavpr_ros.loop_closure.config import KeyframeGateConfig
from selavpr_ros.loop_closure.engine import KeyframeGate
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.mapdb.records import StorageConfig
from selavpr_ros.node.pipeline import open_map
from selavpr_ros.transport.image_decoding import decode_any
from selavpr_ros.types import Descriptors, KeyframeRecord

log = logging.getLogger(__name__)
_NO_DESCRIPTOR = np.zeros(0, np.float32)  # for gate checks that do not compare appearance


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
) -> list[SessionReport]:
    """Add the keyframes of each bag to the map at ``out`` (created when absent)."""
    if sessions is not None and len(sessions) != len(bags):
        raise BagError(f"{len(sessions)} session names for {len(bags)} bags")
    out = Path(out)
    db = open_map(out, extractor, "mapping", storage)
    reports = []
    try:
        for i, bag in enumerate(bags):
            name = sessions[i] if sessions else session_name(Path(bag))
            reports.append(_build_session(db, Path(bag), name, image_topic, extractor, pose_topic, base_frame,
                                          map_frame, gate or KeyframeGateConfig(), save_images, max_pose_gap_s,
                                          commit_every, progress))
    finally:
        db.close()
    return reports


def _build_session(db: MapDatabase, bag: Path, session: str, image_topic: str, extractor: Extractor,
                   pose_topic: str | None, base_frame: str | None, map_frame: str | None, gate_cfg: KeyframeGateConfig,
                   save_images: bool, max_pose_gap_s: float, commit_every: int, progress: bool) -> SessionReport:
    report = SessionReport(session, str(bag))
    gate = KeyframeGate(gate_cfg)
    resume_stamp = -1
    newest = db.newest_keyframe(session)
    if newest is not None:
        record, descriptor = newest
        resume_stamp = record.stamp_ns
        gate.accept(record.stamp_ns, descriptor, record.pose)
    image_dir = db.path / "images" / session
    if save_images:
        image_dir.mkdir(parents=True, exist_ok=True)
    pending_desc: list[Descriptors] = []
    pending_rec: list[KeyframeRecord] = []

    def commit() -> None:
        if pending_rec:
            db.add(Descriptors.concat(pending_desc), pending_rec, session=session)
            report.added += len(pending_rec)
            pending_desc.clear()
            pending_rec.clear()

    with open_bags([bag]) as reader:
        total = sum(c.msgcount for c in image_connections(reader, image_topic))
        track: PoseTrack | None = None
        if pose_topic:
            track = load_pose_track(reader, pose_topic, base_frame=base_frame, map_frame=map_frame)
        posed = 0
        bar = tqdm(total=total, desc=f"{session}", unit="img", disable=not progress)
        for item in iter_images(reader, image_topic):
            bar.update()
            report.messages += 1
            if item.stamp_ns <= resume_stamp:
                report.already_in_map += 1
                continue
            pose = track.interpolate(np.array([item.stamp_ns]), max_pose_gap_s)[0] if track is not None else None
            if track is not None and pose is None:
                report.without_pose += 1
                if item.stamp_ns > track.stamps_ns[-1] and not posed:
                    _no_overlap(bag, pose_topic, track, item.stamp_ns)
            posed += pose is not None
            # time and motion first: most frames are rejected before any inference (with max_similarity >= 1
            # the gate never reads the descriptor, so an empty one stands in for the one not yet computed)
            reason = gate.check(item.stamp_ns, _NO_DESCRIPTOR, pose) if gate_cfg.max_similarity >= 1.0 else ""
            if reason:
                report.gated_out += 1
                continue
            try:
                rgb = decode_any(item.msg)
            except ImageError as exc:
                report.bad_frames += 1
                if len(report.errors) < 10:
                    report.errors.append(f"{item.stamp_ns}: {exc}")
                continue
            desc = extractor.extract([rgb], batch_size=1)
            if gate_cfg.max_similarity < 1.0 and gate.check(item.stamp_ns, desc.descriptors[0], pose):
                report.gated_out += 1
                continue
            ref = ""
            if save_images:
                path = image_dir / f"{item.stamp_ns}.jpg"
                Image.fromarray(rgb).save(path, quality=92)
                ref = str(path.relative_to(db.path))
            pending_desc.append(desc)
            pending_rec.append(KeyframeRecord(stamp_ns=item.stamp_ns, frame_id=item.frame_id, source=str(bag),
                                              topic=image_topic, image_ref=ref, pose=pose, session=session))
            gate.accept(item.stamp_ns, desc.descriptors[0], pose)
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
