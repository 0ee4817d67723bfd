"""The node without ROS: the same pipeline over CycloneDDS, speaking the ROS 2 wire conventions.

Topics are ``rt/<name>``, types ``pkg::msg::dds_::Type_`` built from the
``.msg`` definitions, and the QoS are those of a ROS 2 graph: the camera
subscription is best-effort keep-last (what ``rclcpp::SensorDataQoS`` offers
and accepts), candidates are published reliable keep-last 10 (the ROS 2
default), diagnostics the same, ``/tf_static`` is read transient-local. A
ROS 2 node on ``rmw_cyclonedds_cpp`` in the same domain sees these topics as
its own. Discovery follows ``ROS_AUTOMATIC_DISCOVERY_RANGE`` /
``ROS_LOCALHOST_ONLY`` as rmw_cyclonedds does.

Topic names are those of the rclpy node, relative so that namespaces and
remapping work: ``image``, ``camera_info`` (and ``depth``) in, ``loop_closures`` and
``loop_closure_edges`` (pose-graph edges of the accepted closures) out, ``odom`` for
``pose_source: odom``, ``/tf`` and ``/tf_static`` for ``pose_source: tf`` or ``edges.base_frame``.

Services (save map, set mode, reset, query) need the ROS 2 request/reply
conventions and are offered by the rclpy node; here the map is flushed on
SIGINT/SIGTERM and the mode is a parameter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from selavpr_ros.errors import ConfigError
from selavpr_ros.node.live_poses import LiveOdometry, LiveTransforms, mount_lookup, pose_lookup
from selavpr_ros.node.pipeline import Frame, FrameOutcome, VPRPipeline, candidate_array_fields, edges_message_fields
from selavpr_ros.node.worker import LatestFrameWorker, diagnostic_status
from selavpr_ros.transport.discovery import open_domain
from selavpr_ros.transport.msgtypes import dds_topic, dds_type, message, to_dds
from selavpr_ros.types import header_fields, stamp_ns

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CANDIDATES = "selavpr_ros/msg/LoopClosureCandidateArray"
EDGES = "selavpr_ros/msg/PoseGraph"
DIAGNOSTICS = "diagnostic_msgs/msg/DiagnosticArray"
TF = "tf2_msgs/msg/TFMessage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
ODOMETRY = "nav_msgs/msg/Odometry"


def sensor_qos():
    from cyclonedds.core import Policy, Qos

    return Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(5), Policy.Durability.Volatile)


def reliable_qos(depth: int = 10):
    from cyclonedds.core import Policy, Qos
    from cyclonedds.util import duration

    return Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(depth),
               Policy.Durability.Volatile)


def static_qos(depth: int = 100):
    """``/tf_static``: reliable, transient local (late joiners get every static transform)."""
    from cyclonedds.core import Policy, Qos
    from cyclonedds.util import duration

    return Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(depth),
               Policy.Durability.TransientLocal)


def resolve(topic: str, namespace: str = "", remaps: dict[str, str] | None = None) -> str:
    """ROS name resolution: remapping (``image:=/camera/image_raw``), then the namespace for
    relative names (``~`` is the node's own namespace)."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""

    def absolute(name: str) -> str:
        return name if name.startswith("/") else f"{ns}/{name.lstrip('~/')}"

    for source, target in (remaps or {}).items():
        if source in (topic, absolute(topic)):
            return absolute(target)
    return absolute(topic)


def parse_remaps(items: list[str] | None) -> dict[str, str]:
    """``FROM:=TO`` items (as ``ros2 run ... --ros-args -r`` takes them) -> mapping."""
    out = {}
    for item in items or []:
        source, sep, target = item.partition(":=")
        if not sep or not source or not target:
            raise ConfigError(f"-r expects FROM:=TO (e.g. image:=/camera/image_raw), got {item!r}")
        out[source] = target
    return out


class DDSNode:
    """Subscribes to the camera (and TF or odometry for poses), runs the pipeline on the newest
    frame, publishes candidates and diagnostics."""

    def __init__(self, pipeline: VPRPipeline, namespace: str = "", domain_id: int = 0,
                 remaps: dict[str, str] | None = None) -> None:
        from cyclonedds.core import Listener
        from cyclonedds.domain import DomainParticipant
        from cyclonedds.pub import DataWriter
        from cyclonedds.sub import DataReader
        from cyclonedds.topic import Topic

        self.pipeline = pipeline
        p = pipeline.params
        self.domain = open_domain(domain_id)  # kept alive: it holds the discovery configuration
        self.participant = DomainParticipant(domain_id)
        self.image_type = COMPRESSED if p["compressed"] else IMAGE
        self.image_topic = resolve("image", namespace, remaps)
        self.output_topic = resolve("loop_closures", namespace, remaps)
        self.edges_topic = resolve("loop_closure_edges", namespace, remaps)
        self.published = 0
        self._closed = threading.Event()

        def listener(callback: Callable[[Any], None]) -> Any:
            class _Listener(Listener):
                def on_data_available(self, reader) -> None:  # noqa: D102 - DDS callback
                    callback(reader)

            return _Listener()

        def reader(name: str, msgtype: str, qos: Any, callback: Callable[[Any], None]) -> Any:
            topic: Any = Topic(self.participant, dds_topic(resolve(name, namespace, remaps)), dds_type(msgtype))
            return DataReader(self.participant, topic, qos, listener=listener(callback))

        out_topic: Any = Topic(self.participant, dds_topic(self.output_topic), dds_type(CANDIDATES))
        self.writer = DataWriter(self.participant, out_topic, reliable_qos())
        edges_topic: Any = Topic(self.participant, dds_topic(self.edges_topic), dds_type(EDGES))
        self.edges_writer = DataWriter(self.participant, edges_topic, reliable_qos())
        diag_topic: Any = Topic(self.participant, dds_topic("/diagnostics"), dds_type(DIAGNOSTICS))
        self.diag_writer = DataWriter(self.participant, diag_topic, reliable_qos())
        self.worker = LatestFrameWorker(pipeline, self._publish)

        self.transforms = LiveTransforms() if p["pose_source"] == "tf" or p["edges.base_frame"] else None
        self.odometry = LiveOdometry() if p["pose_source"] == "odom" else None
        self._side_readers = []
        if self.transforms is not None:
            tfs = self.transforms
            self._side_readers += [
                reader("/tf", TF, reliable_qos(100), lambda r: self._take(r, lambda m: tfs.add(m))),
                reader("/tf_static", TF, static_qos(), lambda r: self._take(r, lambda m: tfs.add(m, static=True))),
            ]
        if self.odometry is not None:
            odometry = self.odometry
            self._side_readers.append(reader("odom", ODOMETRY, reliable_qos(100),
                                             lambda r: self._take(r, odometry.add)))
        pipeline.pose_lookup = pose_lookup(p, self.transforms, self.odometry)
        if p["edges.base_frame"]:
            assert self.transforms is not None
            pipeline.mount_lookup = mount_lookup(self.transforms, p["edges.base_frame"], float(p["pose.timeout_s"]))
        if p["depth"]:
            depths = pipeline.depths
            self._side_readers.append(reader("depth", IMAGE, sensor_qos(),
                                             lambda r: self._take(r, lambda m: depths.add(stamp_ns(m.header), m))))
        cameras = pipeline.cameras
        self._side_readers.append(reader("camera_info", CAMERA_INFO, sensor_qos(),
                                         lambda r: self._take(r, lambda m: cameras.add(stamp_ns(m.header), m))))
        self.reader = reader("image", self.image_type, sensor_qos(), self._on_data)
        self._diag_thread = threading.Thread(target=self._diagnostics_loop, name="vpr-diagnostics", daemon=True)
        self._diag_thread.start()
        log.info("listening on %s (%s), publishing %s", self.image_topic, self.image_type, self.output_topic)

    def _take(self, reader, handle: Callable[[Any], None]) -> None:
        """Hand every sample to ``handle``; a malformed one is logged and skipped."""
        try:
            samples = reader.take(N=256)
        except Exception:  # noqa: BLE001 - a malformed sample must not stop the node
            log.warning("unreadable sample", exc_info=True)
            return
        for sample in samples:
            try:
                handle(sample)
            except Exception:  # noqa: BLE001
                log.warning("unusable sample", exc_info=True)

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
        if outcome.edges:
            self.edges_writer.write(to_dds(message(EDGES, **edges_message_fields(outcome)), EDGES))
        self.published += 1

    def diagnostics_fields(self) -> dict[str, Any]:
        status = diagnostic_status(self.worker.snapshot(), self.pipeline.db.count, self.pipeline.params["mode"])
        return {"header": header_fields(time.time_ns(), ""), "status": [status]}

    def _diagnostics_loop(self) -> None:
        while not self._closed.wait(float(self.pipeline.params["diagnostics_period_s"])):
            try:
                self.diag_writer.write(to_dds(message(DIAGNOSTICS, **self.diagnostics_fields()), DIAGNOSTICS))
            except Exception:  # noqa: BLE001 - diagnostics never take the node down
                log.exception("diagnostics")

    def close(self) -> None:
        self._closed.set()
        self.reader.set_listener(None)
        for r in self._side_readers:
            r.set_listener(None)
        self.worker.stop()
        self.pipeline.save_map()
