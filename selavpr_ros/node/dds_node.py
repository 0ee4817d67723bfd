"""The node without ROS: the same pipeline over CycloneDDS, speaking the ROS 2 wire conventions.

Topics are ``rt/<name>``, types ``pkg::msg::dds_::Type_`` built from the
``.msg`` definitions, and the QoS are those of a ROS 2 graph: the camera
subscription is best-effort keep-last (what ``rclcpp::SensorDataQoS`` offers
and accepts), candidates are published reliable keep-last 10 (the ROS 2
default), diagnostics the same. A ROS 2 node on ``rmw_cyclonedds_cpp`` in
the same domain sees these topics as its own.

Services (save map, set mode, reset) need the ROS 2 request/reply
conventions and are offered by the rclpy node; here the map is flushed on
SIGINT/SIGTERM and the mode is a parameter.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from selavpr_ros.node.pipeline import Frame, FrameOutcome, VPRPipeline, candidate_array_fields
from selavpr_ros.node.worker import LatestFrameWorker, diagnostic_status
from selavpr_ros.transport.msgtypes import dds_topic, dds_type, message, to_dds
from selavpr_ros.types import header_fields, stamp_ns

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CANDIDATES = "selavpr_ros/msg/LoopClosureCandidateArray"
DIAGNOSTICS = "diagnostic_msgs/msg/DiagnosticArray"


def sensor_qos():
    from cyclonedds.core import Policy, Qos

    return Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(5), Policy.Durability.Volatile)


def reliable_qos(depth: int = 10):
    from cyclonedds.core import Policy, Qos
    from cyclonedds.util import duration

    return Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(depth),
               Policy.Durability.Volatile)


def resolve(topic: str, namespace: str = "") -> str:
    """ROS name resolution for absolute and relative names (``~`` is the node's own namespace)."""
    if topic.startswith("/"):
        return topic
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{ns}/{topic.lstrip('~/')}"


class DDSNode:
    """Subscribes to the camera, runs the pipeline on the newest frame, publishes candidates."""

    def __init__(self, pipeline: VPRPipeline, namespace: str = "", domain_id: int = 0) -> None:
        from cyclonedds.core import Listener
        from cyclonedds.domain import DomainParticipant
        from cyclonedds.pub import DataWriter
        from cyclonedds.sub import DataReader
        from cyclonedds.topic import Topic

        self.pipeline = pipeline
        p = pipeline.params
        self.participant = DomainParticipant(domain_id)
        self.image_type = COMPRESSED if p["compressed"] else IMAGE
        self.image_topic = resolve(p["image_topic"], namespace)
        self.output_topic = resolve(p["output_topic"], namespace)
        self.published = 0
        self._closed = threading.Event()

        out_topic = Topic(self.participant, dds_topic(self.output_topic), dds_type(CANDIDATES))
        self.writer = DataWriter(self.participant, out_topic, reliable_qos())
        diag_topic = Topic(self.participant, dds_topic("/diagnostics"), dds_type(DIAGNOSTICS))
        self.diag_writer = DataWriter(self.participant, diag_topic, reliable_qos())
        self.worker = LatestFrameWorker(pipeline, self._publish)

        node = self

        class _OnImage(Listener):
            def on_data_available(self, reader) -> None:  # noqa: D102 - DDS callback
                node._on_data(reader)

        in_topic = Topic(self.participant, dds_topic(self.image_topic), dds_type(self.image_type))
        self.reader = DataReader(self.participant, in_topic, sensor_qos(), listener=_OnImage())
        self._diag_thread = threading.Thread(target=self._diagnostics_loop, name="vpr-diagnostics", daemon=True)
        self._diag_thread.start()
        log.info("listening on %s (%s), publishing %s", self.image_topic, self.image_type, self.output_topic)

    def _on_data(self, reader) -> None:
        try:
            samples = reader.take(N=64)
        except Exception as exc:  # noqa: BLE001 - a malformed sample must not stop the node
            self.worker.count_bad(exc)
            return
        for sample in samples:
            try:
                frame = Frame(sample, stamp_ns(sample.header), str(sample.header.frame_id), topic=self.image_topic)
            except Exception as exc:  # noqa: BLE001
                self.worker.count_bad(exc)
                continue
            self.worker.submit(frame)

    def _publish(self, outcome: FrameOutcome) -> None:
        if not outcome.result.is_keyframe:
            return
        fields = candidate_array_fields(outcome, self.pipeline.map_id, self.pipeline.params["frame_id"])
        self.writer.write(to_dds(message(CANDIDATES, **fields), CANDIDATES))
        self.published += 1

    def diagnostics_fields(self) -> dict[str, Any]:
        status = diagnostic_status(self.worker.stats, self.pipeline.db.count, self.pipeline.params["mode"])
        return {"header": header_fields(time.time_ns(), ""), "status": [status]}

    def _diagnostics_loop(self) -> None:
        period = float(self.pipeline.params["diagnostics_period_s"])
        while not self._closed.wait(period):
            try:
                self.diag_writer.write(to_dds(message(DIAGNOSTICS, **self.diagnostics_fields()), DIAGNOSTICS))
            except Exception:  # noqa: BLE001 - diagnostics never take the node down
                log.exception("diagnostics")

    def close(self) -> None:
        self._closed.set()
        self.reader.set_listener(None)
        self.worker.stop()
        self.pipeline.save_map()
