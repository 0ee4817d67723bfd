"""Live poses without ROS: the TF buffer and the odometry track the node uses for keyframe poses."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from selavpr_ros.node.live_poses import LiveOdometry, LiveTransforms
from selavpr_ros.transport.msgtypes import message

S = 10**9


def tf(parent: str, child: str, t_ns: int, xyz=(0.0, 0.0, 0.0), yaw: float = 0.0):
    return message("geometry_msgs/msg/TransformStamped",
                   header={"stamp": {"sec": t_ns // S, "nanosec": t_ns % S}, "frame_id": parent},
                   child_frame_id=child,
                   transform={"translation": dict(zip("xyz", xyz)),
                              "rotation": {"x": 0.0, "y": 0.0, "z": math.sin(yaw / 2), "w": math.cos(yaw / 2)}})


def tf_message(*transforms):
    return message("tf2_msgs/msg/TFMessage", transforms=list(transforms))


def odometry(t_ns: int, x: float, y: float, yaw: float = 0.0, frame: str = "odom"):
    cov = np.zeros(36)
    cov[0] = cov[7] = 0.01
    return message("nav_msgs/msg/Odometry", header={"stamp": {"sec": t_ns // S, "nanosec": t_ns % S},
                                                     "frame_id": frame}, child_frame_id="base_link",
                   pose={"pose": {"position": {"x": x, "y": y, "z": 0.0},
                                  "orientation": {"z": math.sin(yaw / 2), "w": math.cos(yaw / 2)}},
                         "covariance": cov})


def robot_tree() -> LiveTransforms:
    """map -> odom (static offset), odom -> base_link driving along x at 1 m/s, base_link -> camera static."""
    tfs = LiveTransforms()
    tfs.add(tf_message(tf("map", "odom", 0, (10.0, 0.0, 0.0)),
                       tf("base_link", "camera", 0, (0.5, 0.0, 1.0))), static=True)
    for k in range(101):  # 10 Hz, as robots publish odometry transforms
        tfs.add(tf_message(tf("odom", "base_link", k * S // 10, (k / 10, 0.0, 0.0))))
    return tfs


def test_tf_chain_is_composed_and_interpolated_at_the_image_stamp():
    tfs = robot_tree()
    pose = tfs.lookup("map", "camera", int(3.5 * S))
    assert pose is not None and pose.frame_id == "map"
    np.testing.assert_allclose(pose.position, (10.0 + 3.5 + 0.5, 0.0, 1.0), atol=1e-9)
    np.testing.assert_allclose(pose.orientation, (0, 0, 0, 1), atol=1e-9)
    in_odom = tfs.lookup("odom", "camera", 2 * S)
    np.testing.assert_allclose(in_odom.position, (2.5, 0.0, 1.0), atol=1e-9)
    assert tfs.lookup("odom", "base_link", 0).position == (0.0, 0.0, 0.0)


def test_tf_rotation_composes():
    tfs = LiveTransforms()
    tfs.add(tf_message(tf("base_link", "camera", 0, (1.0, 0.0, 0.0))), static=True)
    tfs.add(tf_message(tf("odom", "base_link", 0, (0.0, 0.0, 0.0), yaw=math.pi / 2)))
    tfs.add(tf_message(tf("odom", "base_link", S // 10, (0.0, 0.0, 0.0), yaw=math.pi / 2)))
    pose = tfs.lookup("odom", "camera", S // 20)  # the camera 1 m ahead of a robot facing +y
    np.testing.assert_allclose(pose.position, (0.0, 1.0, 0.0), atol=1e-9)
    assert pose.yaw() == pytest.approx(math.pi / 2)


def test_tf_unknown_or_out_of_range_is_no_pose():
    tfs = robot_tree()
    assert tfs.lookup("map", "gripper", S) is None  # unknown frame
    assert tfs.lookup("map", "camera", -S) is None  # older than the buffer
    tfs.add(tf_message(tf("world", "satellite", 0)), static=True)
    assert tfs.lookup("map", "satellite", S) is None  # separate trees
    assert tfs.lookup("map", "camera", 20 * S, timeout_s=0.05) is None  # newer than any sample, none came


def test_tf_lookup_waits_for_a_late_transform():
    tfs = robot_tree()

    def late():
        time.sleep(0.1)
        tfs.add(tf_message(tf("odom", "base_link", int(10.2 * S), (10.2, 0.0, 0.0))))

    threading.Thread(target=late).start()
    t0 = time.monotonic()
    pose = tfs.lookup("odom", "base_link", int(10.1 * S), timeout_s=2.0)
    assert pose is not None and pose.position[0] == pytest.approx(10.1)
    assert time.monotonic() - t0 < 1.5


def test_tf_conflicting_parent_is_ignored():
    tfs = robot_tree()
    tfs.add(tf_message(tf("map", "base_link", 5 * S, (99.0, 0.0, 0.0))))
    assert tfs.conflicts == 1
    assert tfs.lookup("odom", "base_link", 5 * S).position[0] == pytest.approx(5.0)


def test_odometry_track_interpolates_and_keeps_the_frame():
    odo = LiveOdometry()
    for k in range(5):
        odo.add(odometry(k * S // 10, float(k), 2.0 * k))
    pose = odo.lookup(int(0.225 * S))
    assert pose.frame_id == "odom" and pose.covariance is not None and pose.covariance[0] == pytest.approx(0.01)
    np.testing.assert_allclose(pose.position, (2.25, 4.5, 0.0), atol=1e-9)
    assert odo.lookup(10 * S, timeout_s=0.02) is None  # newer than any sample
    assert LiveOdometry().lookup(0, timeout_s=0.0) is None
    assert odo.lookup(-S) is None
