"""Pose tracks from bags, interpolated to image stamps, so map keyframes carry where they were taken.

Sources: ``nav_msgs/Odometry``, ``geometry_msgs/PoseStamped``,
``geometry_msgs/PoseWithCovarianceStamped``, ``sensor_msgs/NavSatFix``
(metres east/north/up in the tangent plane of the WGS84 ellipsoid at the
first fix) and ``tf2_msgs/TFMessage`` (the transform chain from a fixed
frame to the robot frame, with ``/tf_static``). Positions interpolate
linearly, orientations by slerp; a stamp outside the track, or in a gap
longer than ``max_gap_s``, gets no pose rather than an invented one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from selavpr_ros.bags.reader import topic_summary
from selavpr_ros.errors import BagError
from selavpr_ros.types import Pose, stamp_ns

if TYPE_CHECKING:
    from rosbags.highlevel import AnyReader
    from rosbags.interfaces import Connection

log = logging.getLogger(__name__)

WGS84_A = 6378137.0  # semi-major axis (m)
WGS84_F = 1 / 298.257223563
WGS84_E2 = WGS84_F * (2 - WGS84_F)  # first eccentricity squared
UNKNOWN_ROTATION_VARIANCE = 1e6  # rad^2: a NavSatFix says nothing about orientation
TF_HOLD_S = 1.0  # a slower tf edge (e.g. map -> odom) holds its end values this long past its first/last sample

ODOMETRY = "nav_msgs/msg/Odometry"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
POSE_COV = "geometry_msgs/msg/PoseWithCovarianceStamped"
NAVSATFIX = "sensor_msgs/msg/NavSatFix"
TFMESSAGE = "tf2_msgs/msg/TFMessage"
SUPPORTED = (ODOMETRY, POSE_STAMPED, POSE_COV, NAVSATFIX, TFMESSAGE)
_ALIASES = {"tf/msg/tfMessage": TFMESSAGE}  # ROS 1 tf (same fields)
IDENTITY_QUAT = np.array([0.0, 0.0, 0.0, 1.0])


# --- quaternions (x, y, z, w), vectorised over leading axes -----------------------------------------------------------


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` (rotation b, then a)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    x1, y1, z1, w1 = np.moveaxis(a, -1, 0)
    x2, y2, z2, w2 = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        ],
        axis=-1,
    )


def quat_conj(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, np.float64)
    return np.concatenate([-q[..., :3], q[..., 3:]], axis=-1)


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors ``v`` (..., 3) by unit quaternions ``q`` (..., 4)."""
    q, v = np.asarray(q, np.float64), np.asarray(v, np.float64)
    u, w = q[..., :3], q[..., 3:]
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def normalize_quats(q: np.ndarray) -> np.ndarray:
    """Unit quaternions; zero or non-finite ones (an unset orientation) become the identity."""
    q = np.asarray(q, np.float64).reshape(-1, 4)
    norm = np.linalg.norm(q, axis=1)
    bad = ~np.isfinite(norm) | (norm < 1e-9)
    out = np.where(bad[:, None], IDENTITY_QUAT, q / np.where(bad, 1.0, norm)[:, None])
    return out


