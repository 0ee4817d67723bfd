"""Writing bags: camera runs for tests and the demo, and the replay's loop-closure candidates.

rosbag2 output (sqlite3 or mcap) is written with this package's type store,
so ``selavpr_ros/msg/*`` messages can be stored next to the standard ones and
the bag embeds their definitions. ROS 1 output rebuilds each message with
the ROS 1 (Noetic) classes, whose ``std_msgs/Header`` has a ``seq`` field.
A failed write removes what it had written, so a rerun is not refused for
an existing, half-written bag.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from selavpr_ros.errors import BagError
from selavpr_ros.geometry.camera import CameraModel
from selavpr_ros.types import Pose, header_fields

STORAGES = ("sqlite3", "mcap")
ROSBAG2_VERSION: Literal[8, 9] = 8  # the oldest rosbags writes (8 or 9): the widest choice of readers
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
ODOMETRY = "nav_msgs/msg/Odometry"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"

Stream = tuple[str, str, Iterable[tuple[int, Any]]]  # topic, message type, (bag time ns, message) pairs


def _project_typestore():
    from selavpr_ros.transport.msgtypes import typestore

    return typestore()


def _ros1_typestore():
    """ROS 1 standard types plus this package's messages (their Header resolves to the ROS 1 one)."""
    from rosbags.typesys import Stores, get_typestore

    store1 = get_typestore(Stores.ROS1_NOETIC)
    own = {k: v for k, v in _project_typestore().fielddefs.items() if k.startswith("selavpr_ros/")}
    store1.register(own)
    return store1


def _to_ros1(msg: Any, msgtype: str, store1) -> Any:
    """The same message as a ROS 1 class: fields copied by name, ``seq`` (absent in ROS 2) set to 0."""
    from rosbags.typesys.base import Nodetype

    _, fields = store1.fielddefs[msgtype]
    values = {}
    for name, (kind, rest) in fields:
        if not hasattr(msg, name):
            if name == "seq":
                values[name] = 0
                continue
            raise BagError(f"{msgtype}: field '{name}' of the ROS 1 definition is missing from the message")
        value = getattr(msg, name)
        if kind == Nodetype.NAME:
            value = _to_ros1(value, rest, store1)
        elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE) and rest[0][0] == Nodetype.NAME:
            value = [_to_ros1(v, rest[0][1], store1) for v in value]
        values[name] = value
    return store1.types[msgtype](**values)


def _check_new(path: Path) -> None:
    if path.exists():
        raise BagError(f"{path} exists; bags are never overwritten (remove it or choose another name)")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _in_turn(conns: Sequence[tuple[Any, str, Iterable[tuple[int, Any]]]]) -> Iterator[tuple[Any, str, int, Any]]:
    """(connection, msgtype, time, message) of every stream in turn, each consumed lazily (readers sort by time)."""
    for conn, msgtype, messages in conns:
        for stamp, msg in messages:
            yield conn, msgtype, int(stamp), msg


def write_topics(path: str | Path, streams: Sequence[Stream], storage: str = "sqlite3", ros1: bool = False) -> Path:
    """A bag with several topics: ``(topic, msgtype, [(bag time ns, message), ...])`` each.

    Messages are ROS 2 objects from :func:`selavpr_ros.transport.msgtypes.message`
    (or the same type store); ``msgtype`` is spelt ``pkg/msg/Type`` for ROS 1
    output too. Readers order messages by bag time, so streams need not be
    interleaved.
    """
    path = Path(path).expanduser()
    _check_new(path)
    store = _project_typestore()
    for _, msgtype, _ in streams:
        if msgtype not in store.fielddefs:
            raise BagError(f"unknown message type {msgtype!r} (not a ROS 2 Humble or selavpr_ros message)")
    from rosbags.rosbag1 import WriterError as Writer1Error
    from rosbags.rosbag2 import WriterError as Writer2Error
    from rosbags.serde import SerdeError

    try:
        if ros1:
            _write_ros1(path, streams)
        else:
            _write_rosbag2(path, streams, storage, store)
    except (OSError, Writer1Error, Writer2Error, SerdeError) as exc:  # disk full, permissions, bad field values
        _remove(path)
        raise BagError(f"{path}: cannot write bag: {exc}") from exc
    except BaseException:
        _remove(path)
        raise
    return path


