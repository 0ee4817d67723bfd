"""Wire compatibility without ROS: our DDS samples serialise to exactly rosbags' ROS 2 CDR bytes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cyclonedds")

from selavpr_ros.transport.image_decoding import encode_compressed, encode_image  # noqa: E402
from selavpr_ros.transport.msgtypes import dds_topic, dds_type, dds_typename, message, to_dds, typestore  # noqa: E402

RGB = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
HEADER = {"stamp": {"sec": 1700000000, "nanosec": 123}, "frame_id": "camera_optical"}


def _samples():
    cand = {"header": HEADER, "match_stamp": {"sec": 5, "nanosec": 7}, "query_keyframe_id": 12,
            "match_keyframe_id": 3, "map_id": "selavpr++:abc@/maps/lab", "match_session": "run1", "score": 0.75,
            "hamming_distance": 101, "local_match_count": -1, "rank": 1, "status": 2, "reason": "1 of 3",
            "has_match_pose": True,
            "match_pose": {"pose": {"position": {"x": 1.0, "y": -2.0}, "orientation": {"w": 1.0}},
                           "covariance": np.arange(36, dtype=np.float64)}}
    return [
        ("sensor_msgs/msg/Image", {"header": HEADER, **encode_image(RGB, "bgr8")}),
        ("sensor_msgs/msg/CompressedImage", {"header": HEADER, **encode_compressed(RGB)}),
        ("geometry_msgs/msg/PoseWithCovarianceStamped", {"header": HEADER, "pose": cand["match_pose"]}),
        ("selavpr_ros/msg/LoopClosureCandidateArray", {"header": HEADER, "candidates": [cand, {**cand, "rank": 2}]}),
        ("diagnostic_msgs/msg/DiagnosticArray", {"header": HEADER, "status": [
            {"level": 1, "name": "vpr_node", "message": "ok", "values": [{"key": "dropped", "value": "4"}]}]}),
    ]


@pytest.mark.parametrize("msgtype,fields", _samples(), ids=lambda v: v if isinstance(v, str) else "")
def test_dds_bytes_equal_rosbags_cdr(msgtype, fields):
    msg = message(msgtype, **fields)
    reference = bytes(typestore().serialize_cdr(msg, msgtype))
    sample = to_dds(msg, msgtype)
    wire = sample.serialize()
    assert wire == reference
    back = dds_type(msgtype).deserialize(wire)
    assert back == sample
    again = typestore().deserialize_cdr(wire, msgtype)
    assert bytes(typestore().serialize_cdr(again, msgtype)) == reference


def test_ros2_wire_names():
    assert dds_typename("sensor_msgs/msg/Image") == "sensor_msgs::msg::dds_::Image_"
    assert dds_type("selavpr_ros/msg/LoopClosureCandidateArray").__idl_typename__ == \
        "selavpr_ros::msg::dds_::LoopClosureCandidateArray_"
    assert dds_topic("/robot1/camera/image") == "rt/robot1/camera/image"
    image = dds_type("sensor_msgs/msg/Image").deserialize(to_dds(message("sensor_msgs/msg/Image", **encode_image(RGB)),
                                                                 "sensor_msgs/msg/Image").serialize())
    assert isinstance(image.data, bytes) and len(image.data) == RGB.size  # one bytes object, not 180 ints