def slerp(q0: np.ndarray, q1: np.ndarray, a: np.ndarray | float) -> np.ndarray:
    """Spherical interpolation from ``q0`` (a = 0) to ``q1`` (a = 1) along the shorter arc."""
    q0 = np.asarray(q0, np.float64)
    q1 = np.asarray(q1, np.float64)
    q0 = q0 / np.linalg.norm(q0, axis=-1, keepdims=True)
    q1 = q1 / np.linalg.norm(q1, axis=-1, keepdims=True)
    a = np.asarray(a, np.float64)[..., None]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    dot = np.clip(np.abs(dot), 0.0, 1.0)
    theta = np.arccos(dot)
    sin = np.sin(theta)
    small = sin < 1e-6  # nearly equal: linear interpolation is exact enough and avoids 0/0
    safe = np.where(small, 1.0, sin)
    w0 = np.where(small, 1.0 - a, np.sin((1.0 - a) * theta) / safe)
    w1 = np.where(small, a, np.sin(a * theta) / safe)
    q = w0 * q0 + w1 * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def geodetic_to_enu(lat: np.ndarray, lon: np.ndarray, alt: np.ndarray, origin: tuple[float, float, float]
                    ) -> np.ndarray:
    """WGS84 latitude/longitude/altitude (deg, deg, m) -> (N, 3) east/north/up metres in the tangent plane at
    ``origin`` (through ECEF, so it stays right away from the equator and over a few kilometres)."""

    def ecef(la, lo, h):
        la, lo = np.radians(la), np.radians(lo)
        n = WGS84_A / np.sqrt(1.0 - WGS84_E2 * np.sin(la) ** 2)
        return np.stack([(n + h) * np.cos(la) * np.cos(lo), (n + h) * np.cos(la) * np.sin(lo),
                         (n * (1.0 - WGS84_E2) + h) * np.sin(la)], axis=-1)

    lat0, lon0, alt0 = origin
    d = ecef(np.asarray(lat, np.float64), np.asarray(lon, np.float64), np.asarray(alt, np.float64))
    d = d - ecef(np.float64(lat0), np.float64(lon0), np.float64(alt0))
    la, lo = np.radians(lat0), np.radians(lon0)
    rot = np.array([
        [-np.sin(lo), np.cos(lo), 0.0],
        [-np.sin(la) * np.cos(lo), -np.sin(la) * np.sin(lo), np.cos(la)],
        [np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)],
    ])
    return d @ rot.T


# --- the track --------------------------------------------------------------------------------------------------------


@dataclass
class PoseTrack:
    """Timed poses of one source, sorted by stamp."""

    stamps_ns: np.ndarray  # (N,) int64, non-decreasing
    positions: np.ndarray  # (N, 3) float64, metres in frame_id
    orientations: np.ndarray  # (N, 4) float64 unit quaternions x, y, z, w
    covariances: np.ndarray | None  # (N, 36) row-major 6x6 as in ROS, or None when the source has none
    frame_id: str
    source_type: str  # the ROS message type the poses came from
    skipped: int = 0  # messages that did not deserialize or held no usable pose
    child_frame_id: str = ""  # the frame whose poses these are (nav_msgs/Odometry child_frame_id), when known

    def __post_init__(self) -> None:
        stamps = np.asarray(self.stamps_ns, np.int64).reshape(-1)
        n = len(stamps)
        positions = np.asarray(self.positions, np.float64).reshape(n, 3)
        orientations = normalize_quats(np.asarray(self.orientations, np.float64).reshape(n, 4))
        order = np.argsort(stamps, kind="stable")
        self.stamps_ns = stamps[order]
        self.positions = positions[order]
        self.orientations = orientations[order]
        if self.covariances is not None:
            self.covariances = np.asarray(self.covariances, np.float64).reshape(n, 36)[order]

    def __len__(self) -> int:
        return len(self.stamps_ns)

    @property
    def span_s(self) -> tuple[float, float]:
        """First and last stamp in seconds (for messages)."""
        return float(self.stamps_ns[0]) * 1e-9, float(self.stamps_ns[-1]) * 1e-9

    def _brackets(self, stamps_ns: np.ndarray, max_gap_s: float | None):
        """Indices of the samples around each stamp, the blend factor, and which stamps have a pose."""
        s = np.asarray(stamps_ns, np.int64).reshape(-1)
        t = self.stamps_ns
        n = len(t)
        j = np.searchsorted(t, s, side="left")
        exact = (j < n) & (t[np.minimum(j, n - 1)] == s)
        i1 = np.minimum(j, n - 1)
        i0 = np.where(exact, i1, np.maximum(j - 1, 0))
        inside = exact | ((j > 0) & (j < n))
        span = (t[i1] - t[i0]).astype(np.float64)
        ok = inside.copy()
        if max_gap_s is not None:
            ok &= exact | (span * 1e-9 <= max_gap_s)
        a = np.where(exact | (span == 0), 0.0, (s - t[i0]).astype(np.float64) / np.where(span == 0, 1.0, span))
        return i0, i1, a, ok

    def interpolate(self, stamps_ns: np.ndarray | Sequence[int], max_gap_s: float = 0.5) -> list[Pose | None]:
        """Pose at each stamp: linear position, slerp orientation, nearest sample's covariance.

        None outside the track or between two samples more than ``max_gap_s``
        apart: a pose guessed across a long gap would put the keyframe in the
        wrong place in the map.
        """
        if len(self) == 0:
            return [None] * len(np.asarray(stamps_ns).reshape(-1))
        i0, i1, a, ok = self._brackets(np.asarray(stamps_ns), max_gap_s)
        pos = (1.0 - a)[:, None] * self.positions[i0] + a[:, None] * self.positions[i1]
        quat = slerp(self.orientations[i0], self.orientations[i1], a)
        nearest = np.where(a < 0.5, i0, i1)
        out: list[Pose | None] = []
        for k in range(len(a)):
            if not ok[k]:
                out.append(None)
                continue
            cov = None if self.covariances is None else tuple(float(v) for v in self.covariances[nearest[k]])
            x, y, z = (float(v) for v in pos[k])
            qx, qy, qz, qw = (float(v) for v in quat[k])
            out.append(Pose((x, y, z), (qx, qy, qz, qw), cov, self.frame_id))
        return out

    def overlap(self, stamps_ns: np.ndarray | Sequence[int], max_gap_s: float | None = None) -> float:
        """Fraction of ``stamps_ns`` within the track's time span (and, given ``max_gap_s``, not in a gap)."""
        s = np.asarray(stamps_ns, np.int64).reshape(-1)
        if len(s) == 0 or len(self) == 0:
            return 0.0
        return float(np.mean(self._brackets(s, max_gap_s)[3]))


