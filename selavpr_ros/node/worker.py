"""A worker thread that always takes the newest frame, and the node's running statistics.

Cameras publish faster than a CPU robot describes images; a queue would
grow without bound and answers would come later and later. The mailbox
holds one frame: a new frame replaces the waiting one (counted as dropped),
so memory is constant and each answer is about the freshest image.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from selavpr_ros.errors import SelaVPRError
from selavpr_ros.node.pipeline import Frame, FrameOutcome, VPRPipeline

log = logging.getLogger(__name__)


@dataclass
class NodeStats:
    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the mailbox before the worker took them
    bad_frames: int = 0  # failed to decode or describe
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
               "bad_frames": self.bad_frames, "keyframes": self.keyframes, "accepted": self.accepted,
               "latency_p50_ms": pct(self.latency_ms, 50), "latency_p95_ms": pct(self.latency_ms, 95)}
        for key, values in self.stage_ms.items():
            out[f"{key}_p50_ms"] = pct(values, 50)
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

    def count_bad(self, error: Exception) -> None:
        """A frame that failed before reaching the worker (e.g. unreadable message)."""
        with self._cond:
            self.stats.received += 1
            self.stats.bad_frames += 1
            self.stats.last_error = str(error)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                frame, self._pending = self._pending, None
            try:
                outcome = self.pipeline.process(frame)
            except (SelaVPRError, ValueError) as exc:  # one bad frame never stops the node
                with self._cond:
                    self.stats.bad_frames += 1
                    self.stats.last_error = str(exc)
                log.warning("bad frame at %.3f s: %s", frame.stamp_ns * 1e-9, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - keep the node alive, report loudly
                with self._cond:
                    self.stats.bad_frames += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("frame at %.3f s failed", frame.stamp_ns * 1e-9)
                continue
            latency = (time.monotonic() - frame.received) * 1000
            with self._cond:
                self.stats.record(outcome, latency)
            self.on_result(outcome)

    def idle(self) -> bool:
        with self._cond:
            return self._pending is None

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)


def diagnostic_status(stats: NodeStats, map_size: int, mode: str, name: str = "vpr_node") -> dict:
    """Fields of one ``diagnostic_msgs/DiagnosticStatus``: level, message and key/values."""
    s = stats.summary()
    level, message = 0, f"{mode}: {s['processed']} frames, {map_size} keyframes in the map"
    if stats.bad_frames:
        level, message = 1, f"{stats.bad_frames} bad frame(s); last: {stats.last_error}"
    if s["received"] > 20 and s["processed"] == 0:
        level, message = 2, "frames arrive but none is processed"
    values = [{"key": k, "value": f"{v:.2f}" if isinstance(v, float) else str(v)} for k, v in s.items()]
    values.append({"key": "map_size", "value": str(map_size)})
    values.append({"key": "mode", "value": mode})
    return {"level": level, "name": name, "message": message, "hardware_id": "",
            "values": values}
