"""Images from bags (rosbag2 sqlite3 / mcap folders and ROS 1 files) through ``rosbags``.

One bad message (a payload that does not deserialize) is skipped and
counted, never fatal: a long recording should not be lost to one corrupt
record. A missing topic, or a topic of the wrong type, is an error that
lists what the bag does hold, so the user can fix the command line.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selavpr_ros.errors import BagError, SelaVPRError
from selavpr_ros.types import stamp_ns

if TYPE_CHECKING:
    from rosbags.highlevel import AnyReader
    from rosbags.interfaces import Connection

    from selavpr_ros.geometry.camera import CameraTrack

log = logging.getLogger(__name__)

# message type -> BagImage.msgtype; ROS 1 spellings too (rosbags normalises them, other tools may not)
IMAGE_TYPES = {
    "sensor_msgs/msg/Image": "image",
    "sensor_msgs/msg/CompressedImage": "compressed",
    "sensor_msgs/Image": "image",
    "sensor_msgs/CompressedImage": "compressed",
}
_ROSBAG2_FILES = (".db3", ".mcap")
_ERRORS_KEPT = 10


@dataclass
class BagImage:
    """One image message with the stamps and provenance a map keyframe records."""

    stamp_ns: int  # header stamp; the bag time when the header stamp is zero
    bag_time_ns: int
    frame_id: str
    msgtype: str  # "image" or "compressed"
    msg: Any  # the deserialized sensor_msgs message (decode with transport.image_decoding.decode_any)
    source: str  # path of the bag file or folder the message came from
    topic: str


def bag_path(path: str | Path) -> Path:
    """``path`` as ``rosbags`` opens it.

    A rosbag2 recording is a folder; users often pass the ``metadata.yaml``
    or the ``.db3`` / ``.mcap`` inside it, so those mean their folder. A lone
    ``.db3`` / ``.mcap`` without metadata (written by other tools) is opened
    as a single storage file. ROS 1 bags are ``.bag`` files.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise BagError(f"{path}: bag not found")
    if path.is_file():
        if path.name == "metadata.yaml":
            return path.parent
        if path.suffix in _ROSBAG2_FILES:
            return path.parent if (path.parent / "metadata.yaml").is_file() else path
        if path.suffix == ".bag":
            return path
        raise BagError(f"{path}: not a bag (expected a rosbag2 folder, its metadata.yaml/.db3/.mcap, or a ROS 1 .bag)")
    if not (path / "metadata.yaml").is_file():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".bag", *_ROSBAG2_FILES))
        hint = f"; it contains {', '.join(inside[:5])}" if inside else ""
        raise BagError(f"{path}: not a rosbag2 folder (no metadata.yaml){hint}")
    return path


def _default_typestore():
    """Types for bags that embed no definitions (rosbag2 before Iron): Humble plus this package's messages."""
    from selavpr_ros.transport.msgtypes import typestore

    try:
        return typestore()
    except SelaVPRError:  # message definitions not installed: standard types still read
        from rosbags.typesys import Stores, get_typestore

        return get_typestore(Stores.ROS2_HUMBLE)


def _fill_missing_types(reader: AnyReader, default) -> None:
    """Register default types for connections that came without a definition.

    ``AnyReader`` ignores the default type store as soon as one connection
    embeds its definition, so a bag mixing both would fail on the others.
    """
    missing = {c.msgtype for c in reader.connections} - reader.typestore.fielddefs.keys()
    known = {k: v for k, v in default.fielddefs.items() if k not in reader.typestore.fielddefs}
    if missing and missing & known.keys():
        reader.typestore.register(known)


