"""Replay a bag through the loop-closure engine against a map, offline.

Every image goes through the node's own pipeline (decode, describe, gate,
retrieve, judge); the results are written as JSON (one object per query
frame), CSV (one row per candidate) and a rosbag2 holding the
``selavpr_ros/msg/LoopClosureCandidateArray`` and ``PoseGraph`` messages the
node would have published, stamped with the images' bag times.

Replay streams: each outcome goes to the sinks (:class:`ReplayWriter` writes
the outputs as it goes) and the frame's pixels are released, so memory does
not grow with the bag; outcomes are kept only when the caller asks for them.
"""

from __future__ import annotations

import csv
import json
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from selavpr_ros.bags.poses import TFMESSAGE, load_pose_track
from selavpr_ros.bags.reader import (
    StampedLookup,
    camera_info_topic,
    image_count,
    iter_images,
    load_camera_track,
    open_bags,
)
from selavpr_ros.bags.writer import BagRecorder
from selavpr_ros.errors import BagError, ImageError, StampError
from selavpr_ros.node.live_poses import LiveTransforms, mount_lookup
from selavpr_ros.node.pipeline import (
    Frame,
    FrameOutcome,
    VPRPipeline,
    candidate_array_fields,
    edges_message_fields,
)
from selavpr_ros.transport.msgtypes import message

CANDIDATES = "selavpr_ros/msg/LoopClosureCandidateArray"
EDGES = "selavpr_ros/msg/PoseGraph"


OutcomeSink = Callable[[FrameOutcome, int], None]  # (outcome, the image's bag time)
TIMING_SAMPLES = 10_000  # per stage, for the medians: bounded however long the bag


@dataclass
class ReplayResult:
    outcomes: list[FrameOutcome] = field(default_factory=list)  # only when kept (frames without pixels)
    bad_frames: int = 0
    errors: list[str] = field(default_factory=list)
    frames: int = 0
    keyframes: int = 0
    accepted: int = 0
    stage_samples: dict[str, deque] = field(default_factory=dict)

    @property
    def queries(self) -> list[FrameOutcome]:
        return [o for o in self.outcomes if o.result.is_keyframe]

    def count(self, outcome: FrameOutcome) -> None:
        self.frames += 1
        if outcome.result.is_keyframe:
            self.keyframes += 1
            self.accepted += len(outcome.result.accepted)
            for key, value in outcome.timings_ms.items():
                self.stage_samples.setdefault(key, deque(maxlen=TIMING_SAMPLES)).append(value)

    def stage_ms(self) -> dict[str, float]:
        """Median per-stage latency over the query frames."""
        return {k: float(np.median(v)) for k, v in sorted(self.stage_samples.items())}


def static_transforms(reader, topic: str = "/tf_static") -> LiveTransforms:
    """Every transform of a bag's ``/tf_static`` (camera mounts), as the node's TF buffer."""
    transforms = LiveTransforms()
    conns = [c for c in reader.connections if c.topic == topic]
    wrong = sorted({c.msgtype for c in conns if c.msgtype != TFMESSAGE})
    if wrong:
        raise BagError(f"topic '{topic}' has type {', '.join(wrong)}, not {TFMESSAGE}")
    if not conns:  # an empty list would mean "every connection" to rosbags
        return transforms
    for conn, _, raw in reader.messages(connections=conns):
        transforms.add(reader.deserialize(raw, conn.msgtype), static=True)
    return transforms


def replay(bag: str | Path, image_topic: str, pipeline: VPRPipeline, progress: bool = True,
           camera_info: str | None = "", pose_topic: str | None = None, depth_topic: str | None = None,
           max_pose_gap_s: float = 0.5, sinks: Sequence[OutcomeSink] = (), keep_outcomes: bool = True,
           batch_size: int = 8) -> ReplayResult:
    """Every image of ``image_topic`` through ``pipeline``; CameraInfo from ``camera_info``
    ("" = the topic beside the images, None = none); with ``pose_topic`` each frame gets the pose
    interpolated at its stamp, with ``depth_topic`` its registered depth image (fed to the pipeline's
    depth buffer, as the node's depth subscription does). With ``edges.base_frame`` set, the camera
    mounts for the pose-graph edges come from the bag's ``/tf_static``. Each outcome goes to ``sinks``;
    ``keep_outcomes=False`` keeps none of them (memory independent of the bag's length).
    ``batch_size`` frames are described per model call (memory: that many images); the outcomes
    are those of one frame at a time."""
    if not 1 <= batch_size <= pipeline.depths.capacity:
        raise ValueError(f"batch_size must be in [1, {pipeline.depths.capacity}], got {batch_size}")
    result = ReplayResult()
    with open_bags([bag]) as reader:
        if pipeline.params["edges.base_frame"] and pipeline.mount_lookup is None:
            pipeline.mount_lookup = mount_lookup(static_transforms(reader), pipeline.params["edges.base_frame"])
        total = image_count(reader, image_topic)
        cameras = None
        if camera_info is not None:
            cameras = load_camera_track(reader, camera_info or camera_info_topic(image_topic),
                                        float(pipeline.params["camera_info.max_age_s"]))
        track = load_pose_track(reader, pose_topic) if pose_topic else None
        depths = StampedLookup(reader, depth_topic) if depth_topic else None
        batch: list[tuple[Frame, int]] = []

        def run_batch() -> None:
            for (frame, bag_time), outcome in zip(batch, pipeline.process_batch([f for f, _ in batch])):
                frame.msg = frame.depth = None  # the pixels are done with: never held for the whole bag
                if isinstance(outcome, (ImageError, StampError)):  # a bad frame: counted, the replay goes on
                    result.bad_frames += 1
                    if len(result.errors) < 10:
                        result.errors.append(f"{frame.stamp_ns}: {outcome}")
                    continue
                if isinstance(outcome, Exception):
                    raise outcome
                result.count(outcome)
                for sink in sinks:
                    sink(outcome, bag_time)
                if keep_outcomes:
                    result.outcomes.append(outcome)
            batch.clear()

        for item in tqdm(iter_images(reader, image_topic), total=total, desc=f"replay {Path(bag).name}",
                         unit="img", disable=not progress):
            frame = Frame(item.msg, item.stamp_ns, item.frame_id, source=str(bag), topic=image_topic)
            if cameras is not None:
                frame.camera, frame.camera_problem = cameras.lookup(item.stamp_ns)
            if track is not None:
                frame.pose = track.interpolate(np.array([item.stamp_ns]), max_pose_gap_s)[0]
            if depths is not None:
                depth_msg = depths.get(item.stamp_ns)
                if depth_msg is not None:
                    pipeline.depths.add(item.stamp_ns, depth_msg)
            batch.append((frame, item.bag_time_ns))
            if len(batch) >= batch_size:
                run_batch()
        run_batch()
    return result