class BagRecorder:
    """An open rosbag2 bag that messages are written to as they are made (outputs of streaming work:
    nothing is held in memory). Closing it finishes the bag; an exception inside ``with`` removes it."""

    def __init__(self, path: str | Path, topics: Sequence[tuple[str, str]], storage: str = "sqlite3") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = Path(path).expanduser()
        _check_new(self.path)
        plugins = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
        if storage not in plugins:
            raise BagError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        self.store = _project_typestore()
        for _, msgtype in topics:
            if msgtype not in self.store.fielddefs:
                raise BagError(f"unknown message type {msgtype!r} (not a ROS 2 Humble or selavpr_ros message)")
        self._writer = Writer(self.path, version=ROSBAG2_VERSION, storage_plugin=plugins[storage])
        self._writer.open()
        self._conns = {topic: (self._writer.add_connection(topic, msgtype, typestore=self.store), msgtype)
                       for topic, msgtype in topics}

    def write(self, topic: str, stamp: int, msg: Any) -> None:
        conn, msgtype = self._conns[topic]
        self._writer.write(conn, int(stamp), self.store.serialize_cdr(msg, msgtype))

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> BagRecorder:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.close()
        if kind is not None:
            _remove(self.path)


def _write_rosbag2(path: Path, streams: Sequence[Stream], storage: str, store) -> None:
    with BagRecorder(path, [(topic, msgtype) for topic, msgtype, _ in streams], storage) as bag:
        for topic, _, messages in streams:
            for stamp, msg in messages:
                bag.write(topic, stamp, msg)


def _write_ros1(path: Path, streams: Sequence[Stream]) -> None:
    from rosbags.rosbag1 import Writer

    store1 = _ros1_typestore()
    for _, msgtype, _ in streams:
        if msgtype not in store1.fielddefs:
            raise BagError(f"message type {msgtype!r} has no ROS 1 (Noetic) definition; write a rosbag2 bag")
    path.parent.mkdir(parents=True, exist_ok=True)
    with Writer(path) as writer:
        conns = [(writer.add_connection(topic, msgtype, typestore=store1), msgtype, msgs)
                 for topic, msgtype, msgs in streams]
        for conn, msgtype, stamp, msg in _in_turn(conns):
            writer.write(conn, stamp, store1.serialize_ros1(_to_ros1(msg, msgtype, store1), msgtype))


def write_messages(path: str | Path, topic: str, msgtype: str, messages: Iterable[tuple[int, Any]],
                   storage: str = "sqlite3") -> Path:
    """A rosbag2 bag of ready-made ``(bag time ns, message)`` pairs on one topic."""
    return write_topics(path, [(topic, msgtype, messages)], storage=storage)


