"""A worker thread that always takes the newest frame, and the node's running statistics.

Cameras publish faster than a CPU robot describes images; a queue would
grow without bound and answers would come later and later. The mailbox
holds one frame: a new frame replaces the waiting one (counted as dropped),
so memory is constant and each answer is about the freshest image.

Statistics are only touched under the worker's lock, and
:meth:`LatestFrameWorker.snapshot` is how the diagnostics read them. Neither a
bad frame nor a failing publish (e.g. after shutdown) ends the worker thread;
if the thread ever does end, the diagnostics say so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from selavpr_ros.errors import SelaVPRError, StampError
from selavpr_ros.node.pipeline import Frame, FrameOutcome, VPRPipeline

log = logging.getLogger(__name__)


ERROR_TEXT_LIMIT = 240  # characters of an error kept for diagnostics and logs


def clip(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (errors can quote attacker-sized message fields)."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


@dataclass
class NodeStats:
    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the mailbox before the worker took them
    bad_frames: int = 0  # failed to decode or describe, or held back for their stamp
    stamp_jumps: int = 0  # of the bad frames: stamped far from the stream's time
    publish_errors: int = 0  # results that could not be published
    keyframes: int = 0
    accepted: int = 0  # accepted loop-closure candidates
    last_error: str = ""
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=500))  # receive -> published
    stage_ms: dict[str, deque] = field(default_factory=dict)

    def record(self, outcome: FrameOutcome, latency_ms: float) -> None:
        self.processed += 1
        self.keyframes += int(outcome.result.is_keyframe)
        self.accepted += len(outcome.result.accepted)
        self.latency_ms.append(latency_ms)
        for key, value in outcome.timings_ms.items():
            self.stage_ms.setdefault(key, deque(maxlen=500)).append(value)

    def summary(self) -> dict[str, float]:
        def pct(values, q: float) -> float:
            return float(np.percentile(values, q)) if values else float("nan")

        out = {"received": self.received, "processed": self.processed, "dropped": self.dropped,
               "bad_frames": self.bad_frames, "stamp_jumps": self.stamp_jumps,
               "publish_errors": self.publish_errors, "keyframes": self.keyframes, "accepted": self.accepted,
               "latency_p50_ms": pct(self.latency_ms, 50), "latency_p95_ms": pct(self.latency_ms, 95)}
        for key, values in self.stage_ms.items():
            out[f"{key}_p50_ms"] = pct(values, 50)
            out[f"{key}_p95_ms"] = pct(values, 95)
        return out


class LatestFrameWorker:
    """Runs ``pipeline.process`` on the newest submitted frame; ``on_result`` publishes."""

    def __init__(self, pipeline: VPRPipeline, on_result: Callable[[FrameOutcome], None]) -> None:
        self.pipeline = pipeline
        self.on_result = on_result
        self.stats = NodeStats()
        self._pending: Frame | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="vpr-worker", daemon=True)
        self._thread.start()

    def submit(self, frame: Frame) -> None:
        """Hand over a frame; a frame still waiting is dropped in its favour."""
        with self._cond:
            self.stats.received += 1
            if self._pending is not None:
                self.stats.dropped += 1
            self._pending = frame
            self._cond.notify()

    def record(self, outcome: FrameOutcome, latency_ms: float) -> None:
        """Count a frame processed outside the worker (the ~/query service)."""
        with self._cond:
            self.stats.received += 1
            self.stats.record(outcome, latency_ms)

    def count_bad(self, error: Exception) -> None:
        """A frame that failed before reaching the worker (e.g. unreadable message)."""
        with self._cond:
            self.stats.received += 1
            self.stats.bad_frames += 1
            self.stats.last_error = clip(str(error))

    def snapshot(self) -> dict:
        """The statistics as plain values, read under the lock (for diagnostics)."""
        with self._cond:
            out: dict = dict(self.stats.summary())
            out["last_error"] = self.stats.last_error
        out["worker_alive"] = self._thread.is_alive() or self._stop  # stopped on purpose is not dead
        out["geometry_skipped"] = self.pipeline.geometry_skipped
        out["camera_info_received"] = self.pipeline.cameras.received
        out["last_geometry_skip"] = self.pipeline.last_geometry_skip
        out["depth_received"] = self.pipeline.depths.received
        out["depth_errors"] = self.pipeline.depths.errors
        out["edges_published"] = self.pipeline.edges_published
        out["edges_skipped"] = self.pipeline.edges_skipped
        out["last_edge_problem"] = self.pipeline.last_edge_problem
        return out

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                frame = self._pending
                self._pending = None
            assert frame is not None
            try:
                outcome = self.pipeline.process(frame)
            except (SelaVPRError, ValueError) as exc:  # one bad frame never stops the node
                message = clip(str(exc))
                with self._cond:
                    self.stats.bad_frames += 1
                    self.stats.stamp_jumps += isinstance(exc, StampError)
                    self.stats.last_error = message
                log.warning("bad frame at %.3f s: %s", frame.stamp_ns * 1e-9, message)
                continue
            except Exception as exc:  # noqa: BLE001 - keep the node alive, report loudly
                message = clip(f"{type(exc).__name__}: {exc}")
                with self._cond:
                    self.stats.bad_frames += 1
                    self.stats.last_error = message
                log.error("frame at %.3f s failed: %s", frame.stamp_ns * 1e-9, message, exc_info=True)
                continue
            latency = (time.monotonic() - frame.received) * 1000
            with self._cond:
                self.stats.record(outcome, latency)
            try:
                self.on_result(outcome)
            except Exception as exc:  # noqa: BLE001 - e.g. publishing after shutdown began
                message = clip(f"publish failed: {type(exc).__name__}: {exc}")
                with self._cond:
                    self.stats.publish_errors += 1
                    self.stats.last_error = message
                log.error(message)

    def idle(self) -> bool:
        with self._cond:
            return self._pending is None

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the frame in progress and end the thread (waits at most ``timeout`` seconds)."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)


def diagnostic_status(snapshot: dict, map_size: int, mode: str, name: str = "vpr_node") -> dict:
    """Fields of one ``diagnostic_msgs/DiagnosticStatus`` from :meth:`LatestFrameWorker.snapshot`."""
    s = dict(snapshot)
    last_error = clip(str(s.pop("last_error", "")))
    alive = bool(s.pop("worker_alive", True))
    geometry_skip = clip(str(s.pop("last_geometry_skip", "")))
    edge_problem = clip(str(s.pop("last_edge_problem", "")))
    level, message = 0, f"{mode}: {s['processed']} frames, {map_size} keyframes in the map"
    if s.get("geometry_skipped"):
        level = 1
        message = f"{s['geometry_skipped']} frame(s) not verified geometrically: {geometry_skip}"
    if s.get("edges_skipped"):
        level = 1
        message = f"{s['edges_skipped']} accepted closure(s) without an edge: {edge_problem}"
    if s["bad_frames"] or s["publish_errors"]:
        level = 1
        message = f"{s['bad_frames']} bad frame(s), {s['publish_errors']} failed publish(es); last: {last_error}"
    if s["received"] > 20 and s["processed"] == 0:
        level, message = 2, "frames arrive but none is processed"
    if not alive:
        level, message = 2, f"the worker thread has stopped; last error: {last_error or 'none'}"
    values = [{"key": k, "value": f"{v:.2f}" if isinstance(v, float) else str(v)} for k, v in s.items()]
    values.append({"key": "map_size", "value": str(map_size)})
    values.append({"key": "mode", "value": mode})
    return {"level": level, "name": name, "message": message, "hardware_id": "", "values": values}