def outcome_dict(outcome: FrameOutcome) -> dict[str, Any]:
    r = outcome.result
    return {
        "stamp_ns": r.stamp_ns, "keyframe": r.is_keyframe, "keyframe_id": r.keyframe_id,
        "skipped_reason": r.skipped_reason, "timings_ms": outcome.timings_ms,
        "candidates": [{"match_keyframe_id": c.match_keyframe_id, "match_stamp_ns": c.match_stamp_ns,
                        "match_session": c.match_session, "score": c.score, "hamming": c.hamming,
                        "local_matches": c.local_matches, "rank": c.rank, "status": c.status.name.lower(),
                        "reason": c.reason,
                        "match_position": list(c.match_pose.position) if c.match_pose else None,
                        "verification": c.verification.name.lower(), **_geometry_dict(c)}
                       for c in r.candidates],
    }


def _geometry_dict(c) -> dict[str, Any]:
    g = c.geometry
    if g is None:
        return {}
    out: dict[str, Any] = {"inliers": g.inliers, "matches": g.matches}
    if c.relative_pose is not None:
        out.update(relative_model=g.model, relative_metric=g.metric, relative_translation=g.translation.tolist(),
                   relative_quaternion_xyzw=list(g.quaternion()))
    return out


class ReplayWriter:
    """The replay's outputs, written as outcomes come (an :data:`OutcomeSink`): ``candidates.json``
    (one object per query frame), ``candidates.csv`` (one row per candidate) and a rosbag2 of the
    candidate arrays and pose-graph edges the node would have published."""

    COLUMNS = ["query_stamp_ns", "rank", "status", "match_keyframe_id", "match_stamp_ns", "match_session",
               "score", "hamming", "local_matches", "reason"]

    def __init__(self, pipeline: VPRPipeline, json_path: Path | None = None, csv_path: Path | None = None,
                 bag_path: Path | None = None, topic: str = "/loop_closures",
                 edges_topic: str = "/loop_closure_edges") -> None:
        self.map_id = pipeline.map_id
        self.topic, self.edges_topic = topic, edges_topic
        for path in (json_path, csv_path, bag_path):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
        self._json = json_path.open("w") if json_path else None
        self._csv_file = csv_path.open("w", newline="") if csv_path else None
        self._csv = csv.writer(self._csv_file) if self._csv_file else None
        self._bag = BagRecorder(bag_path, [(topic, CANDIDATES), (edges_topic, EDGES)]) if bag_path else None
        self._first = True
        if self._json:
            self._json.write("[")
        if self._csv:
            self._csv.writerow(self.COLUMNS)

    def __call__(self, outcome: FrameOutcome, bag_time: int) -> None:
        if not outcome.result.is_keyframe:
            return
        if self._json:
            self._json.write(("\n" if self._first else ",\n") + json.dumps(outcome_dict(outcome), indent=1))
            self._first = False
        if self._csv:
            for c in outcome.result.candidates:
                self._csv.writerow([outcome.result.stamp_ns, c.rank, c.status.name.lower(), c.match_keyframe_id,
                                    c.match_stamp_ns, c.match_session, f"{c.score:.6f}", c.hamming, c.local_matches,
                                    c.reason])
        if self._bag:
            self._bag.write(self.topic, bag_time, message(CANDIDATES, **candidate_array_fields(outcome, self.map_id)))
            if outcome.edges:
                self._bag.write(self.edges_topic, bag_time, message(EDGES, **edges_message_fields(outcome)))

    def close(self) -> None:
        if self._json:
            self._json.write("\n]\n")
            self._json.close()
        if self._csv_file:
            self._csv_file.close()
        if self._bag:
            self._bag.close()

    def __enter__(self) -> ReplayWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
