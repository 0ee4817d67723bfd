"""Bags written with rosbags and read back: images, pose tracks (odometry, GNSS, tf) and generic messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from selavpr_ros.bags.poses import PoseTrack, check_overlap, load_pose_track
from selavpr_ros.bags.reader import image_connections, iter_images, open_bags, topic_summary
from selavpr_ros.bags.writer import write_image_bag, write_messages, write_topics
from selavpr_ros.errors import BagError
from selavpr_ros.transport.image_decoding import decode_any
from selavpr_ros.transport.msgtypes import message, typestore
from selavpr_ros.types import Pose

S = 1_000_000_000
T0 = 1_700_000_000 * S  # a realistic epoch stamp: large integers must survive every path exactly


def header(stamp_ns: int, frame_id: str) -> dict:
    return {"stamp": {"sec": stamp_ns // S, "nanosec": stamp_ns % S}, "frame_id": frame_id}


def yaw_quat(yaw: float) -> dict:
    return {"x": 0.0, "y": 0.0, "z": math.sin(yaw / 2), "w": math.cos(yaw / 2)}


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    from conftest import DATA

    paths = sorted((DATA / "summer").glob("*.png"))[2701:2705]  # the first hundreds are dark (a tunnel)
    if not paths:
        pytest.skip(f"real images not found at {DATA}")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


# --- images -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "storage, compressed, ros1, encoding",
    [
        ("sqlite3", False, False, "rgb8"),
        ("sqlite3", True, False, "rgb8"),
        ("mcap", False, False, "bgr8"),
        ("mcap", True, False, "rgb8"),
        ("sqlite3", False, True, "rgb8"),
        ("sqlite3", True, True, "rgb8"),
        ("mcap", False, False, "mono8"),
    ],
)
def test_image_bag_round_trip(tmp_path, frames, storage, compressed, ros1, encoding):
    stamps = [T0 + i * S // 10 + 7 for i in range(len(frames))]
    path = write_image_bag(tmp_path / "run", frames, stamps, topic="/cam/image", compressed=compressed,
                           storage=storage, frame_id="cam_front", encoding=encoding, ros1=ros1)
    assert path.exists() and (path.suffix == ".bag") == ros1
    with open_bags([path]) as reader:
        assert topic_summary(reader) == {
            "/cam/image": ("sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image", len(frames))
        }
        stream = iter_images(reader, "/cam/image")
        items = list(stream)
    assert stream.skipped == 0
    assert [i.stamp_ns for i in items] == stamps
    assert [i.bag_time_ns for i in items] == stamps
    assert {i.frame_id for i in items} == {"cam_front"}
    assert {i.msgtype for i in items} == {"compressed" if compressed else "image"}
    assert {i.source for i in items} == {str(path)} and {i.topic for i in items} == {"/cam/image"}
    for item, src in zip(items, frames):
        rgb = decode_any(item.msg)
        assert rgb.shape == src.shape and rgb.dtype == np.uint8
        if compressed:
            assert np.abs(rgb.astype(int) - src).mean() < 6  # JPEG quality 90
        elif encoding == "mono8":
            grey = src.mean(axis=2).round().astype(np.uint8)
            np.testing.assert_array_equal(rgb, np.repeat(grey[:, :, None], 3, axis=2))
        else:
            np.testing.assert_array_equal(rgb, src)
            assert item.msg.encoding == encoding and item.msg.step == src.shape[1] * 3


def test_open_bags_accepts_files_inside_a_rosbag2_folder(tmp_path, frames):
    for storage, suffix in (("sqlite3", ".db3"), ("mcap", ".mcap")):
        folder = write_image_bag(tmp_path / storage, frames[:2], [T0, T0 + S], storage=storage)
        inner = next(folder.glob(f"*{suffix}"))
        for given in (folder, folder / "metadata.yaml", inner, str(inner)):
            with open_bags([given]) as reader:
                assert len(list(iter_images(reader, "/camera/image_raw"))) == 2
        lone = tmp_path / f"lone{suffix}"  # a storage file without metadata.yaml (other recorders write these)
        lone.write_bytes(inner.read_bytes())
        with open_bags([lone]) as reader:
            assert [i.stamp_ns for i in iter_images(reader, "/camera/image_raw")] == [T0, T0 + S]


def test_several_ros1_bags_read_as_one(tmp_path, frames):
    a = write_image_bag(tmp_path / "a", frames[:2], [T0, T0 + 2 * S], ros1=True)
    b = write_image_bag(tmp_path / "b.bag", frames[2:4], [T0 + S, T0 + 3 * S], ros1=True)
    with open_bags([a, b]) as reader:
        assert topic_summary(reader) == {"/camera/image_raw": ("sensor_msgs/msg/Image", 4)}
        items = list(iter_images(reader, "/camera/image_raw"))
    assert [i.stamp_ns for i in items] == [T0 + k * S for k in range(4)]
    assert [i.source for i in items] == [str(a), str(b), str(a), str(b)]
    c = write_image_bag(tmp_path / "c", frames[:1], [T0])
    with pytest.raises(BagError, match="ROS 1 and rosbag2"), open_bags([a, c]):
        pass


def test_open_bags_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(BagError, match="nope"), open_bags([missing]):
        pass
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="no metadata.yaml"), open_bags([tmp_path / "empty"]):
        pass


def test_start_ns_and_zero_header_stamp_falls_back_to_bag_time(tmp_path, frames):
    from selavpr_ros.transport.image_decoding import encode_image

    msgs = [(T0 + i * S, message("sensor_msgs/msg/Image", header=header(0 if i == 1 else T0 + i * S, "c"),
                                 **encode_image(frames[i]))) for i in range(3)]
    path = write_messages(tmp_path / "b", "/img", "sensor_msgs/msg/Image", msgs)
    with open_bags([path]) as reader:
        assert [i.stamp_ns for i in iter_images(reader, "/img")] == [T0, T0 + S, T0 + 2 * S]
        assert [i.stamp_ns for i in iter_images(reader, "/img", start_ns=T0 + S)] == [T0 + S, T0 + 2 * S]


def test_undecodable_message_is_skipped_and_counted(tmp_path, frames):
    from rosbags.rosbag2 import StoragePlugin, Writer

    from selavpr_ros.transport.image_decoding import encode_image

    store = typestore()
    path = tmp_path / "damaged"
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/img", "sensor_msgs/msg/Image", typestore=store)
        for i in range(3):
            raw = bytes(store.serialize_cdr(message("sensor_msgs/msg/Image", header=header(T0 + i * S, "c"),
                                                    **encode_image(frames[i])), "sensor_msgs/msg/Image"))
            writer.write(conn, T0 + i * S, raw[:30] if i == 1 else raw)  # the second one cut short
    with open_bags([path]) as reader:
        stream = iter_images(reader, "/img")
        items = list(stream)
    assert [i.stamp_ns for i in items] == [T0, T0 + 2 * S]
    assert stream.skipped == 1 and len(stream.errors) == 1


def test_missing_and_non_image_topics(tmp_path, frames):
    path = write_image_bag(tmp_path / "b", frames[:2], [T0, T0 + S], poses=[Pose((0, 0, 0)), Pose((1, 0, 0))])
    with open_bags([path]) as reader:
        with pytest.raises(BagError) as err:
            image_connections(reader, "/camera/color")
        text = str(err.value)
        assert "'/camera/color'" in text and "image topics present: /camera/image_raw" in text
        assert "/odom (nav_msgs/msg/Odometry" in text
        with pytest.raises(BagError, match="nav_msgs/msg/Odometry"):
            iter_images(reader, "/odom")


# --- pose tracks ------------------------------------------------------------------------------------------------------


def odometry_bag(tmp_path, stamps_s, speed=2.0, yaw_rate=0.5):
    msgs = []
    for k, t in enumerate(stamps_s):
        stamp = T0 + round(t * S)
        cov = np.zeros(36)
        cov[0] = k  # tells the nearest sample apart
        msgs.append((stamp, message("nav_msgs/msg/Odometry", header=header(stamp, "odom"), child_frame_id="base_link",
                                    pose={"pose": {"position": {"x": speed * t, "y": 1.0, "z": 0.0},
                                                   "orientation": yaw_quat(yaw_rate * t)}, "covariance": cov})))
    return write_messages(tmp_path / "odom", "/odom", "nav_msgs/msg/Odometry", msgs, storage="mcap")


def test_odometry_interpolation_and_gaps(tmp_path):
    stamps_s = [round(0.1 * i, 1) for i in range(11)] + [2.0, 2.1, 2.2]  # 10 Hz, a 1 s gap, 10 Hz
    with open_bags([odometry_bag(tmp_path, stamps_s)]) as reader:
        track = load_pose_track(reader, "/odom")
    assert track.source_type == "nav_msgs/msg/Odometry" and track.frame_id == "odom" and len(track) == 14
    assert track.stamps_ns.dtype == np.int64 and track.covariances.shape == (14, 36)
    query = [T0 + round(t * S) for t in (0.45, 0.3, 2.15, -0.1, 1.5, 2.3)]
    mid, exact, late, before, gap, after = track.interpolate(np.array(query))
    assert mid.position == pytest.approx((0.9, 1.0, 0.0), abs=1e-9)  # 2 m/s x 0.45 s
    assert mid.yaw() == pytest.approx(0.225, abs=1e-9)  # 0.5 rad/s x 0.45 s
    assert exact.position == pytest.approx((0.6, 1.0, 0.0)) and exact.yaw() == pytest.approx(0.15)
    assert late.position == pytest.approx((4.3, 1.0, 0.0)) and late.yaw() == pytest.approx(1.075)
    assert before is None and gap is None and after is None
    assert track.interpolate([T0 + round(1.5 * S)], max_gap_s=1.5)[0].position == pytest.approx((3.0, 1.0, 0.0))
    near = track.interpolate([T0 + round(0.44 * S), T0 + round(0.46 * S)])
    assert [p.covariance[0] for p in near] == [4.0, 5.0]
    assert track.overlap(query) == pytest.approx(4 / 6)
    assert check_overlap(track, query, "/odom") == pytest.approx(4 / 6)


def test_pose_stamped_and_pose_with_covariance(tmp_path):
    stamps = [T0, T0 + S // 4]
    stamped = [(t, message("geometry_msgs/msg/PoseStamped", header=header(t, "map"),
                           pose={"position": {"x": float(i), "y": 2.0 * i}, "orientation": yaw_quat(i * math.pi / 2)}))
               for i, t in enumerate(stamps)]
    cov = [(t, message("geometry_msgs/msg/PoseWithCovarianceStamped", header=header(t, "map"),
                       pose={"pose": {"position": {"z": 3.0}, "orientation": yaw_quat(0.0)},
                             "covariance": np.full(36, 0.5)})) for t in stamps]
    path = write_topics(tmp_path / "p", [("/pose", "geometry_msgs/msg/PoseStamped", stamped),
                                          ("/amcl_pose", "geometry_msgs/msg/PoseWithCovarianceStamped", cov)])
    with open_bags([path]) as reader:
        track = load_pose_track(reader, "/pose")
        amcl = load_pose_track(reader, "/amcl_pose")
    assert track.covariances is None and track.frame_id == "map"
    half = track.interpolate([T0 + S // 8])[0]
    assert half.position == pytest.approx((0.5, 1.0, 0.0)) and half.yaw() == pytest.approx(math.pi / 4)
    assert half.covariance is None
    assert amcl.interpolate([T0])[0].covariance == tuple([0.5] * 36)
    assert amcl.positions[:, 2] == pytest.approx([3.0, 3.0])


def test_navsatfix_to_local_east_north_up(tmp_path):
    def fix(t, lat, lon, status=0):
        return (t, message("sensor_msgs/msg/NavSatFix", header=header(t, "gps"), status={"status": status},
                           latitude=lat, longitude=lon, altitude=100.0, position_covariance_type=2,
                           position_covariance=np.diag([4.0, 4.0, 9.0]).reshape(-1)))

    msgs = [fix(T0, 10.0, 20.0, status=-1), fix(T0 + S, 45.0, 7.0), fix(T0 + 2 * S, 45.001, 7.0),
            fix(T0 + 3 * S, 45.0, 7.002)]
    path = write_messages(tmp_path / "gps", "/fix", "sensor_msgs/msg/NavSatFix", msgs)
    with open_bags([path]) as reader:
        track = load_pose_track(reader, "/fix")
    assert len(track) == 3 and track.skipped == 1 and track.frame_id == "enu"  # the NO_FIX one is dropped
    # metres per radian of latitude at 45.0005 deg: meridian radius a (1 - e2) / (1 - e2 sin^2 lat)^1.5
    a, e2 = 6378137.0, 0.00669437999014
    lat = math.radians(45.0005)
    north = a * (1 - e2) / (1 - e2 * math.sin(lat) ** 2) ** 1.5 * math.radians(0.001)
    assert north == pytest.approx(111.13, abs=0.05)
    np.testing.assert_allclose(track.positions[0], 0.0, atol=1e-6)
    east, n, up = track.positions[1]
    assert n == pytest.approx(north, abs=0.5) and abs(east) < 0.03 and abs(up) < 0.05
    # 0.002 deg of longitude at 45 deg: prime vertical radius a / sqrt(1 - e2 sin^2 lat) x cos lat x 0.002 deg
    lat0 = math.radians(45.0)
    east = a / math.sqrt(1 - e2 * math.sin(lat0) ** 2) * math.cos(lat0) * math.radians(0.002)
    assert east == pytest.approx(157.6, abs=0.1)
    assert track.positions[2][0] == pytest.approx(east, abs=0.5) and abs(track.positions[2][1]) < 0.05
    np.testing.assert_allclose(track.orientations, [[0, 0, 0, 1]] * 3)
    cov = np.asarray(track.covariances[1]).reshape(6, 6)
    np.testing.assert_allclose(np.diag(cov)[:3], [4.0, 4.0, 9.0])


def tf_message(stamp: int, parent: str, child: str, xyz, yaw: float):
    return message("tf2_msgs/msg/TFMessage", transforms=[{
        "header": header(stamp, parent), "child_frame_id": child,
        "transform": {"translation": dict(zip("xyz", map(float, xyz))), "rotation": yaw_quat(yaw)},
    }])


def test_tf_chain_composes_static_and_dynamic(tmp_path):
    static = [(T0, tf_message(T0, "map", "odom", (1, 2, 0), math.pi / 2)),
              (T0, tf_message(T0, "base_link", "camera", (0.5, 0, 0), 0.0))]
    dynamic = [(T0 + S, tf_message(T0 + S, "odom", "base_link", (1, 0, 0), 0.0)),
               (T0 + S, tf_message(T0 + S, "odom", "wheel", (9, 9, 9), 1.0)),  # not on the chain
               (T0 + 2 * S, tf_message(T0 + 2 * S, "odom", "base_link", (2, 0, 0), math.pi / 2))]
    path = write_topics(tmp_path / "tf", [("/tf_static", "tf2_msgs/msg/TFMessage", static),
                                          ("/tf", "tf2_msgs/msg/TFMessage", dynamic)])
    with open_bags([path]) as reader:
        track = load_pose_track(reader, "/tf", base_frame="base_link", map_frame="map")
        camera = load_pose_track(reader, "/tf", base_frame="camera", map_frame="map")
        local = load_pose_track(reader, "/tf", base_frame="base_link", map_frame="odom")
        with pytest.raises(BagError) as err:
            load_pose_track(reader, "/tf", base_frame="base_footprint", map_frame="map")
    assert list(track.stamps_ns) == [T0 + S, T0 + 2 * S] and track.frame_id == "map"
    # map <- odom: rotate 90 deg, shift (1, 2); odom <- base_link: (1, 0) then (2, 0) and 0 -> 90 deg yaw
    first, second = track.interpolate(track.stamps_ns)
    assert first.position == pytest.approx((1.0, 3.0, 0.0)) and first.yaw() == pytest.approx(math.pi / 2)
    assert second.position == pytest.approx((1.0, 4.0, 0.0)) and abs(second.yaw()) == pytest.approx(math.pi)
    mid = track.interpolate([T0 + 3 * S // 2], max_gap_s=2.0)[0]
    assert mid.position == pytest.approx((1.0, 3.5, 0.0)) and mid.yaw() == pytest.approx(3 * math.pi / 4)
    # the camera sits 0.5 m ahead of base_link: at 1 s base_link faces +y in the map
    assert camera.interpolate([T0 + S])[0].position == pytest.approx((1.0, 3.5, 0.0))
    assert camera.interpolate([T0 + 2 * S])[0].position == pytest.approx((0.5, 4.0, 0.0))
    assert local.positions[:, 0] == pytest.approx([1.0, 2.0])
    text = str(err.value)
    assert "base_footprint" in text and all(f in text for f in ("map", "odom", "base_link", "camera"))


def test_tf_without_the_static_map_frame(tmp_path):
    dynamic = [(T0, tf_message(T0, "odom", "base_link", (1, 0, 0), 0.0))]
    path = write_messages(tmp_path / "tf", "/tf", "tf2_msgs/msg/TFMessage", dynamic)
    with open_bags([path]) as reader:
        with pytest.raises(BagError, match=r"'map'.*frames: base_link, odom"):
            load_pose_track(reader, "/tf", base_frame="base_link", map_frame="map")
        with pytest.raises(BagError, match="base frame and a map frame"):
            load_pose_track(reader, "/tf")


def test_pose_topic_errors_and_no_overlap(tmp_path, frames):
    stamps = [T0, T0 + S, T0 + 2 * S]
    path = write_image_bag(tmp_path / "b", frames[:3], stamps, poses=[Pose((float(i), 0, 0)) for i in range(3)],
                           ros1=True)
    with open_bags([path]) as reader:
        with pytest.raises(BagError, match=r"no pose topic '/gps'.*/odom \(nav_msgs/msg/Odometry\)"):
            load_pose_track(reader, "/gps")
        with pytest.raises(BagError, match=r"sensor_msgs/msg/Image; supported: nav_msgs/msg/Odometry"):
            load_pose_track(reader, "/camera/image_raw")
        track = load_pose_track(reader, "/odom")  # Odometry from a ROS 1 bag
    assert track.interpolate([T0 + S // 2], max_gap_s=1.0)[0].position == pytest.approx((0.5, 0.0, 0.0))
    assert track.interpolate([T0 + S // 2])[0] is None  # 1 s between poses is a gap at the default 0.5 s
    later = [T0 + 100 * S, T0 + 101 * S]
    with pytest.raises(BagError, match=r"pose topic '/odom' covers none of the 2 image stamps \(poses from "):
        check_overlap(track, later, "/odom")
    assert track.interpolate(later) == [None, None]


def test_pose_track_sorts_and_normalises():
    track = PoseTrack(np.array([3, 1, 2]), np.eye(3), [[0, 0, 0, 2], [0, 0, 0, 0], [0, 0, 0, 1]], None, "m", "x")
    assert list(track.stamps_ns) == [1, 2, 3]
    np.testing.assert_allclose(track.positions, [[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    np.testing.assert_allclose(track.orientations, [[0, 0, 0, 1]] * 3)  # the zero quaternion becomes identity


# --- generic messages -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_write_messages_round_trip(tmp_path, storage):
    texts = [(T0 + i, message("std_msgs/msg/String", data=f"hello {i}")) for i in range(3)]
    path = write_messages(tmp_path / "s", "/chatter", "std_msgs/msg/String", texts, storage=storage)
    candidates = [(T0, message("selavpr_ros/msg/LoopClosureCandidateArray", header=header(T0, "cam"),
                               candidates=[{"match_keyframe_id": 7, "score": 0.5, "map_id": "m"}]))]
    own = write_messages(tmp_path / "c", "/loop_closures", "selavpr_ros/msg/LoopClosureCandidateArray", candidates,
                         storage=storage)
    with open_bags([path]) as reader:
        got = [(t, reader.deserialize(raw, c.msgtype).data) for c, t, raw in reader.messages()]
    assert got == [(T0 + i, f"hello {i}") for i in range(3)]
    with open_bags([own]) as reader:
        (c, t, raw), = list(reader.messages())
        msg = reader.deserialize(raw, c.msgtype)
    assert c.msgtype == "selavpr_ros/msg/LoopClosureCandidateArray" and t == T0
    assert msg.candidates[0].match_keyframe_id == 7 and msg.candidates[0].score == pytest.approx(0.5)
    with pytest.raises(BagError, match="exists"):
        write_messages(path, "/chatter", "std_msgs/msg/String", texts)
    with pytest.raises(BagError, match="unknown message type"):
        write_messages(tmp_path / "u", "/x", "nope_msgs/msg/Nope", [])
    with pytest.raises(BagError, match="4 images for 3 stamps|more images"):
        write_image_bag(tmp_path / "bad", [np.zeros((2, 2, 3), np.uint8)] * 4, [T0, T0 + 1, T0 + 2])
    assert not (tmp_path / "bad").exists()  # a failed write leaves nothing behind

