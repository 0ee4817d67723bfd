"""Faults a live stream can throw at the node core: wild stamps, pixel bombs, huge strings, failing publishers.

Each test feeds the ROS-less pipeline and worker (which the rclpy and the DDS
node share) with real bundled Nordland frames plus the fault.
"""

from __future__ import annotations

import functools
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import demo_images
from PIL import Image

from selavpr_ros.errors import ImageError, StampError
from selavpr_ros.node.params import validate
from selavpr_ros.node.pipeline import Frame, StampGuard, VPRPipeline
from selavpr_ros.node.worker import LatestFrameWorker, clip, diagnostic_status
from selavpr_ros.transport.image_decoding import decode_any, encode_image
from selavpr_ros.transport.msgtypes import message

ROOT = Path(__file__).resolve().parents[1]
S = 10**9


def image_msg(rgb: np.ndarray, stamp: int, **overrides):
    fields = {**encode_image(rgb, "rgb8"), **overrides}
    return message("sensor_msgs/msg/Image", header={"stamp": {"sec": stamp // S, "nanosec": stamp % S},
                                                    "frame_id": "cam"}, **fields)


@functools.lru_cache(maxsize=4)
def png_bomb(side: int) -> bytes:
    """A legal, highly compressible PNG of side x side black pixels (about 140 KB at 12000)."""
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def params(tmp_path, **kw):
    values = {"map_path": str(tmp_path / "map"), "device": "cpu", "loop_closure.consistency.n": 1,
              "loop_closure.keyframe.min_interval_s": 0.5, "loop_closure.exclusion.recent_s": 5.0}
    values.update(kw)
    return validate(values)


def wait_idle(worker: LatestFrameWorker, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not worker.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)


def test_one_frame_from_the_far_future_does_not_silence_the_node(tmp_path):
    pipe = VPRPipeline(params(tmp_path))
    imgs = demo_images("summer", 0, 12)
    for i in range(4):
        assert pipe.process(Frame(image_msg(imgs[i], i * S), i * S, "cam")).result.is_keyframe
    wild = (2**31 - 1) * S
    with pytest.raises(StampError, match="max_stamp_jump_s"):
        pipe.process(Frame(image_msg(imgs[4], wild), wild, "cam"))
    for i in range(5, 12):  # the stream goes on at its own time: every frame is still a keyframe
        out = pipe.process(Frame(image_msg(imgs[i], i * S), i * S, "cam"))
        assert out.result.is_keyframe, out.result.skipped_reason
    assert pipe.db.count == 11 and int(pipe.db.rows["stamp_ns"].max()) == 11 * S
    pipe.close()


def test_a_clock_reset_is_followed_once_confirmed():
    guard = StampGuard(max_jump_ns=600 * S, confirm=5)
    assert [guard.check(t * S, received=t - 995.0) for t in (1000, 1001, 1002)] == ["ok"] * 3
    assert guard.check(5 * S, received=8.0) == "jump"  # a simulator restarted at t = 5 s ...
    assert [guard.check(t * S, received=t + 3.0) for t in (6, 7, 8)] == ["jump"] * 3
    assert guard.check(9 * S, received=12.0) == "reset"  # ... and five frames agree: follow the new clock
    assert guard.check(10 * S, received=13.0) == "ok" and guard.resets == 1 and guard.held_back == 4
    assert StampGuard(0).check(2**62) == "ok"  # 0 disables the check


def test_a_long_pause_of_the_camera_is_not_a_jump():
    guard = StampGuard(max_jump_ns=600 * S)
    assert guard.check(100 * S, received=0.0) == "ok"
    assert guard.check(7300 * S, received=7200.0) == "ok"  # two hours later, by both clocks
    assert guard.check(7300 * S + 10**20, received=7201.0) == "jump"


def test_worker_counts_stamp_jumps_in_diagnostics(tmp_path):
    pipe = VPRPipeline(params(tmp_path))
    worker = LatestFrameWorker(pipe, lambda o: None)
    imgs = demo_images("summer", 20, 3)
    for i, t in enumerate((0, 1, (2**31 - 1))):
        worker.submit(Frame(image_msg(imgs[i], t * S), t * S, "cam"))
        wait_idle(worker)
    snap = worker.snapshot()
    worker.stop()
    assert snap["stamp_jumps"] == 1 and snap["bad_frames"] == 1 and snap["processed"] == 2
    status = diagnostic_status(snap, pipe.db.count, "mapping")
    assert status["level"] == 1 and "max_stamp_jump_s" in status["message"]
    pipe.close()


def test_pixel_budget_refuses_a_png_bomb_before_decoding():
    data = png_bomb(12000)
    assert len(data) < 400_000  # small on the wire ...
    msg = message("sensor_msgs/msg/CompressedImage", format="png", data=np.frombuffer(data, np.uint8))
    with pytest.raises(ImageError, match="12000x12000 = 144,000,000 pixels exceeds the budget of 25,000,000"):
        decode_any(msg, max_pixels=25_000_000)
    raw = message("sensor_msgs/msg/Image", height=12000, width=12000, encoding="mono8", step=12000,
                  data=np.zeros(16, np.uint8))  # a header that claims 144 M pixels
    with pytest.raises(ImageError, match="exceeds the budget"):
        decode_any(raw, max_pixels=25_000_000)


def test_png_bomb_keeps_rss_bounded():
    """The node's decode path in a fresh process: refusing the bomb costs almost no memory."""
    code = f"""
import json, resource, sys, numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_hostile_streams import png_bomb
from selavpr_ros.transport.image_decoding import decode_any
from selavpr_ros.transport.msgtypes import message
from selavpr_ros.errors import ImageError
msg = message("sensor_msgs/msg/CompressedImage", format="png", data=np.frombuffer(png_bomb(12000), np.uint8))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(20):
    try:
        decode_any(msg, max_pixels=25_000_000)
    except ImageError:
        pass
print(json.dumps({{"grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    grew_mib = json.loads(out.stdout.strip().splitlines()[-1])["grew_kib"] / 1024
    assert grew_mib < 100, f"refusing a 12000 x 12000 PNG grew RSS by {grew_mib:.0f} MiB"


def test_decompression_bomb_error_is_a_bad_frame(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses > 2x this as a bomb
    msg = message("sensor_msgs/msg/CompressedImage", format="png", data=np.frombuffer(png_bomb(100), np.uint8))
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_any(msg)


def test_attacker_sized_strings_are_not_echoed():
    huge = "x" * (1 << 20)
    raw = message("sensor_msgs/msg/Image", height=2, width=2, encoding=huge, step=6, data=np.zeros(12, np.uint8))
    with pytest.raises(ImageError) as err:
        decode_any(raw)
    assert len(str(err.value)) < 1000 and f"({1 << 20} characters)" in str(err.value)
    comp = message("sensor_msgs/msg/CompressedImage", format=huge, data=np.frombuffer(b"\xff\xd8junk", np.uint8))
    with pytest.raises(ImageError) as err:
        decode_any(comp)
    assert len(str(err.value)) < 1000
    assert len(clip(huge)) < 300


def test_huge_encoding_through_the_worker_stays_small_in_diagnostics(tmp_path):
    pipe = VPRPipeline(params(tmp_path))
    worker = LatestFrameWorker(pipe, lambda o: None)
    rgb = demo_images("summer", 0, 1)[0]
    worker.submit(Frame(image_msg(rgb, S, encoding="e" * (1 << 20)), S, "cam"))
    wait_idle(worker)
    worker.stop()
    status = diagnostic_status(worker.snapshot(), pipe.db.count, "mapping")
    assert len(status["message"]) < 600 and sum(len(v["value"]) for v in status["values"]) < 2000
    pipe.close()


def test_a_failing_publisher_does_not_kill_the_worker(tmp_path):
    pipe = VPRPipeline(params(tmp_path, **{"loop_closure.keyframe.min_interval_s": 0.0}))
    calls = []

    def publish(outcome):
        calls.append(outcome)
        if len(calls) <= 2:
            raise RuntimeError("publisher's context is invalid")  # what rclpy raises after shutdown

    worker = LatestFrameWorker(pipe, publish)
    for i, rgb in enumerate(demo_images("summer", 40, 5)):
        worker.submit(Frame(image_msg(rgb, i * S), i * S, "cam"))
        wait_idle(worker)
    snap = worker.snapshot()
    worker.stop()
    assert snap["worker_alive"] and snap["processed"] == 5 and snap["publish_errors"] == 2 and len(calls) == 5
    status = diagnostic_status(snap, pipe.db.count, "mapping")
    assert status["level"] == 1 and "failed publish" in status["message"]
    dead = diagnostic_status({**snap, "worker_alive": False}, pipe.db.count, "mapping")
    assert dead["level"] == 2 and "worker thread has stopped" in dead["message"]
    pipe.close()


def test_snapshot_is_safe_while_the_worker_updates_statistics(tmp_path):
    """Diagnostics read the statistics from another thread while every frame adds stage timings."""
    pipe = VPRPipeline(params(tmp_path, **{"loop_closure.keyframe.min_interval_s": 0.0}))
    worker = LatestFrameWorker(pipe, lambda o: None)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                diagnostic_status(worker.snapshot(), 0, "mapping")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    for i, rgb in enumerate(demo_images("winter", 0, 30)):
        worker.submit(Frame(image_msg(rgb, i * S), i * S, "cam"))
        worker.count_bad(ValueError("unreadable message"))
        time.sleep(0.01)
    wait_idle(worker)
    stop.set()
    reader.join()
    worker.stop()
    assert errors == [] and worker.snapshot()["processed"] >= 1
    pipe.close()


def test_failed_mode_switch_changes_nothing(tmp_path, monkeypatch):
    pipe = VPRPipeline(params(tmp_path))
    imgs = demo_images("summer", 60, 4)
    for i in range(2):
        pipe.process(Frame(image_msg(imgs[i], i * S), i * S, "cam"))
    engine, before = pipe.engine, dict(pipe.params)
    from selavpr_ros.errors import MapError
    from selavpr_ros.mapdb.database import MapDatabase

    real_open = MapDatabase.open

    def refuse_read_only(path, mode="r"):
        if mode == "r":
            raise MapError(f"{path}: cannot open read-only (injected)")
        return real_open(path, mode)

    monkeypatch.setattr(MapDatabase, "open", staticmethod(refuse_read_only))
    with pytest.raises(MapError, match="injected"):
        pipe.update_params({"mode": "localization", "loop_closure.min_score": 0.9})
    assert pipe.params == before and pipe.params["loop_closure.min_score"] == 0.5
    assert pipe.db.writable and pipe.engine.config.min_score == 0.5
    assert pipe.engine is not engine or pipe.engine.db is pipe.db
    out = pipe.process(Frame(image_msg(imgs[3], 3 * S), 3 * S, "cam"))  # still mapping, still adding
    assert out.result.keyframe_id == 2 and pipe.db.count == 3
    pipe.close()


def test_save_map_copy_is_consistent_while_frames_arrive(tmp_path):
    from selavpr_ros.mapdb.database import MapDatabase
    from selavpr_ros.mapdb.maintenance import check_map

    pipe = VPRPipeline(params(tmp_path, **{"loop_closure.keyframe.min_interval_s": 0.0}))
    worker = LatestFrameWorker(pipe, lambda o: None)
    imgs = demo_images("summer", 100, 40)
    copies = []
    for i, rgb in enumerate(imgs):
        worker.submit(Frame(image_msg(rgb, i * S), i * S, "cam"))
        if i % 10 == 9:
            copies.append(tmp_path / "map.snapshots" / f"copy{i}")
            assert "copied" in pipe.save_map(copies[-1].name)
        time.sleep(0.02)
    wait_idle(worker)
    worker.stop()
    counts = []
    for copy in copies:
        report = check_map(copy)
        assert report.ok, report
        with MapDatabase.open(copy) as db:
            counts.append(db.count)
            assert db.records(list(range(db.count)))[-1].keyframe_id == db.count - 1
    assert counts == sorted(counts) and counts[-1] <= pipe.db.count
    pipe.close()


def test_megabyte_frame_ids_never_reach_the_map(tmp_path):
    """A peer's 2 MB frame_id is a bad frame: the map and the published candidates stay small."""
    pipe = VPRPipeline(params(tmp_path, **{"loop_closure.keyframe.min_interval_s": 0.0}))
    worker = LatestFrameWorker(pipe, lambda o: None)
    rgb = demo_images("summer", 0, 1)[0]
    huge = "f" * (2 << 20)
    for i in range(8):
        worker.submit(Frame(image_msg(rgb, i * S), i * S, huge))
        wait_idle(worker, 10)
    worker.submit(Frame(image_msg(rgb, 9 * S), 9 * S, "cam"))
    wait_idle(worker)
    snap = worker.snapshot()
    worker.stop()
    assert snap["bad_frames"] == 8 and snap["processed"] == 1 and "frame_id of 2097152 characters" in snap["last_error"]
    size = sum(f.stat().st_size for f in (tmp_path / "map").iterdir())
    assert size < 1_000_000 and pipe.db.count == 1
    long_format = message("sensor_msgs/msg/CompressedImage", format="jpeg" + " " * 300,
                          data=np.frombuffer(b"\xff\xd8", np.uint8))
    with pytest.raises(ImageError, match="format of 304 characters exceeds the limit of 256"):
        decode_any(long_format)
    pipe.close()