def _image_messages(images: Iterable[np.ndarray], stamps_ns: Sequence[int], compressed: bool, frame_id: str,
                    encoding: str) -> Iterator[tuple[int, Any]]:
    from selavpr_ros.transport.image_decoding import encode_compressed, encode_image
    from selavpr_ros.transport.msgtypes import message

    count = 0
    for count, rgb in enumerate(images, start=1):
        if count > len(stamps_ns):
            raise BagError(f"more images than the {len(stamps_ns)} stamps")
        stamp = int(stamps_ns[count - 1])
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise BagError(f"image {count - 1}: expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
        if compressed:
            fields = encode_compressed(rgb, "jpeg", quality=90)
            yield stamp, message(COMPRESSED, header=header_fields(stamp, frame_id), **fields)
        else:
            yield stamp, message(IMAGE, header=header_fields(stamp, frame_id), **encode_image(rgb, encoding))
    if count != len(stamps_ns):
        raise BagError(f"{count} images for {len(stamps_ns)} stamps")


def _odometry_messages(poses: Sequence[Pose], stamps_ns: Sequence[int], frame_id: str,
                       child_frame_id: str) -> Iterator[tuple[int, Any]]:
    from selavpr_ros.transport.msgtypes import message

    for pose, stamp in zip(poses, stamps_ns):
        fields: dict[str, Any] = {
            "pose": {"position": dict(zip("xyz", map(float, pose.position))),
                     "orientation": dict(zip("xyzw", map(float, pose.orientation)))},
        }
        if pose.covariance is not None:
            fields["covariance"] = np.asarray(pose.covariance, np.float64).reshape(36)
        yield int(stamp), message(ODOMETRY, header=header_fields(stamp, frame_id), child_frame_id=child_frame_id,
                                  pose=fields)


def camera_info_fields(camera: CameraModel, frame_id: str) -> dict[str, Any]:
    """Fields of a ``sensor_msgs/CameraInfo`` for ``camera`` (header excluded)."""
    fx, fy, cx, cy = camera.k
    k = np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], np.float64)
    p = np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], np.float64)
    return {"height": camera.height, "width": camera.width,
            "distortion_model": camera.distortion_model or "plumb_bob",
            "d": np.asarray(camera.d or (0.0,) * 5, np.float64), "k": k,
            "r": np.eye(3).ravel(), "p": p}


def _camera_info_messages(camera: CameraModel, stamps_ns: Sequence[int], frame_id: str) -> Iterator[tuple[int, Any]]:
    from selavpr_ros.transport.msgtypes import message

    fields = camera_info_fields(camera, frame_id)
    for stamp in stamps_ns:
        yield int(stamp), message(CAMERA_INFO, header=header_fields(stamp, frame_id), **fields)


def write_image_bag(
    path: str | Path,
    images: Iterable[np.ndarray],
    stamps_ns: Sequence[int],
    topic: str = "/camera/image_raw",
    compressed: bool = False,
    storage: str = "sqlite3",
    frame_id: str = "camera",
    encoding: str = "rgb8",
    poses: Sequence[Pose] | None = None,
    pose_topic: str = "/odom",
    ros1: bool = False,
    camera: CameraModel | None = None,
) -> Path:
    """A camera run: one image per stamp, header stamp = bag time.

    Raw ``sensor_msgs/msg/Image`` in ``encoding`` (rgb8, bgr8 or mono8) or,
    with ``compressed``, ``CompressedImage`` (JPEG, quality 90). ``poses``
    (in a ``map`` frame) add ``nav_msgs/msg/Odometry`` at the same stamps on
    ``pose_topic``. ``ros1`` writes a ROS 1 ``.bag`` (the suffix is added when
    missing, ``storage`` is then ignored); the path written is returned.
    ``camera`` adds its ``sensor_msgs/msg/CameraInfo`` beside each image, on
    the ``camera_info`` topic of the image's namespace.
    """
    path = Path(path).expanduser()
    if ros1 and path.suffix != ".bag":
        path = path.with_name(path.name + ".bag")
    if not compressed and encoding not in ("rgb8", "bgr8", "mono8"):
        raise BagError(f"encoding must be rgb8, bgr8 or mono8, got {encoding!r}")
    stamps = [int(s) for s in stamps_ns]
    if any(s < 0 for s in stamps):
        raise BagError("stamps must be non-negative nanoseconds")
    streams: list[Stream] = [
        (topic, COMPRESSED if compressed else IMAGE, _image_messages(images, stamps, compressed, frame_id, encoding))
    ]
    if poses is not None:
        poses = list(poses)
        if len(poses) != len(stamps):
            raise BagError(f"{len(poses)} poses for {len(stamps)} stamps")
        streams.append((pose_topic, ODOMETRY, _odometry_messages(poses, stamps, "map", "base_link")))
    if camera is not None:
        from selavpr_ros.bags.reader import camera_info_topic

        streams.append((camera_info_topic(topic), CAMERA_INFO, _camera_info_messages(camera, stamps, frame_id)))
    return write_topics(path, streams, storage=storage, ros1=ros1)