@contextlib.contextmanager
def open_bags(paths: Sequence[str | Path]) -> Iterator[AnyReader]:
    """An open ``AnyReader`` over ``paths``: ROS 1 ``.bag`` files, or rosbag2 recordings (not both)."""
    from rosbags.highlevel import AnyReader, AnyReaderError

    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise BagError("no bag given")
    resolved = [bag_path(p) for p in paths]
    ros1 = [p.suffix == ".bag" for p in resolved]
    if any(ros1) and not all(ros1):
        raise BagError(f"cannot read ROS 1 and rosbag2 bags together: {', '.join(map(str, resolved))}")
    names = ", ".join(map(str, resolved))
    default = _default_typestore()
    try:
        reader = AnyReader(resolved, default_typestore=default)
        reader.open()
    except (AnyReaderError, OSError, ValueError, KeyError) as exc:
        raise BagError(f"{names}: cannot open bag ({exc})") from None
    try:
        _fill_missing_types(reader, default)
        yield reader
    finally:
        reader.close()


def topic_summary(reader: AnyReader) -> dict[str, tuple[str, int]]:
    """topic -> (message type, message count), summed over connections (and over files for ROS 1)."""
    types: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for c in reader.connections:
        known = types.setdefault(c.topic, [])
        if c.msgtype not in known:
            known.append(c.msgtype)
        counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
    return {t: (" | ".join(types[t]), counts[t]) for t in sorted(types)}


def _bag_names(reader: AnyReader) -> str:
    return ", ".join(str(p) for p in reader.paths)


def _listing(topics: dict[str, tuple[str, int]]) -> str:
    return ", ".join(f"{t} ({ty}, {n})" for t, (ty, n) in topics.items()) or "none"


def image_connections(reader: AnyReader, topic: str) -> list[Connection]:
    """The connections of image ``topic``; a BagError that lists the bag's topics when it is absent or not images."""
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        topics = topic_summary(reader)
        images = [t for t, (ty, _) in topics.items() if any(x in IMAGE_TYPES for x in ty.split(" | "))]
        raise BagError(
            f"{_bag_names(reader)}: no topic '{topic}'; image topics present: {', '.join(images) or 'none'}; "
            f"all topics: {_listing(topics)}"
        )
    wrong = sorted({c.msgtype for c in conns if c.msgtype not in IMAGE_TYPES})
    if wrong:
        raise BagError(
            f"{_bag_names(reader)}: topic '{topic}' has type {', '.join(wrong)}, "
            "not sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage"
        )
    return conns


def image_count(reader: AnyReader, topic: str) -> int:
    """Image messages on ``topic`` (from the bag's index: nothing is read)."""
    return sum(c.msgcount for c in image_connections(reader, topic))


def _source(conn: Connection, fallback: str) -> str:
    path = getattr(conn.owner, "path", None)
    return str(path) if path is not None else fallback


class ImageStream(Iterator[BagImage]):
    """Iterator over one image topic that skips undecodable messages and counts them.

    ``skipped`` and ``errors`` (the first few reasons) are read after, or
    during, the iteration: a generator could not report them.
    """

    def __init__(self, reader: AnyReader, topic: str, start_ns: int | None = None) -> None:
        self.topic = topic
        self.connections = image_connections(reader, topic)
        self.skipped = 0
        self.read = 0  # messages taken from the bag, skipped ones included
        self.errors: list[str] = []
        self._reader = reader
        self._start = start_ns
        self._it = self._run()

    def __iter__(self) -> ImageStream:
        return self

    def __next__(self) -> BagImage:
        return next(self._it)

    def _run(self) -> Iterator[BagImage]:
        reader, names = self._reader, _bag_names(self._reader)
        messages = reader.messages(connections=self.connections, start=self._start)
        while True:
            try:
                conn, bag_time, raw = next(messages)
            except StopIteration:
                return
            except Exception as exc:  # a damaged storage file: the rest of the bag cannot be read
                raise BagError(f"{names}: cannot read '{self.topic}' after {self.read} messages: {exc}") from None
            self.read += 1
            source = _source(conn, names)
            try:
                msg: Any = reader.deserialize(raw, conn.msgtype)  # a dynamic message class
                stamp = stamp_ns(msg)
                frame_id = str(msg.header.frame_id)
            except Exception as exc:  # one corrupt record must not end the bag
                self.skipped += 1
                if len(self.errors) < _ERRORS_KEPT:
                    self.errors.append(f"{source}: bag time {bag_time}: {exc}")
                log.warning("%s: skipping undecodable message on %s at bag time %d: %s", source, self.topic,
                            bag_time, exc)
                continue
            yield BagImage(stamp_ns=stamp or int(bag_time), bag_time_ns=int(bag_time), frame_id=frame_id,
                           msgtype=IMAGE_TYPES[conn.msgtype], msg=msg, source=source, topic=conn.topic)


