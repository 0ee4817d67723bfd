"""Simulated robot sessions written as real rosbag2 recordings.

Each session drives a route through a :class:`~selavpr_ros.sim.world.World`
and records what a robot's drivers would: ``/camera/image_raw``
(sensor_msgs/Image), ``/camera/camera_info``, ``/camera/depth`` (32FC1,
registered), ``/odom`` (nav_msgs/Odometry that drifts, with its covariance),
``/tf`` (odom -> base_link) and ``/tf_static`` (base_link -> camera_optical),
plus the ground truth on ``/ground_truth`` (nav_msgs/Odometry in ``world``)
and in a TUM trajectory file beside the bag (camera optical frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from selavpr_ros.geometry.estimation import rotation_to_quaternion
from selavpr_ros.sim.route import OdometryNoise, drifting_odometry
from selavpr_ros.sim.world import World, camera_pose
from selavpr_ros.types import CameraModel, header_fields

CAMERA_FRAME, BASE_FRAME, ODOM_FRAME, WORLD_FRAME = "camera_optical", "base_link", "odom", "world"


@dataclass
class Session:
    """What a simulated session wrote."""

    bag: Path
    tum: Path
    stamps_ns: np.ndarray
    truth: np.ndarray  # (N, 3) x, y, yaw of base_link in the world
    odometry: np.ndarray  # (N, 3) the drifting odometry of base_link in odom (= world at the start)


def _transform(parent: str, child: str, stamp: int, xyz, quaternion) -> dict[str, Any]:
    return {"header": header_fields(stamp, parent), "child_frame_id": child,
            "transform": {"translation": dict(zip("xyz", map(float, xyz))),
                          "rotation": dict(zip("xyzw", map(float, quaternion)))}}


def _yaw_quaternion(yaw: float) -> tuple[float, float, float, float]:
    return (0.0, 0.0, float(np.sin(yaw / 2)), float(np.cos(yaw / 2)))


def write_session(out: str | Path, world: World, route: np.ndarray, camera: CameraModel, t0_ns: int,
                  period_s: float = 0.2, camera_height: float = 1.2, noise: OdometryNoise | None = None,
                  seed: int = 0, storage: str = "sqlite3", progress: bool = True) -> Session:
    """Render ``route`` (N x (x, y, yaw) of base_link) and write the recording to the bag folder ``out``."""
    from selavpr_ros.bags.writer import camera_info_fields, write_topics
    from selavpr_ros.transport.image_decoding import encode_image
    from selavpr_ros.transport.msgtypes import message

    out = Path(out)
    noise = noise or OdometryNoise()
    odometry, covariances = drifting_odometry(route, noise, seed)
    stamps = t0_ns + (np.arange(len(route)) * period_s * 1e9).astype(np.int64)
    info = camera_info_fields(camera, CAMERA_FRAME)
    static = message("tf2_msgs/msg/TFMessage", transforms=[
        _transform(BASE_FRAME, CAMERA_FRAME, int(stamps[0]), (0.0, 0.0, camera_height),
                   rotation_to_quaternion(camera_pose(0, 0, 0, camera_height)[:3, :3]))])

    depth_maps: list[np.ndarray] = []  # float16 until written: the bag writer takes one topic after another

    def images():  # rendered while the bag is written
        for i in tqdm(range(len(route)), desc=out.name, unit="frame", disable=not progress):
            t = int(stamps[i])
            rgb, depth = world.render(camera, camera_pose(*route[i], camera_height))
            depth_maps.append(np.nan_to_num(depth, nan=0.0).astype(np.float16))
            yield t, message("sensor_msgs/msg/Image", header=header_fields(t, CAMERA_FRAME), **encode_image(rgb))

    def depths():
        for i, depth in enumerate(depth_maps):
            t = int(stamps[i])
            data = np.frombuffer(depth.astype("<f4").tobytes(), np.uint8)
            yield t, message("sensor_msgs/msg/Image", header=header_fields(t, CAMERA_FRAME), height=camera.height,
                             width=camera.width, encoding="32FC1", step=camera.width * 4, data=data)
            depth_maps[i] = depth[:0]  # written: let it go

    infos, odoms, tfs, truths = [], [], [], []
    cov_sum = np.zeros((3, 3))
    tum_lines = []
    for i in range(len(route)):
        t = int(stamps[i])
        infos.append((t, message("sensor_msgs/msg/CameraInfo", header=header_fields(t, CAMERA_FRAME), **info)))
        if i:
            cov_sum += covariances[i - 1]
        x, y, yaw = odometry[i]
        cov6 = np.zeros((6, 6))
        cov6[0, 0], cov6[1, 1], cov6[5, 5] = cov_sum[0, 0], cov_sum[1, 1], cov_sum[2, 2]
        cov6[2, 2] = cov6[3, 3] = cov6[4, 4] = 1e-6  # planar robot: z, roll, pitch known
        odoms.append((t, message("nav_msgs/msg/Odometry", header=header_fields(t, ODOM_FRAME),
                                 child_frame_id=BASE_FRAME,
                                 pose={"pose": {"position": {"x": float(x), "y": float(y), "z": 0.0},
                                                "orientation": dict(zip("xyzw", _yaw_quaternion(yaw)))},
                                       "covariance": cov6.ravel()})))
        tfs.append((t, message("tf2_msgs/msg/TFMessage", transforms=[
            _transform(ODOM_FRAME, BASE_FRAME, t, (x, y, 0.0), _yaw_quaternion(yaw))])))
        gx, gy, gyaw = route[i]
        truths.append((t, message("nav_msgs/msg/Odometry", header=header_fields(t, WORLD_FRAME),
                                  child_frame_id=BASE_FRAME,
                                  pose={"pose": {"position": {"x": float(gx), "y": float(gy), "z": 0.0},
                                                 "orientation": dict(zip("xyzw", _yaw_quaternion(gyaw)))}})))
        cam = camera_pose(gx, gy, gyaw, camera_height)
        q = rotation_to_quaternion(cam[:3, :3])
        tum_lines.append(f"{t * 1e-9:.9f} {cam[0, 3]:.6f} {cam[1, 3]:.6f} {cam[2, 3]:.6f} "
                         f"{q[0]:.9f} {q[1]:.9f} {q[2]:.9f} {q[3]:.9f}")
    bag = write_topics(out, [
        ("/camera/image_raw", "sensor_msgs/msg/Image", images()),
        ("/camera/camera_info", "sensor_msgs/msg/CameraInfo", infos),
        ("/camera/depth", "sensor_msgs/msg/Image", depths()),
        ("/odom", "nav_msgs/msg/Odometry", odoms),
        ("/tf", "tf2_msgs/msg/TFMessage", tfs),
        ("/tf_static", "tf2_msgs/msg/TFMessage", [(int(stamps[0]), static)]),
        ("/ground_truth", "nav_msgs/msg/Odometry", truths),
    ], storage=storage)
    tum = out.with_name(out.name + ".ground_truth.tum")
    tum.write_text("# timestamp tx ty tz qx qy qz qw (camera optical frame in world)\n" + "\n".join(tum_lines) + "\n")
    return Session(bag, tum, stamps, route, odometry)