def check_overlap(track: PoseTrack, stamps_ns: np.ndarray | Sequence[int], topic: str) -> float:
    """The overlap fraction; BagError when the poses and the images share no time at all.

    That is nearly always a wrong topic or a header stamp in another clock
    (sim time against wall time), and every keyframe would lack its pose.
    """
    s = np.asarray(stamps_ns, np.int64).reshape(-1)
    if len(s) == 0:
        return 0.0
    fraction = track.overlap(s)
    if fraction == 0.0:
        lo, hi = track.span_s
        raise BagError(f"pose topic '{topic}' covers none of the {len(s)} image stamps (poses from {lo:.3f} to "
                       f"{hi:.3f} s, images from {s.min() * 1e-9:.3f} to {s.max() * 1e-9:.3f} s)")
    return fraction


# --- loading ----------------------------------------------------------------------------------------------------------


def _normalise_type(msgtype: str) -> str:
    """``pkg/Type`` (ROS 1 spelling) -> ``pkg/msg/Type``."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        msgtype = f"{parts[0]}/msg/{parts[1]}"
    return _ALIASES.get(msgtype, msgtype)


def _bag_names(reader: AnyReader) -> str:
    return ", ".join(str(p) for p in reader.paths)


def _topic_list(reader: AnyReader) -> str:
    return ", ".join(f"{t} ({ty})" for t, (ty, _) in topic_summary(reader).items()) or "none"


class _Messages:
    """Deserialized messages of some connections; undeserializable ones are counted, not raised."""

    def __init__(self, reader: AnyReader, conns: list[Connection]) -> None:
        self.reader, self.conns, self.skipped = reader, conns, 0

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        if not self.conns:  # an empty list would mean "every connection" to rosbags
            return
        for conn, bag_time, raw in self.reader.messages(connections=self.conns):
            try:
                msg = self.reader.deserialize(raw, conn.msgtype)
            except Exception as exc:  # one corrupt record must not cost the whole track
                self.skipped += 1
                log.warning("%s: skipping undecodable %s message at bag time %d: %s", conn.topic, conn.msgtype,
                            bag_time, exc)
                continue
            yield int(bag_time), msg


def load_pose_track(reader: AnyReader, topic: str, base_frame: str | None = None,
                    map_frame: str | None = None) -> PoseTrack:
    """Every usable pose on ``topic``.

    ``base_frame`` and ``map_frame`` are needed for tf2_msgs/TFMessage topics
    only: the track is then the pose of ``base_frame`` in ``map_frame``.
    """
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        raise BagError(f"{_bag_names(reader)}: no pose topic '{topic}'; topics: {_topic_list(reader)}")
    types = sorted({_normalise_type(c.msgtype) for c in conns})
    unsupported = [t for t in types if t not in SUPPORTED]
    if unsupported or len(types) > 1:
        shown = ", ".join(sorted({c.msgtype for c in conns}))
        raise BagError(f"pose topic '{topic}' has type {shown}; supported: {', '.join(SUPPORTED)}")
    msgtype = types[0]
    if msgtype == TFMESSAGE:
        return _tf_track(reader, topic, conns, base_frame, map_frame)
    messages = _Messages(reader, conns)
    if msgtype == NAVSATFIX:
        return _navsat_track(topic, messages)

    stamps: list[int] = []
    pos: list[list[float]] = []
    quat: list[list[float]] = []
    cov: list[np.ndarray] = []
    frame, child, invalid = "", "", 0
    for bag_time, msg in messages:
        if msgtype == POSE_STAMPED:
            pose, covariance = msg.pose, None
        else:  # Odometry and PoseWithCovarianceStamped: pose.pose and pose.covariance
            pose, covariance = msg.pose.pose, np.asarray(msg.pose.covariance, np.float64).reshape(36)
        p = [float(pose.position.x), float(pose.position.y), float(pose.position.z)]
        if not np.isfinite(p).all():
            invalid += 1
            continue
        o = pose.orientation
        frame = frame or str(msg.header.frame_id)
        child = child or str(getattr(msg, "child_frame_id", ""))
        stamps.append(stamp_ns(msg) or bag_time)
        pos.append(p)
        quat.append([float(o.x), float(o.y), float(o.z), float(o.w)])
        if covariance is not None:
            cov.append(covariance)
    if not stamps:
        raise BagError(f"pose topic '{topic}' ({msgtype}) holds no usable pose "
                       f"({messages.skipped} undecodable, {invalid} with non-finite positions)")
    return PoseTrack(np.asarray(stamps, np.int64), np.asarray(pos), np.asarray(quat),
                     np.asarray(cov) if msgtype != POSE_STAMPED else None, frame, msgtype,
                     skipped=messages.skipped + invalid, child_frame_id=child.lstrip("/"))


def _navsat_track(topic: str, messages: _Messages) -> PoseTrack:
    """GNSS fixes as east/north/up metres around the first valid fix; orientation unknown (identity)."""
    rows, covs, no_fix, cov_known = [], [], 0, True
    for bag_time, msg in messages:
        lat, lon, alt = float(msg.latitude), float(msg.longitude), float(msg.altitude)
        if int(msg.status.status) < 0 or not (np.isfinite(lat) and np.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
            no_fix += 1
            continue
        rows.append((stamp_ns(msg) or bag_time, lat, lon, alt))
        covs.append(np.asarray(msg.position_covariance, np.float64).reshape(3, 3))
        cov_known &= int(msg.position_covariance_type) != 0
    if not rows:
        raise BagError(f"pose topic '{topic}' (sensor_msgs/msg/NavSatFix) holds no valid fix "
                       f"({no_fix} without a fix, {messages.skipped} undecodable)")
    order = np.argsort([r[0] for r in rows], kind="stable")
    arr = np.asarray(rows, np.float64)[order]
    stamps = np.asarray([rows[i][0] for i in order], np.int64)  # exact: float64 would round nanoseconds
    alts = arr[:, 3]
    finite = np.isfinite(alts)
    alts = np.where(finite, alts, alts[finite][0] if finite.any() else 0.0)  # unknown altitude: stay level
    enu = geodetic_to_enu(arr[:, 1], arr[:, 2], alts, (arr[0, 1], arr[0, 2], alts[0]))
    covariances = None
    if cov_known:
        c = np.zeros((len(rows), 6, 6))
        c[:, :3, :3] = np.asarray(covs)[order]  # NavSatFix covariance is already east/north/up (m^2)
        c[:, 3, 3] = c[:, 4, 4] = c[:, 5, 5] = UNKNOWN_ROTATION_VARIANCE
        covariances = c.reshape(-1, 36)
    return PoseTrack(stamps, enu, np.tile(IDENTITY_QUAT, (len(rows), 1)), covariances, "enu", NAVSATFIX,
                     skipped=messages.skipped + no_fix)


# --- /tf --------------------------------------------------------------------------------------------------------------


@dataclass
class _Edge:
    parent: str
    stamps: list[int]
    trans: list[list[float]]
    rots: list[list[float]]

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = np.asarray(self.stamps, np.int64)
        order = np.argsort(t, kind="stable")
        return t[order], np.asarray(self.trans)[order], normalize_quats(np.asarray(self.rots))[order]


def transform_parts(tf) -> tuple[str, str, list[float], list[float]]:
    tr, ro = tf.transform.translation, tf.transform.rotation
    return (str(tf.header.frame_id).lstrip("/"), str(tf.child_frame_id).lstrip("/"),
            [float(tr.x), float(tr.y), float(tr.z)], [float(ro.x), float(ro.y), float(ro.z), float(ro.w)])


def _read_edges(messages: _Messages) -> tuple[dict[str, _Edge], int]:
    """child frame -> its samples; a child re-parented later keeps its first parent (tf allows one)."""
    edges: dict[str, _Edge] = {}
    conflicts = 0
    for bag_time, msg in messages:
        for tf in msg.transforms:
            parent, child, t, q = transform_parts(tf)
            edge = edges.setdefault(child, _Edge(parent, [], [], []))
            if edge.parent != parent:
                conflicts += 1
                continue
            edge.stamps.append(stamp_ns(tf) or bag_time)
            edge.trans.append(t)
            edge.rots.append(q)
    return edges, conflicts


def _edge_at(edge: _Edge, stamps: np.ndarray, hold_ns: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Translation and rotation of ``edge`` at ``stamps`` and which stamps it can answer for."""
    t, trans, rots = edge.arrays()
    track = PoseTrack(t, trans, rots, None, edge.parent, TFMESSAGE)
    i0, i1, a, ok = track._brackets(stamps, None)
    if hold_ns is not None:  # past either end: the end value, within hold_ns
        before, after = stamps < t[0], stamps > t[-1]
        i0 = np.where(before, 0, np.where(after, len(t) - 1, i0))
        i1 = np.where(before, 0, np.where(after, len(t) - 1, i1))
        a = np.where(before | after, 0.0, a)
        ok = ok | (before & (t[0] - stamps <= hold_ns)) | (after & (stamps - t[-1] <= hold_ns))
    pos = (1.0 - a)[:, None] * trans[i0] + a[:, None] * trans[i1]
    return pos, slerp(rots[i0], rots[i1], a), ok


