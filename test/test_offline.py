"""The offline tools on real bags: build-map with poses (resumable), replay, and their command lines."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from selavpr_ros.bags.reader import open_bags
from selavpr_ros.bags.writer import write_image_bag, write_topics
from selavpr_ros.errors import BagError
from selavpr_ros.transport.msgtypes import message
from selavpr_ros.types import Pose

T0 = 1_700_000_000 * 10**9


def _frames(nordland, season: str = "summer", start: int = 0, n: int = 8) -> list[np.ndarray]:
    names = sorted((nordland / season).iterdir())[start : start + n]
    return [np.asarray(Image.open(p).convert("RGB")) for p in names]


def test_build_map_with_poses_resumes_and_replays(tmp_path, nordland):
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.loop_closure.config import KeyframeGateConfig
    from selavpr_ros.mapdb.database import MapDatabase
    from selavpr_ros.models.zoo import builtin_checkpoint
    from selavpr_ros.offline.build_map import build_map
    from selavpr_ros.transport.image_decoding import encode_image

    imgs = _frames(nordland, "summer", 100, 30)
    stamps = [T0 + i * 10**8 for i in range(30)]
    poses = [Pose((1.5 * i, 0.0, 0.0)) for i in range(30)]
    bag = write_image_bag(tmp_path / "summer", imgs, stamps, poses=poses)
    ex = open_extractor(builtin_checkpoint(), device="cpu")
    gate = KeyframeGateConfig(min_interval_s=0.0, min_translation_m=2.9)
    # a first build that stops early (simulated by a bag holding only the first 12 frames, same session)
    first = write_image_bag(tmp_path / "first", imgs[:12], stamps[:12], poses=poses[:12])
    r0 = build_map([first], "/camera/image_raw", tmp_path / "map", ex, pose_topic="/odom", sessions=["run1"],
                   gate=gate, progress=False)[0]
    assert r0.added == 6  # every second frame: 1.5 m apart, keyframes need 2.9 m
    r1 = build_map([bag], "/camera/image_raw", tmp_path / "map", ex, pose_topic="/odom", sessions=["run1"],
                   gate=gate, save_images=True, progress=False)[0]
    assert r1.already_in_map == 11 and r1.added == 9 and r1.without_pose == 0
    with MapDatabase.open(tmp_path / "map") as db:
        assert db.count == 15 and db.sessions() == {"run1": 15}
        recs = list(db.iterate())
        assert [r.pose.position[0] for r in recs] == pytest.approx([3.0 * i for i in range(15)])
        assert recs[-1].image_ref.startswith("images/run1/") and (tmp_path / "map" / recs[-1].image_ref).is_file()
    # a pose topic that does not overlap the images
    late = [(T0 + 10**12 + i, message("nav_msgs/msg/Odometry", header={"stamp": {"sec": (T0 + 10**12) // 10**9}}))
            for i in range(2)]
    frames = [(t, message("sensor_msgs/msg/Image", header={"stamp": {"sec": t // 10**9}}, **encode_image(im)))
              for t, im in zip(stamps[:3], imgs[:3])]
    bad = write_topics(tmp_path / "late", [("/camera/image_raw", "sensor_msgs/msg/Image", frames),
                                           ("/odom", "nav_msgs/msg/Odometry", late)])
    with pytest.raises(BagError, match="does not overlap the images"):
        build_map([bad], "/camera/image_raw", tmp_path / "map2", ex, pose_topic="/odom", progress=False)
    with pytest.raises(BagError, match="no pose topic '/gps'"):
        build_map([bad], "/camera/image_raw", tmp_path / "map2", ex, pose_topic="/gps", progress=False)
    with pytest.raises(BagError, match="/camera/missing"):  # a later bag without the topic, checked before any work
        build_map([bag, bad], "/camera/missing", tmp_path / "map2", ex, progress=False)
    assert not (tmp_path / "map2").exists()  # no failed run leaves an empty map tied to the model behind
    with pytest.raises(BagError, match="no pose topic '/gps'"):  # an existing map is left exactly as it was
        build_map([bag, bad], "/camera/image_raw", tmp_path / "map", ex, pose_topic="/gps", progress=False)
    with MapDatabase.open(tmp_path / "map") as db:
        assert db.count == 15 and db.sessions() == {"run1": 15}


@pytest.mark.parametrize("max_similarity", [1.0, 0.95])
def test_batched_build_map_equals_one_image_per_call(tmp_path, nordland, max_similarity):
    """Same keyframes, same codes, floats equal to rounding, with a corrupt frame in the middle; with the
    appearance gate on (max_similarity < 1) frames are described one at a time and the result is the same."""
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.loop_closure.config import KeyframeGateConfig
    from selavpr_ros.mapdb.database import MapDatabase
    from selavpr_ros.models.zoo import builtin_checkpoint
    from selavpr_ros.offline.build_map import build_map
    from selavpr_ros.transport.image_decoding import encode_image

    imgs = _frames(nordland, "winter", 0, 21)
    stamps = [T0 + i * 10**8 for i in range(21)]
    frames = [(t, message("sensor_msgs/msg/Image", header={"stamp": {"sec": t // 10**9, "nanosec": t % 10**9}},
                          **encode_image(im))) for t, im in zip(stamps, imgs)]
    frames[10][1].data = frames[10][1].data[:10]  # truncated pixels: a bad frame, counted and skipped
    bag = write_topics(tmp_path / "bag", [("/camera/image_raw", "sensor_msgs/msg/Image", frames)])
    ex = open_extractor(builtin_checkpoint(), device="cpu")
    gate = KeyframeGateConfig(min_interval_s=0.15, max_similarity=max_similarity)
    maps = {}
    for batch in (1, 4, 32):
        report = build_map([bag], "/camera/image_raw", tmp_path / f"map{batch}", ex, gate=gate, batch_size=batch,
                           commit_every=5, progress=False)[0]
        assert report.bad_frames == 1 and "unreadable" not in report.camera_problem  # no CameraInfo topic at all
        with MapDatabase.open(tmp_path / f"map{batch}") as db:
            maps[batch] = ([r.stamp_ns for r in db.iterate()], np.array(db.codes), np.array(db.float_descriptors))
    stamps1, codes1, floats1 = maps[1]
    assert 5 <= len(stamps1) <= 10  # min_interval 0.15 s on 10 Hz frames keeps every second one at most
    for batch in (4, 32):
        assert maps[batch][0] == stamps1
        assert np.mean(np.unpackbits(maps[batch][1] ^ codes1)) < 1e-3  # a sign at rounding level may flip
        np.testing.assert_allclose(maps[batch][2], floats1, atol=2e-3)  # float16 storage


def test_batched_replay_equals_one_frame_per_call(tmp_path, nordland):
    """Mapping mode over a bag with a corrupt frame: batches of 1, 5 and 30 give the same keyframes,
    candidates and statuses (the engine still judges frame by frame), the bad frame counted once."""
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.models.zoo import builtin_checkpoint
    from selavpr_ros.node.params import validate
    from selavpr_ros.node.pipeline import VPRPipeline
    from selavpr_ros.offline.replay import replay
    from selavpr_ros.transport.image_decoding import encode_image

    imgs = _frames(nordland, "summer", 0, 40) + _frames(nordland, "winter", 0, 40)
    stamps = [T0 + i * 10**9 for i in range(80)]
    frames = [(t, message("sensor_msgs/msg/Image", header={"stamp": {"sec": t // 10**9}}, **encode_image(im)))
              for t, im in zip(stamps, imgs)]
    frames[45][1].encoding = "yuv9000"  # an unknown encoding: refused, counted, the replay goes on
    bag = write_topics(tmp_path / "bag", [("/camera/image_raw", "sensor_msgs/msg/Image", frames)])
    ex = open_extractor(builtin_checkpoint(), device="cpu")
    runs = {}
    for batch in (1, 5, 30):
        pipeline = VPRPipeline(validate({"map_path": str(tmp_path / f"map{batch}"), "mode": "mapping",
                                         "device": "cpu", "loop_closure.keyframe.min_interval_s": 0.0,
                                         "loop_closure.exclusion.recent_s": 20.0}), extractor=ex)
        try:
            result = replay(bag, "/camera/image_raw", pipeline, progress=False, batch_size=batch)
        finally:
            pipeline.close()
        assert result.bad_frames == 1 and "yuv9000" in result.errors[0]
        runs[batch] = [(o.result.keyframe_id, [(c.match_keyframe_id, c.status) for c in o.result.candidates])
                       for o in result.outcomes]
    assert len(runs[1]) == 79 and any(any(s == 0 for _, s in cands) for _, cands in runs[1])  # some accepted
    assert runs[5] == runs[1] and runs[30] == runs[1]
    with pytest.raises(ValueError, match="batch_size must be in"):
        replay(bag, "/camera/image_raw", pipeline, progress=False, batch_size=0)


def test_cli_build_map_and_replay(tmp_path, nordland):
    import json
    import subprocess
    import sys

    summer = write_image_bag(tmp_path / "summer", _frames(nordland, "summer", 100, 20),
                             [T0 + i * 10**9 for i in range(20)])
    winter = write_image_bag(tmp_path / "winter", _frames(nordland, "winter", 100, 20),
                             [T0 + 10**12 + i * 10**9 for i in range(20)], storage="mcap", compressed=True)
    run = [sys.executable, "-m", "selavpr_ros"]
    p = subprocess.run([*run, "build-map", str(summer), "--image-topic", "/camera/image_raw", "--out",
                        str(tmp_path / "map"), "--quiet", "--device", "cpu"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "summer: 20 images, 20 keyframes added" in p.stdout
    p = subprocess.run([*run, "replay", str(winter), "--map", str(tmp_path / "map"), "--image-topic",
                        "/camera/image_raw", "--out", str(tmp_path / "out"), "--quiet", "--device", "cpu",
                        "-p", "loop_closure.consistency.n:=1"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["queries"] == 20
    rows = (tmp_path / "out" / "candidates.csv").read_text().splitlines()
    assert len(rows) == 1 + 20 * 3
    with open_bags([tmp_path / "out" / "candidates_bag"]) as reader:
        conns = [c for c in reader.connections if c.topic == "/loop_closures"]
        msgs = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(connections=conns)]
    assert len(msgs) == 20 and msgs[0].candidates[0].rank == 1
    # errors: a bag without the topic, a missing map
    p = subprocess.run([*run, "build-map", str(summer), "--image-topic", "/cam", "--out", str(tmp_path / "m2"),
                        "--quiet"], capture_output=True, text=True)
    assert p.returncode != 0 and "no topic '/cam'" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([*run, "replay", str(winter), "--map", str(tmp_path / "nomap"), "--image-topic",
                        "/camera/image_raw", "--quiet"], capture_output=True, text=True)
    assert p.returncode != 0 and "map not found" in p.stderr and "Traceback" not in p.stderr


def test_replay_streams_a_long_bag_in_bounded_memory(tmp_path):
    """600 frames of 160 x 120: the replay keeps neither the messages nor the outcomes, and writes its
    outputs as it goes (RSS after 600 frames within a few MB of RSS after 100; kept, the raw images of
    those 500 frames alone would add 29 MB)."""
    import json
    import os

    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.mapdb.database import MapDatabase
    from selavpr_ros.models.zoo import builtin_checkpoint
    from selavpr_ros.node.params import validate
    from selavpr_ros.node.pipeline import VPRPipeline
    from selavpr_ros.offline.replay import ReplayWriter, replay
    from selavpr_ros.transport.image_decoding import encode_image

    n, rng = 600, np.random.default_rng(0)
    base = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)

    def frames():
        for i in range(n):
            t = T0 + i * 10**8
            yield t, message("sensor_msgs/msg/Image", header={"stamp": {"sec": t // 10**9, "nanosec": t % 10**9},
                                                              "frame_id": "cam"}, **encode_image(np.roll(base, i, 1)))

    bag = write_topics(tmp_path / "long", [("/camera/image_raw", "sensor_msgs/msg/Image", frames())])
    extractor = open_extractor(builtin_checkpoint(), device="cpu")
    MapDatabase.create(tmp_path / "map", extractor.layout, extractor.model_id, extractor.model_config).close()
    pipeline = VPRPipeline(validate({"map_path": str(tmp_path / "map"), "mode": "localization", "device": "cpu",
                                     "loop_closure.keyframe.min_interval_s": 0.0}), extractor=extractor)
    rss: dict[int, int] = {}

    def measure(outcome, bag_time):
        index = int((bag_time - T0) // 10**8)
        if index in (100, n - 1):
            with open(f"/proc/{os.getpid()}/statm") as f:
                rss[index] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    try:
        with ReplayWriter(pipeline, tmp_path / "out" / "c.json", None, tmp_path / "out" / "bag") as writer:
            result = replay(bag, "/camera/image_raw", pipeline, progress=False, camera_info=None,
                            sinks=[writer, measure], keep_outcomes=False)
    finally:
        pipeline.close()
    assert result.frames == result.keyframes == n and result.outcomes == [] and result.bad_frames == 0
    assert set(rss) == {100, n - 1} and rss[n - 1] - rss[100] < 12 * 2**20, rss
    assert len(json.loads((tmp_path / "out" / "c.json").read_text())) == n  # streamed, still one JSON array
    assert set(result.stage_ms()) >= {"decode", "describe", "total"}
