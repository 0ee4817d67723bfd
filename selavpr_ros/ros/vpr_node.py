"""``vpr_node``: thin rclpy wiring around :class:`~selavpr_ros.node.pipeline.VPRPipeline`.

Everything this file calls is ROS-free and tested without ROS; this file only
maps parameters, topics and services onto it. Run with
``ros2 launch selavpr_ros vpr.launch.py`` or ``ros2 run selavpr_ros vpr_node``.

Topics are relative names, so namespaces and remapping work as usual:
``image`` (sensor_msgs/Image or CompressedImage) and ``camera_info`` in, ``loop_closures`` and
``loop_closure_edges`` (pose-graph edges) out, ``odom`` for ``pose_source: odom``; TF (poses, and
camera mounts for ``edges.base_frame``) comes from tf2_ros where installed, else from ``/tf`` and
``/tf_static`` through the package's own TF buffer. The ``~/query`` service takes a SLAM's own
keyframe (image + its id) and answers with candidates and edges.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import rclpy
import rclpy.duration
import rclpy.exceptions
import rclpy.time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger

from selavpr_ros.errors import SelaVPRError
from selavpr_ros.msg import LoopClosureCandidate, LoopClosureCandidateArray, PoseGraph, PoseGraphEdge
from selavpr_ros.node.live_poses import LiveOdometry, LiveTransforms, mount_lookup, pose_lookup
from selavpr_ros.node.params import PARAMS, SPECS, validate
from selavpr_ros.node.pipeline import (
    Frame,
    FrameOutcome,
    candidate_array_fields,
    edges_message_fields,
    node_pipeline,
)
from selavpr_ros.node.worker import LatestFrameWorker, clip, diagnostic_status
from selavpr_ros.srv import QueryPlace, SaveMap, SetMode
from selavpr_ros.types import Pose, stamp_ns

try:  # message class of /tf, and tf2_ros where the install has it
    from tf2_msgs.msg import TFMessage
except ImportError:  # pragma: no cover - every ROS 2 install ships tf2_msgs
    TFMessage = None
try:
    import tf2_ros
except ImportError:
    tf2_ros = None


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
        self._check_overrides()
        for spec in PARAMS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        params = validate({s.name: self.get_parameter(s.name).value for s in PARAMS})
        self.pipeline = node_pipeline(params)
        self.worker = LatestFrameWorker(self.pipeline, self._publish)
        self._syncing_mode = False
        self.add_on_set_parameters_callback(self._validate_parameters)
        if hasattr(self, "add_post_set_parameters_callback"):  # Iron and later: apply after acceptance
            self.add_post_set_parameters_callback(self._apply_parameters)
            self._apply_in_validation = False
        else:  # Humble: the on-set callback is the only hook; it validates first, then applies
            self._apply_in_validation = True

        msg_type = CompressedImage if params["compressed"] else Image
        self.create_subscription(msg_type, "image", self._on_image, qos_profile_sensor_data)
        if params["depth"]:
            depths = self.pipeline.depths
            self.create_subscription(Image, "depth", lambda m: depths.add(stamp_ns(m.header), m),
                                     qos_profile_sensor_data)
        cameras = self.pipeline.cameras
        self.create_subscription(CameraInfo, "camera_info", lambda m: cameras.add(stamp_ns(m.header), m),
                                 qos_profile_sensor_data)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.create_publisher(LoopClosureCandidateArray, "loop_closures", reliable)
        self.edges_publisher = self.create_publisher(PoseGraph, "loop_closure_edges", reliable)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(params["diagnostics_period_s"], self._diagnostics)
        services = MutuallyExclusiveCallbackGroup()  # a map copy never stalls images or diagnostics
        self.create_service(SaveMap, "~/save_map", self._save_map, callback_group=services)
        self.create_service(SetMode, "~/set_mode", self._set_mode, callback_group=services)
        self.create_service(Trigger, "~/reset", self._reset, callback_group=services)
        self.create_service(QueryPlace, "~/query", self._query, callback_group=MutuallyExclusiveCallbackGroup())
        self._setup_poses(params)
        self.get_logger().info(
            f"{params['mode']} on {self.resolve_topic_name('image')} with map {self.pipeline.map_path} "
            f"({self.pipeline.db.count} keyframes), model {self.pipeline.extractor.model_id}, "
            f"poses: {params['pose_source']}"
        )

    # -- start-up ---------------------------------------------------------------------
    def _check_overrides(self) -> None:
        """Refuse unknown names in the parameter file; accept an integer for a float parameter."""
        overrides = getattr(self, "_parameter_overrides", None)
        if not isinstance(overrides, dict):
            return
        unknown = sorted(set(overrides) - set(SPECS) - {"use_sim_time", "qos_overrides"})
        unknown = [n for n in unknown if not n.startswith("qos_overrides.")]
        if unknown:
            raise SelaVPRError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(SPECS)}")
        for name, param in list(overrides.items()):
            spec = SPECS.get(name)
            if spec is not None and spec.type is float and param.type_ == Parameter.Type.INTEGER:
                overrides[name] = Parameter(name, Parameter.Type.DOUBLE, float(param.value))

    def _setup_poses(self, params: dict[str, Any]) -> None:
        transforms = odometry = None
        self.tf_buffer = None
        wants_tf = params["pose_source"] == "tf" or bool(params["edges.base_frame"])
        if wants_tf and tf2_ros is not None:
            self.tf_buffer = tf2_ros.Buffer()
            self.tf_listener = tf2_ros.TransformListener(self.tf_buffer, self)
            if params["edges.base_frame"]:
                self.pipeline.mount_lookup = self._tf2_mount
        elif wants_tf:  # no tf2_ros: the package's buffer, fed by /tf and /tf_static
            transforms = LiveTransforms()
            latched = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self.create_subscription(TFMessage, "/tf", transforms.add, QoSProfile(depth=100))
            self.create_subscription(TFMessage, "/tf_static", lambda m: transforms.add(m, static=True), latched)
            if params["edges.base_frame"]:
                self.pipeline.mount_lookup = mount_lookup(transforms, params["edges.base_frame"],
                                                          params["pose.timeout_s"])
        if params["pose_source"] == "odom":
            odometry = LiveOdometry()
            self.create_subscription(Odometry, "odom", odometry.add, QoSProfile(depth=100))
        self.transforms, self.odometry = transforms, odometry
        if params["pose_source"] == "tf" and self.tf_buffer is not None:
            self.pipeline.pose_lookup = self._tf2_pose
        else:
            self.pipeline.pose_lookup = pose_lookup(params, transforms, odometry)

    def _tf2_pose(self, frame: Frame) -> Pose | None:
        p = self.pipeline.params
        assert self.tf_buffer is not None
        when = rclpy.time.Time(nanoseconds=frame.stamp_ns)
        try:
            t = self.tf_buffer.lookup_transform(p["pose.fixed_frame"], p["pose.camera_frame"] or frame.frame_id,
                                                when, rclpy.duration.Duration(seconds=p["pose.timeout_s"]))
        except Exception:  # noqa: BLE001 - tf2 raises several lookup/extrapolation errors: no pose
            return None
        tr, ro = t.transform.translation, t.transform.rotation
        return Pose((tr.x, tr.y, tr.z), (ro.x, ro.y, ro.z, ro.w), None, p["pose.fixed_frame"].lstrip("/"))

    def _tf2_mount(self, camera_frame: str, stamp: int):
        """A camera frame's pose in edges.base_frame (the newest transform: mounts are static)."""
        p = self.pipeline.params
        assert self.tf_buffer is not None
        try:
            t = self.tf_buffer.lookup_transform(p["edges.base_frame"].lstrip("/"), camera_frame, rclpy.time.Time(),
                                                rclpy.duration.Duration(seconds=p["pose.timeout_s"]))
        except Exception:  # noqa: BLE001 - tf2's lookup errors: no mount, counted by the pipeline
            return None
        tr, ro = t.transform.translation, t.transform.rotation
        return Pose((tr.x, tr.y, tr.z), (ro.x, ro.y, ro.z, ro.w)).matrix()

    # -- frames -----------------------------------------------------------------------
    def _on_image(self, msg) -> None:
        try:
            frame = Frame(msg, stamp_ns(msg.header), msg.header.frame_id, topic=self.resolve_topic_name("image"))
        except Exception as exc:  # noqa: BLE001 - a malformed message is one bad frame
            self.worker.count_bad(exc)
            return
        self.worker.submit(frame)

    def _publish(self, outcome: FrameOutcome) -> None:
        if not outcome.result.is_keyframe:
            return
        fields = candidate_array_fields(outcome, self.pipeline.map_id, self.pipeline.params["frame_id"])
        out = LoopClosureCandidateArray()
        _fill(out.header, fields["header"])
        out.candidates = [_fill(LoopClosureCandidate(), c) for c in fields["candidates"]]
        self.publisher.publish(out)
        if outcome.edges:
            graph = edges_message_fields(outcome)
            msg = PoseGraph()
            _fill(msg.header, graph["header"])
            msg.edges = [_fill(PoseGraphEdge(), e) for e in graph["edges"]]
            self.edges_publisher.publish(msg)

    def _diagnostics(self) -> None:
        fields = diagnostic_status(self.worker.snapshot(), self.pipeline.db.count, self.pipeline.params["mode"])
        status = DiagnosticStatus(level=bytes([fields["level"]]), name=f"{self.get_name()}: place recognition",
                                  message=fields["message"], hardware_id=fields["hardware_id"],
                                  values=[KeyValue(key=v["key"], value=v["value"]) for v in fields["values"]])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)

    # -- parameters ----------------------------------------------------------------
    def _validate_parameters(self, changes) -> SetParametersResult:
        new = {p.name: p.value for p in changes if p.name in SPECS}
        if self._syncing_mode:  # set_mode already applied it; this only updates the parameter
            return SetParametersResult(successful=True)
        read_only = [n for n in new if SPECS[n].read_only]
        if read_only:
            return SetParametersResult(successful=False, reason=f"{', '.join(read_only)} take effect at start-up only")
        try:
            validate({**self.pipeline.params, **new})
            if self._apply_in_validation:
                self._apply(new)
        except (SelaVPRError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, changes) -> None:
        if self._syncing_mode:
            return
        try:
            self._apply({p.name: p.value for p in changes if p.name in SPECS})
        except (SelaVPRError, ValueError) as exc:  # validated already; e.g. the map vanished meanwhile
            self.get_logger().error(f"could not apply parameters: {exc}")
            self._sync_parameters()

    def _apply(self, changes: dict[str, Any]) -> None:
        values = validate({**self.pipeline.params, **changes})
        self.pipeline.update_params({k: values[k] for k in changes})
        if "diagnostics_period_s" in changes:
            self._diag_timer.cancel()
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(values["diagnostics_period_s"], self._diagnostics)

    def _sync_parameters(self, names: tuple[str, ...] = ("mode",)) -> None:
        """Make ``ros2 param get`` show what the pipeline runs (after a service changed it)."""
        self._syncing_mode = True
        try:
            self.set_parameters([Parameter(n, value=self.pipeline.params[n]) for n in names])
        finally:
            self._syncing_mode = False

    # -- services -----------------------------------------------------------------------
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
        response = self._service(response, lambda: self.pipeline.set_mode(request.mode))
        if response.success:
            self._sync_parameters()
        return response

    def _reset(self, request, response):
        return self._service(response, self.pipeline.reset)

    def _query(self, request, response):
        """``~/query``: the caller's keyframe through the pipeline; answers with candidates and edges."""
        image = request.image if len(request.image.data) else request.compressed_image
        slam_id = None if request.keyframe_id < 0 else int(request.keyframe_id)
        start = time.monotonic()
        try:
            outcome = self.pipeline.query(image, slam_id, request.camera_info, self.resolve_service_name("~/query"))
        except (SelaVPRError, ValueError) as exc:  # a bad image is this request's problem, not the node's
            self.worker.count_bad(exc)
            response.success, response.message = False, clip(str(exc))
            return response
        self.worker.record(outcome, (time.monotonic() - start) * 1000)
        fields = candidate_array_fields(outcome, self.pipeline.map_id, self.pipeline.params["frame_id"])
        response.candidates = [_fill(LoopClosureCandidate(), c) for c in fields["candidates"]]
        response.edges = [_fill(PoseGraphEdge(), e) for e in edges_message_fields(outcome)["edges"]]
        response.success = True
        stored = f"stored as keyframe {outcome.result.keyframe_id}" if outcome.result.keyframe_id >= 0 else "not stored"
        response.message = (f"{len(outcome.result.accepted)} accepted of {len(outcome.result.candidates)} candidates, "
                            f"{len(outcome.edges)} edges; {stored}")
        self._publish(outcome)
        return response

    def shutdown(self) -> None:
        """Finish the frame in progress, flush the map, close it."""
        self.worker.stop()
        self.pipeline.save_map()
        self.pipeline.close()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    try:
        node = VPRNode()
    except (SelaVPRError, rclpy.exceptions.InvalidParameterTypeException,
            rclpy.exceptions.InvalidParameterValueException) as exc:
        print(f"vpr_node: error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=3)  # images, services, the ~/query service
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # A terminal's Ctrl-C reaches the node twice under ros2 launch (terminal and launch):
        # the second one must not interrupt the final flush.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        node.shutdown()
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