def root_path(frame: str, parents: dict[str, str]) -> list[str]:
    """``frame``, its parent, grandparent ... up to the root (stops at a cycle)."""
    path = [frame]
    while path[-1] in parents and parents[path[-1]] not in path:
        path.append(parents[path[-1]])
    return path


def _tf_track(reader: AnyReader, topic: str, conns: list[Connection], base_frame: str | None,
              map_frame: str | None) -> PoseTrack:
    """Pose of ``base_frame`` in ``map_frame`` at each stamp of the dynamic transform into ``base_frame``."""
    dyn_msgs = _Messages(reader, conns)
    dynamic, conflicts = _read_edges(dyn_msgs)
    static_conns = [c for c in reader.connections if c.topic == "/tf_static" and c.topic != topic
                    and _normalise_type(c.msgtype) == TFMESSAGE]
    static_msgs = _Messages(reader, static_conns)
    static_edges, static_conflicts = _read_edges(static_msgs)
    static = {k: v for k, v in static_edges.items() if k not in dynamic}  # tf: a dynamic edge wins
    parents = {k: e.parent for k, e in static.items()} | {k: e.parent for k, e in dynamic.items()}
    frames = sorted(set(parents) | set(parents.values()))

    def listing() -> str:
        edges = sorted(f"{parents[c]} -> {c}{' (static)' if c in static else ''}" for c in parents)
        return ", ".join(edges) or "none"

    if not base_frame or not map_frame:
        raise BagError(f"poses from '{topic}' need a base frame and a map frame; frames in the bag: "
                       f"{', '.join(frames) or 'none'} (transforms: {listing()})")
    base_frame, map_frame = base_frame.lstrip("/"), map_frame.lstrip("/")
    missing = [f for f in (map_frame, base_frame) if f not in frames]
    if missing:
        raise BagError(f"frame {', '.join(repr(f) for f in missing)} not in '{topic}'"
                       f"{' or /tf_static' if static_conns else ''}; frames: {', '.join(frames) or 'none'} "
                       f"(transforms: {listing()})")
    up_base, up_map = root_path(base_frame, parents), root_path(map_frame, parents)
    common = next((f for f in up_base if f in up_map), None)
    if common is None:
        raise BagError(f"no transform chain from '{map_frame}' to '{base_frame}': they are in separate trees; "
                       f"transforms: {listing()}")
    chain_base = up_base[: up_base.index(common)]  # child frames of the edges from common down to base
    chain_map = up_map[: up_map.index(common)]
    if base_frame in dynamic:
        stamps = np.unique(np.asarray(dynamic[base_frame].stamps, np.int64))
    else:
        moving = [f for f in chain_base + chain_map if f in dynamic]
        if not moving:
            raise BagError(f"the chain from '{map_frame}' to '{base_frame}' is static: it has no stamps to give "
                           f"poses at; transforms: {listing()}")
        stamps = np.unique(np.asarray(dynamic[moving[0]].stamps, np.int64))
    n = len(stamps)
    ok = np.ones(n, bool)
    hold_ns = int(TF_HOLD_S * 1e9)

    def to_common(chain: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """T_common_frame at every stamp by composing the edges upward."""
        nonlocal ok
        pos, rot = np.zeros((n, 3)), np.tile(IDENTITY_QUAT, (n, 1))
        for child in chain:
            if child in dynamic:
                t, q, good = _edge_at(dynamic[child], stamps, None if child == base_frame else hold_ns)
                ok &= good
            else:
                e = static[child]
                t = np.tile(np.asarray(e.trans[-1], np.float64), (n, 1))
                q = np.tile(normalize_quats(np.asarray(e.rots[-1]))[0], (n, 1))
            pos, rot = quat_rotate(q, pos) + t, quat_mul(q, rot)  # T_parent_child composed with T_child_x
        return pos, rot

    p_base, q_base = to_common(chain_base)
    p_map, q_map = to_common(chain_map)
    inv = quat_conj(q_map)  # T_map_base = T_common_map^-1 T_common_base
    pos = quat_rotate(inv, p_base - p_map)
    rot = quat_mul(inv, q_base)
    if not ok.any():
        raise BagError(f"no stamp of '{base_frame}' on '{topic}' is covered by every transform from '{map_frame}'; "
                       f"transforms: {listing()}")
    skipped = dyn_msgs.skipped + static_msgs.skipped + conflicts + static_conflicts + int((~ok).sum())
    return PoseTrack(stamps[ok], pos[ok], rot[ok], None, map_frame, TFMESSAGE, skipped=skipped)
