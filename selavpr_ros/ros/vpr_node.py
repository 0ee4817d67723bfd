"""``vpr_node``: thin rclpy wiring around :class:`~selavpr_ros.node.pipeline.VPRPipeline`.

Everything this file calls is ROS-free and tested without ROS; this file only
maps parameters, topics and services onto it. Run with
``ros2 launch selavpr_ros vpr.launch.py`` or ``ros2 run selavpr_ros vpr_node``.
"""

from __future__ import annotations

import sys
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger

from selavpr_ros.errors import SelaVPRError
from selavpr_ros.msg import LoopClosureCandidate, LoopClosureCandidateArray
from selavpr_ros.node.params import PARAMS, SPECS, validate
from selavpr_ros.node.pipeline import Frame, FrameOutcome, VPRPipeline, candidate_array_fields
from selavpr_ros.node.worker import LatestFrameWorker, diagnostic_status
from selavpr_ros.srv import SaveMap, SetMode
from selavpr_ros.types import stamp_ns


def _descriptor(spec) -> ParameterDescriptor:
    d = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.min is not None and spec.type is float:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.min),
                                                     to_value=float(min(spec.max, sys.float_info.max)))]
    elif spec.min is not None and spec.type is int:
        d.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
    return d


def _fill(msg: Any, fields: dict[str, Any]) -> Any:
    """Copy nested field dicts onto a generated message object."""
    for key, value in fields.items():
        if isinstance(value, dict):
            _fill(getattr(msg, key), value)
        else:
            setattr(msg, key, value)
    return msg


class VPRNode(Node):
    def __init__(self) -> None:
        super().__init__("vpr_node")
        for spec in PARAMS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        params = validate({s.name: self.get_parameter(s.name).value for s in PARAMS})
        self.pipeline = VPRPipeline(params)
        self.worker = LatestFrameWorker(self.pipeline, self._publish)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        msg_type = CompressedImage if params["compressed"] else Image
        self.image_topic = params["image_topic"]
        self.create_subscription(msg_type, params["image_topic"], self._on_image, qos_profile_sensor_data)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.create_publisher(LoopClosureCandidateArray, params["output_topic"], reliable)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(params["diagnostics_period_s"], self._diagnostics)
        self.create_service(SaveMap, "~/save_map", self._save_map)
        self.create_service(SetMode, "~/set_mode", self._set_mode)
        self.create_service(Trigger, "~/reset", self._reset)
        self.get_logger().info(f"{params['mode']} on {params['image_topic']} with map {self.pipeline.map_path} "
                               f"({self.pipeline.db.count} keyframes), model {self.pipeline.extractor.model_id}")

    def _on_image(self, msg) -> None:
        self.worker.submit(Frame(msg, stamp_ns(msg.header), msg.header.frame_id, topic=self.image_topic))

    def _publish(self, outcome: FrameOutcome) -> None:
        if not outcome.result.is_keyframe:
            return
        fields = candidate_array_fields(outcome, self.pipeline.map_id, self.pipeline.params["frame_id"])
        out = LoopClosureCandidateArray()
        _fill(out.header, fields["header"])
        out.candidates = [_fill(LoopClosureCandidate(), c) for c in fields["candidates"]]
        self.publisher.publish(out)

    def _on_set_parameters(self, changes) -> SetParametersResult:
        new = {p.name: p.value for p in changes if p.name in SPECS}
        read_only = [n for n in new if SPECS[n].read_only]
        if read_only:
            return SetParametersResult(successful=False, reason=f"{', '.join(read_only)} take effect at start-up only")
        try:
            validate({**self.pipeline.params, **new})
            self.pipeline.update_params(new)
        except (SelaVPRError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _diagnostics(self) -> None:
        fields = diagnostic_status(self.worker.stats, self.pipeline.db.count, self.pipeline.params["mode"])
        status = DiagnosticStatus(level=bytes([fields["level"]]), name=f"{self.get_name()}: place recognition",
                                  message=fields["message"], hardware_id=fields["hardware_id"],
                                  values=[KeyValue(key=v["key"], value=v["value"]) for v in fields["values"]])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)

    def _service(self, response, action) -> Any:
        try:
            response.message = action()
            response.success = True
        except (SelaVPRError, ValueError, OSError) as exc:
            response.success, response.message = False, str(exc)
        return response

    def _save_map(self, request, response):
        return self._service(response, lambda: self.pipeline.save_map(request.path))

    def _set_mode(self, request, response):
        return self._service(response, lambda: self.pipeline.set_mode(request.mode))

    def _reset(self, request, response):
        return self._service(response, self.pipeline.reset)

    def shutdown(self) -> None:
        self.worker.stop()
        self.pipeline.save_map()
        self.pipeline.close()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    try:
        node = VPRNode()
    except SelaVPRError as exc:
        print(f"vpr_node: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