CAMERA_INFO_TYPES = ("sensor_msgs/msg/CameraInfo", "sensor_msgs/CameraInfo")


def camera_info_topic(image_topic: str) -> str:
    """The CameraInfo topic image_transport pairs with ``image_topic``: ``camera_info`` in its namespace.

    ``/cam/image_raw`` and ``/cam/image_raw/compressed`` both give ``/cam/camera_info``.
    """
    parts = image_topic.rstrip("/").split("/")
    if len(parts) > 2 and parts[-1] in ("compressed", "compressedDepth", "theora", "zstd"):
        parts = parts[:-1]
    return "/".join(parts[:-1] + ["camera_info"])


def load_camera_track(reader: AnyReader, topic: str, max_age_s: float = 1.0) -> CameraTrack:
    """Every CameraInfo of ``topic`` (they are small), for :meth:`CameraTrack.lookup` by image stamp.

    A missing topic gives an empty track (its lookups say so); a topic of another type is an error.
    """
    from selavpr_ros.geometry.camera import CameraTrack

    conns = [c for c in reader.connections if c.topic == topic]
    wrong = sorted({c.msgtype for c in conns if c.msgtype not in CAMERA_INFO_TYPES})
    if wrong:
        raise BagError(f"{_bag_names(reader)}: topic '{topic}' has type {', '.join(wrong)}, "
                       "not sensor_msgs/msg/CameraInfo")
    track = CameraTrack(int(max_age_s * 1e9), capacity=1 << 30)
    if not conns:  # an empty list would mean "every connection" to rosbags
        return track
    for conn, bag_time, raw in reader.messages(connections=conns):
        try:
            msg = reader.deserialize(raw, conn.msgtype)
        except Exception as exc:  # one corrupt record is skipped, as for images
            log.warning("%s: skipping undecodable CameraInfo at bag time %d: %s", topic, bag_time, exc)
            continue
        track.add(stamp_ns(msg) or int(bag_time), msg)
    return track


class StampedLookup:
    """Messages of one topic found by stamp while the images are read in time order (depth images).

    A second pass over the bag, advanced lazily: it holds only the messages
    within ``window_ns`` around the current image.
    """

    def __init__(self, reader: AnyReader, topic: str, window_ns: int = 100_000_000) -> None:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            raise BagError(f"{_bag_names(reader)}: no topic '{topic}'; all topics: {_listing(topic_summary(reader))}")
        self._reader = reader
        self._messages = reader.messages(connections=conns)
        self._window = window_ns
        self._buffer: dict[int, Any] = {}
        self._done = False
        self._newest = -1

    def get(self, stamp: int) -> Any | None:
        """The message stamped ``stamp`` (exactly), or None."""
        while not self._done and self._newest <= stamp + self._window:
            try:
                conn, bag_time, raw = next(self._messages)
            except StopIteration:
                self._done = True
                break
            try:
                msg = self._reader.deserialize(raw, conn.msgtype)
            except Exception:
                continue
            t = stamp_ns(msg) or int(bag_time)
            self._buffer[t] = msg
            self._newest = max(self._newest, t)
        for old in [t for t in self._buffer if t < stamp - self._window]:
            del self._buffer[old]
        return self._buffer.get(stamp)


def iter_images(reader: AnyReader, topic: str, start_ns: int | None = None) -> ImageStream:
    """Image messages of ``topic`` in bag-time order, from bag time ``start_ns`` on.

    The result is an iterator with ``skipped`` (undeserializable messages
    passed over) and ``errors`` attributes. Missing or non-image topics raise
    BagError at once, before the first message.
    """
    return ImageStream(reader, topic, start_ns)
