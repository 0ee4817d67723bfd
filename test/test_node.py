"""The node core without ROS: parameters, the newest-frame worker, services, bad frames, restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selavpr_ros.errors import ConfigError, MapError
from selavpr_ros.node.params import PARAMS, load_params_file, loop_closure_config, params_yaml, validate
from selavpr_ros.node.pipeline import Frame, VPRPipeline, candidate_array_fields
from selavpr_ros.node.worker import LatestFrameWorker, diagnostic_status
from selavpr_ros.transport.image_decoding import encode_image
from selavpr_ros.transport.msgtypes import message

ROOT = Path(__file__).resolve().parents[1]


def image_msg(rgb: np.ndarray, stamp_ns: int):
    fields = encode_image(rgb, "rgb8")
    return message("sensor_msgs/msg/Image", header={"stamp": {"sec": stamp_ns // 10**9, "nanosec": stamp_ns % 10**9},
                                                    "frame_id": "cam"}, **fields)


def frames(nordland: Path, season: str, start: int, n: int, step: int = 1) -> list[np.ndarray]:
    names = sorted((nordland / season).iterdir())[start : start + n * step : step]
    return [np.asarray(Image.open(p).convert("RGB")) for p in names]


def params(tmp_path, **kw):
    values = {"map_path": str(tmp_path / "map"), "device": "cpu", "loop_closure.consistency.n": 1,
              "loop_closure.keyframe.min_interval_s": 0.0, "loop_closure.exclusion.recent_s": 5.0}
    values.update(kw)
    return validate(values)


def test_shipped_params_file_covers_every_parameter():
    values = load_params_file(ROOT / "config" / "vpr.yaml")
    assert values == validate({})  # the file states the defaults, nothing else
    assert (ROOT / "config" / "vpr.yaml").read_text() == params_yaml()  # generated from the table
    assert params_yaml().splitlines()[5] == "/**/vpr_node:"  # applies under any namespace
    assert {p.name for p in PARAMS} == set(values)
    assert all(p.description for p in PARAMS)


def test_params_are_validated():
    with pytest.raises(ConfigError, match="loop_closure.min_score: 1.5 is outside"):
        validate({"loop_closure.min_score": 1.5})
    with pytest.raises(ConfigError, match="mode: 'exploring' is not one of mapping, localization"):
        validate({"mode": "exploring"})
    with pytest.raises(ConfigError, match="unknown parameter"):
        validate({"min_scor": 0.3})
    with pytest.raises(ConfigError, match="expected int"):
        validate({"loop_closure.top_n": "3"})
    with pytest.raises(ConfigError, match="top_n"):
        validate({"loop_closure.top_n": 50, "loop_closure.retrieval.k": 10})
    cfg = loop_closure_config(validate({"loop_closure.retrieval.stages": "float"}))
    assert cfg.retrieval.stages == ["float"] and cfg.mode == "mapping"


def test_pipeline_maps_a_route_and_closes_the_loop(tmp_path, nordland):
    pipe = VPRPipeline(params(tmp_path))
    summer = frames(nordland, "summer", 0, 40, 5)
    winter = frames(nordland, "winter", 0, 40, 5)
    for i, rgb in enumerate(summer):  # first traversal: 1 frame per second
        out = pipe.process(Frame(image_msg(rgb, i * 10**9), i * 10**9, "cam"))
        assert out.result.is_keyframe and out.result.keyframe_id == i
    hits = 0
    for i, rgb in enumerate(winter):  # second traversal, 1000 s later: revisits
        t = (1000 + i) * 10**9
        out = pipe.process(Frame(image_msg(rgb, t), t, "cam"))
        best = out.result.candidates[0]
        hits += abs(best.match_keyframe_id - i) <= 1
    assert pipe.db.count == 80
    assert hits >= 12  # the demo model finds a good share of the winter revisits in the summer map
    fields = candidate_array_fields(out, pipe.map_id)
    assert fields["header"]["frame_id"] == "cam" and len(fields["candidates"]) == 3
    msg = message("selavpr_ros/msg/LoopClosureCandidateArray", **fields)
    assert msg.candidates[0].rank == 1 and msg.candidates[0].map_id == pipe.map_id
    pipe.close()


def test_services_mode_reset_save(tmp_path, nordland):
    pipe = VPRPipeline(params(tmp_path))
    for i, rgb in enumerate(frames(nordland, "summer", 100, 5)):
        pipe.process(Frame(image_msg(rgb, i * 10**9), i * 10**9, "cam"))
    assert "switched to localization" in pipe.set_mode("localization")
    out = pipe.process(Frame(image_msg(frames(nordland, "winter", 101, 1)[0], 99 * 10**9), 99 * 10**9, "cam"))
    assert out.result.keyframe_id == -1 and pipe.db.count == 5  # localization does not add
    with pytest.raises(ValueError, match="mode must be"):
        pipe.set_mode("slam")
    pipe.set_mode("mapping")
    assert "reset" in pipe.reset()
    msg = pipe.save_map("copy")
    assert "copied" in msg
    from selavpr_ros.mapdb.database import MapDatabase

    with MapDatabase.open(tmp_path / "map.snapshots" / "copy") as copy:
        assert copy.count == 5
    with pytest.raises(MapError, match="exists"):
        pipe.save_map("copy")
    pipe.close()


def test_map_of_another_model_is_refused(tmp_path, nordland):
    from conftest import tiny_config

    from selavpr_ros.inference.torch_backend import TorchExtractor
    from selavpr_ros.models.vpr import build_model

    VPRPipeline(params(tmp_path)).close()
    other = TorchExtractor(build_model(tiny_config("selavpr++", height=28, width=56)), device="cpu")
    with pytest.raises(MapError, match="map holds|was built with"):
        VPRPipeline(params(tmp_path), extractor=other)
    with pytest.raises(MapError, match="map not found"):
        VPRPipeline(params(tmp_path, map_path=str(tmp_path / "none"), mode="localization"))


class _Slow:
    """Wraps the pipeline so that each frame takes at least ``delay`` seconds (a slow robot CPU)."""

    def __init__(self, pipe, delay):
        self.pipe, self.delay = pipe, delay

    def process(self, frame):
        time.sleep(self.delay)
        return self.pipe.process(frame)

    def __getattr__(self, name):  # everything else (counters, camera track) is the pipeline's
        return getattr(self.pipe, name)


def test_worker_drops_instead_of_queueing_and_survives_bad_frames(tmp_path, nordland):
    pipe = VPRPipeline(params(tmp_path))
    done = []
    worker = LatestFrameWorker(_Slow(pipe, 0.05), done.append)
    imgs = frames(nordland, "summer", 50, 10)
    for i in range(60):  # 60 frames at ~200 Hz, every 7th corrupt
        t = i * 10**8
        msg = image_msg(imgs[i % 10], t)
        if i % 7 == 3:
            msg = message("sensor_msgs/msg/Image", header=msg.header, height=32, width=64, encoding="rgb8", step=192,
                          data=np.zeros(10, np.uint8))  # truncated payload
        worker.submit(Frame(msg, t, "cam"))
        time.sleep(0.005)
    deadline = time.monotonic() + 10
    while not worker.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    worker.stop()
    s = worker.stats
    assert s.received == 60
    assert s.dropped >= 30  # far more frames than the worker can take: most are replaced, none queue up
    assert s.processed + s.bad_frames + s.dropped == 60
    assert s.processed == len(done) and s.processed >= 3
    status = diagnostic_status(worker.snapshot(), pipe.db.count, "mapping")
    values = {v["key"]: v["value"] for v in status["values"]}
    assert values["dropped"] == str(s.dropped) and values["map_size"] == str(pipe.db.count)
    if s.bad_frames:
        assert status["level"] == 1 and "bad frame" in status["message"]
    msg = message("diagnostic_msgs/msg/DiagnosticArray", status=[message("diagnostic_msgs/msg/DiagnosticStatus",
                  **{**status, "values": [message("diagnostic_msgs/msg/KeyValue", **v) for v in status["values"]]})])
    assert msg.status[0].name == "vpr_node"
    pipe.close()


def test_restart_resumes_the_session(tmp_path, nordland):
    imgs = frames(nordland, "summer", 70, 6)
    pipe = VPRPipeline(params(tmp_path, **{"loop_closure.keyframe.min_interval_s": 2.0}))
    for i, rgb in enumerate(imgs[:3]):
        pipe.process(Frame(image_msg(rgb, i * 3 * 10**9), i * 3 * 10**9, "cam"))
    pipe.close()
    pipe = VPRPipeline(params(tmp_path, **{"loop_closure.keyframe.min_interval_s": 2.0}))
    early = pipe.process(Frame(image_msg(imgs[3], 7 * 10**9), 7 * 10**9, "cam"))  # 1 s after the last keyframe
    assert not early.result.is_keyframe and "after the last keyframe" in early.result.skipped_reason
    late = pipe.process(Frame(image_msg(imgs[4], 9 * 10**9), 9 * 10**9, "cam"))
    assert late.result.is_keyframe and late.result.keyframe_id == 3
    pipe.close()


def test_concurrent_services_and_frames(tmp_path, nordland):
    pipe = VPRPipeline(params(tmp_path))
    worker = LatestFrameWorker(pipe, lambda o: None)
    imgs = frames(nordland, "summer", 90, 5)
    stop = threading.Event()

    def toggle():
        while not stop.is_set():
            pipe.set_mode("localization")
            pipe.set_mode("mapping")

    t = threading.Thread(target=toggle)
    t.start()
    for i in range(30):
        worker.submit(Frame(image_msg(imgs[i % 5], i * 10**9), i * 10**9, "cam"))
        time.sleep(0.01)
    stop.set()
    t.join()
    while not worker.idle():
        time.sleep(0.01)
    worker.stop()
    assert worker.stats.bad_frames == 0 and worker.stats.processed >= 1
    pipe.close()


def test_frames_without_camera_info_are_counted_in_diagnostics(tmp_path, nordland):
    """With the geometric stage on, a camera that publishes no CameraInfo is reported, not fatal."""
    pipe = VPRPipeline(params(tmp_path, **{"loop_closure.retrieval.stages": "binary,float,geometric"}))
    worker = LatestFrameWorker(pipe, lambda outcome: None)
    for i, rgb in enumerate(frames(nordland, "summer", 70, 3)):
        worker.submit(Frame(image_msg(rgb, i * 10**9), i * 10**9, "cam"))
        deadline = time.monotonic() + 10
        while not worker.idle() and time.monotonic() < deadline:
            time.sleep(0.01)
    worker.stop()
    status = diagnostic_status(worker.snapshot(), pipe.db.count, "mapping")
    values = {v["key"]: v["value"] for v in status["values"]}
    assert worker.stats.processed == 3 and worker.stats.bad_frames == 0
    assert values["geometry_skipped"] == "3" and values["camera_info_received"] == "0"
    assert status["level"] == 1 and "3 frame(s) not verified geometrically: no CameraInfo received" in status["message"]
    pipe.close()
