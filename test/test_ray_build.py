"""Map building spread over workers: chunks of bags described apart and committed in order equal the
serial build row by row; on a real two-node Ray cluster (private network namespace), with a node
killed mid-job, a failing bag and an address where nothing answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selavpr_ros.bags.writer import write_image_bag, write_topics
from selavpr_ros.loop_closure.config import KeyframeGateConfig
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.transport.image_decoding import encode_image
from selavpr_ros.transport.msgtypes import message
from selavpr_ros.types import CameraModel, Pose

T0 = 1_700_000_000 * 10**9
HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "_ray_build_scenario.py"


def frames(nordland, season: str, start: int, n: int) -> list[np.ndarray]:
    names = sorted((nordland / season).iterdir())[start : start + n]
    return [np.asarray(Image.open(p).convert("RGB")) for p in names]


def make_bags(folder: Path, nordland) -> list[Path]:
    """Two posed bags with CameraInfo; the second has a corrupt frame and a pose gap."""
    camera = CameraModel(64, 32, (55.4, 55.4, 32.0, 16.0))
    a = write_image_bag(folder / "a", frames(nordland, "summer", 0, 37), [T0 + i * 10**8 for i in range(37)],
                        poses=[Pose((0.7 * i, 0.0, 0.0)) for i in range(37)], camera=camera)
    imgs = frames(nordland, "winter", 40, 29)
    stamps = [T0 + 10**11 + i * 10**8 for i in range(29)]
    msgs = [(t, message("sensor_msgs/msg/Image", header={"stamp": {"sec": t // 10**9, "nanosec": t % 10**9}},
                        **encode_image(im))) for t, im in zip(stamps, imgs)]
    msgs[10][1].data = msgs[10][1].data[:10]  # unreadable pixels: a bad frame the gate must step over alike
    odom = [(t, message("nav_msgs/msg/Odometry", header={"stamp": {"sec": t // 10**9, "nanosec": t % 10**9}},
                        pose={"pose": {"position": {"x": 0.5 * i}, "orientation": {"w": 1.0}}}))
            for i, t in enumerate(stamps)]
    b = write_topics(folder / "b", [("/camera/image_raw", "sensor_msgs/msg/Image", msgs),
                                    ("/odom", "nav_msgs/msg/Odometry", odom)])
    return [a, b]


def map_rows(path: Path) -> dict:
    with MapDatabase.open(path) as db:
        recs = list(db.iterate())
        kps = db.keypoints([r.keyframe_id for r in recs])
        return {"stamps": [(r.session, r.stamp_ns) for r in recs], "codes": np.array(db.codes),
                "floats": np.array(db.float_descriptors), "poses": [r.pose for r in recs],
                "cameras": [r.camera for r in recs], "sessions": db.sessions(),
                "keypoints": [kps[r.keyframe_id].xy.tobytes() if r.keyframe_id in kps else b"" for r in recs]}


def assert_same_map(a: dict, b: dict) -> None:
    assert a["stamps"] == b["stamps"] and a["sessions"] == b["sessions"]
    np.testing.assert_array_equal(a["codes"], b["codes"])
    np.testing.assert_array_equal(a["floats"], b["floats"])  # bit-identical: the same batches were described
    assert a["poses"] == b["poses"] and a["cameras"] == b["cameras"] and a["keypoints"] == b["keypoints"]


GATE = KeyframeGateConfig(min_interval_s=0.0, min_translation_m=1.0)


def test_chunks_described_apart_equal_the_serial_build(tmp_path, nordland):
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.models.zoo import builtin_checkpoint
    from selavpr_ros.node.pipeline import open_map
    from selavpr_ros.offline.build_map import _MapSink, build_map
    from selavpr_ros.offline.ray_executor import ChunkJob, describe_chunk, plan_chunks

    bags = make_bags(tmp_path, nordland)
    ex = open_extractor(builtin_checkpoint(), device="cpu")
    kw = dict(pose_topic="/odom", gate=GATE, batch_size=3, commit_every=4, chunk_images=7, progress=False)
    serial = build_map(bags, "/camera/image_raw", tmp_path / "serial", ex, **kw)
    assert serial[1].bad_frames == 1 and serial[0].added > 10

    db = open_map(tmp_path / "chunked", ex, "mapping", None)
    for bag, name in zip(bags, ["a", "b"]):
        windows = plan_chunks(37 if name == "a" else 29, 7, splittable=True)
        assert len(windows) == (6 if name == "a" else 5) and windows[0] == (0, 7) and windows[-1][1] is None
        results = [describe_chunk(ex, ChunkJob(str(bag), name, i, w, "/camera/image_raw", "/odom", None, None, GATE,
                                               0.5, 4, "", "auto", None, 3, 7, None))
                   for i, w in reversed(list(enumerate(windows)))]  # described in any order
        for result in reversed(results):  # committed in chunk order
            for desc, records, kps in result.groups:
                _MapSink(db, name)(desc, records, kps)
        assert sum(r.report.bad_frames for r in results) == (1 if name == "b" else 0)
        assert sum(r.report.messages for r in results) == (37 if name == "a" else 29)
    db.close()
    assert_same_map(map_rows(tmp_path / "serial"), map_rows(tmp_path / "chunked"))

    # A job killed after bag a's third chunk was committed: the rerun's chunks resume after the newest keyframe.
    with MapDatabase.open(tmp_path / "serial") as full:
        cut = [r for r in full.iterate() if r.session == "a"][6]  # a keyframe inside chunk 2 (messages 14-20)
    windows = plan_chunks(37, 7, splittable=True)
    db = open_map(tmp_path / "resumed", ex, "mapping", None)
    first = [describe_chunk(ex, ChunkJob(str(bags[0]), "a", i, w, "/camera/image_raw", "/odom", None, None, GATE,
                                         0.5, 4, "", "auto", None, 3, 7, None)) for i, w in enumerate(windows)]
    for result in first:
        for desc, records, kps in result.groups:
            keep = [j for j, r in enumerate(records) if r.stamp_ns <= cut.stamp_ns]
            if keep:  # the commits that happened before the kill (a group is atomic: cut inside one only here)
                _MapSink(db, "a")(desc[np.asarray(keep)], [records[j] for j in keep], [kps[j] for j in keep])
    newest = db.newest_keyframe("a")
    assert newest is not None and newest[0].stamp_ns == cut.stamp_ns
    rerun = [describe_chunk(ex, ChunkJob(str(bags[0]), "a", i, w, "/camera/image_raw", "/odom", None, None, GATE,
                                         0.5, 4, "", "auto", None, 3, 7, newest)) for i, w in enumerate(windows)]
    assert sum(r.report.already_in_map for r in rerun) > 0 and not rerun[0].groups and not rerun[1].groups
    for result in rerun:
        for desc, records, kps in result.groups:
            _MapSink(db, "a")(desc, records, kps)
    db.close()
    resumed, serial_a = map_rows(tmp_path / "resumed"), map_rows(tmp_path / "serial")
    n_a = serial_a["sessions"]["a"]
    assert resumed["stamps"] == serial_a["stamps"][:n_a]  # the same keyframes, none twice
    np.testing.assert_array_equal(resumed["codes"], serial_a["codes"][:n_a])
    assert any(map_rows(tmp_path / "serial")["keypoints"])  # bag a's CameraInfo: ORB keypoints stored


@pytest.fixture
def ray_ready():
    from ray_cluster import private_net_reason

    reason = private_net_reason()
    if reason:
        pytest.skip(reason)


def test_two_node_cluster_build_equals_serial_with_a_node_killed_and_a_failing_bag(tmp_path, nordland, ray_ready):
    from ray_cluster import run_isolated

    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.models.zoo import builtin_checkpoint
    from selavpr_ros.offline.build_map import build_map

    bags = make_bags(tmp_path, nordland)
    ex = open_extractor(builtin_checkpoint(), device="cpu")
    build_map(bags, "/camera/image_raw", tmp_path / "serial", ex, pose_topic="/odom", gate=GATE, batch_size=3,
              commit_every=4, chunk_images=7, progress=False)
    broken = write_image_bag(tmp_path / "vanishing", frames(nordland, "summer", 0, 20),
                             [T0 + i * 10**8 for i in range(20)], poses=[Pose((0.7 * i, 0.0, 0.0)) for i in range(20)])
    report = run_isolated(SCENARIO, "--bags", *map(str, bags), "--out", tmp_path / "ray", "--kill-after", 2,
                          "--failing", bags[0], broken, bags[1], "--failing-out", tmp_path / "partial", timeout=300)
    assert report["failed"] == {} and report["killed"] and report["nodes_used"] == 2, report
    assert report["chunks"] == 11, report  # every chunk committed once, those lost with the node retried
    assert_same_map(map_rows(tmp_path / "serial"), map_rows(tmp_path / "ray"))  # row by row, bit for bit
    second = report["second"]
    assert list(second["failed"]) == [str(broken)], second
    assert "chunk 0: BagError" in second["failed"][str(broken)] and "bag not found" in second["failed"][str(broken)]
    with MapDatabase.open(tmp_path / "partial") as db:  # the other bags' work is committed
        assert db.sessions() == {"a": second["added"][0], "b": second["added"][2]} and db.count > 20


def test_an_address_where_no_cluster_answers_is_one_line_and_writes_nothing(tmp_path, nordland, capsys):
    from selavpr_ros.cli import main

    bags = make_bags(tmp_path, nordland)
    code = main(["build-map", str(bags[0]), "--image-topic", "/camera/image_raw", "--out", str(tmp_path / "m"),
                 "--executor", "ray", "--address", "127.0.0.1:1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "no Ray cluster answers at 127.0.0.1:1" in err[0], err
    assert not (tmp_path / "m").exists()


def test_eval_on_a_two_node_cluster_equals_the_serial_eval(tmp_path, nordland, ray_ready):
    from ray_cluster import run_isolated

    report = run_isolated(HERE / "_ray_eval_scenario.py", nordland, tmp_path, timeout=300)
    serial, on_ray = report["serial"], report["ray"]
    assert serial["code"] == on_ray["code"] == 0 and report["nodes"] == 2
    assert serial["recall"] == on_ray["recall"] and serial["pr"] == on_ray["pr"]  # the same descriptors
    assert serial["recall"]["+ float re-rank"]["1"] > 20, serial


def test_an_address_where_something_else_answers_fails_in_seconds(tmp_path, nordland, ray_ready):
    from ray_cluster import run_isolated

    bags = make_bags(tmp_path, nordland)
    report = run_isolated(HERE / "_ray_bad_address.py", bags[0], tmp_path / "m", timeout=180)
    assert report["code"] != 0 and not report["exists"], report
    # within run_isolated's 180 s, not Ray's default quarter of an hour of retries
    assert len(report["lines"]) == 1 and "cannot use the Ray cluster at 127.0.0.1:" in report["lines"][0], report
