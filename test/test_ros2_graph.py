"""The package in a real ROS 2 graph: colcon build, ros2 launch, rclpy clients, ros2 CLI tools, Ctrl-C.

These tests run wherever a ROS 2 install is sourced (``ROS_DISTRO`` set) or
found under ``/opt/ros/<distro>``; otherwise they skip with one reason, and
the run's summary says whether they ran. They build this package with colcon
into a temporary workspace, start ``ros2 launch selavpr_ros vpr.launch.py``
and talk to it only through ROS 2: an rclpy probe (``test/ros2/probe.py``),
``ros2 service call`` and ``ros2 param``. All DDS traffic stays on loopback
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and a CycloneDDS config bound to ``lo``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "ros2"))
from workspace import build_workspace, find_ros  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "test" / "ros2" / "probe.py"
pytestmark = [pytest.mark.ros2, pytest.mark.slow]


ROS_SETUP = find_ros()
if ROS_SETUP is None:
    pytest.skip("ROS 2 not found: source a ROS 2 install (setup.bash) or install one under /opt/ros to run "
                "the ROS 2 graph tests", allow_module_level=True)


@pytest.fixture(scope="module")
def ros_ws(tmp_path_factory) -> dict[str, str]:
    """This package built with colcon into a fresh workspace; returns the sourced environment."""
    assert ROS_SETUP is not None
    env = build_workspace(tmp_path_factory.mktemp("ros_ws"), ROS_SETUP)
    env["OMP_NUM_THREADS"] = "1"
    return env


def params_file(path: Path, key: str = "/**/vpr_node", **values) -> Path:
    """A ROS 2 parameter file for the tests: fast keyframes, single-query consistency."""
    base = {"device": "cpu", "loop_closure.consistency.n": 1, "loop_closure.keyframe.min_interval_s": 0.0,
            "loop_closure.exclusion.recent_s": 5.0, "diagnostics_period_s": 0.5}
    base.update(values)
    lines = [f"{key}:", "  ros__parameters:"]
    lines += [f'    {k}: {json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}'
              for k, v in base.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Launch:
    """``ros2 launch selavpr_ros vpr.launch.py`` in its own process group, as a terminal starts it."""

    def __init__(self, env: dict[str, str], *args: str, log: Path) -> None:
        self.log = log
        self.file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["ros2", "launch", "selavpr_ros", "vpr.launch.py", *args], env=env,
                                     stdout=self.file, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        if not self.file.closed:
            self.file.flush()
        return self.log.read_text()

    def wait_for(self, needle: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise AssertionError(f"launch exited with {self.proc.returncode}:\n{self.text()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never appeared:\n{self.text()[-4000:]}")
            time.sleep(0.2)

    def interrupt(self, timeout: float = 60.0) -> int:
        """Ctrl-C: SIGINT to the whole process group (launch and node receive it both)."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.file.close()


def run(env: dict[str, str], *cmd: str, timeout: float = 120.0, check: bool = True,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check:
        assert out.returncode == 0, (
            f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
    return out


def probe(env: dict[str, str], *args: str, timeout: float = 240.0) -> dict:
    out = run(env, sys.executable, str(PROBE), *args, timeout=timeout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def map_check(env: dict[str, str], path: Path) -> None:
    out = run(env, sys.executable, "-m", "selavpr_ros", "map", "check", str(path))
    assert "ok" in out.stdout.lower() or out.returncode == 0


def test_launch_image_stream_services_parameters_and_ctrl_c(ros_ws, tmp_path):
    env = ros_ws
    m = tmp_path / "map"
    launch = Launch(env, f"params_file:={params_file(tmp_path / 'p.yaml')}", f"map:={m}",
                    "image_topic:=/camera/image_raw", log=tmp_path / "launch.log")
    try:
        launch.wait_for("mapping on /camera/image_raw")
        got = probe(env, "stream", "--image-topic", "/camera/image_raw", "--candidates-topic", "/loop_closures",
                    "--camera-info", "/camera/camera_info")  # where the launch file points camera_info
        arrays, sent = got["arrays"], got["sent"]
        assert [a["stamp"] for a in arrays] == sent  # one array per frame, stamped with its image
        assert all(a["frame_id"] == "cam_optical" for a in arrays)
        winter = arrays[len(sent) // 2:]
        assert all(len(a["candidates"]) == 3 for a in winter)
        assert all([c["rank"] for c in a["candidates"]] == [1, 2, 3] for a in winter)
        assert all(c["stamp"] == a["stamp"] and c["session"] == "live" for a in winter for c in a["candidates"])
        hits = sum(abs(a["candidates"][0]["match"] - i) <= 1 for i, a in enumerate(winter))
        assert hits >= 2, winter  # the demo model finds winter revisits in the summer map
        assert any(d["name"].startswith("vpr_node") and "latency_p50_ms" in d["keys"] for d in got["diagnostics"])

        # Services through rclpy clients, parameters through the parameter services.
        svc = probe(env, "services", "--node", "/vpr_node", "--copy-to", "copy")
        assert svc["save_map"]["success"] and "copied" in svc["save_map"]["message"]
        assert not svc["save_map_escape"]["success"] and "refused" in svc["save_map_escape"]["message"]
        assert svc["reset"]["success"]
        assert not svc["set_mode_bad"]["success"] and "mode must be" in svc["set_mode_bad"]["message"]
        assert svc["set_mode"]["success"] and svc["after_set_mode"][0] == "localization"
        assert svc["set_valid"]["successful"]
        assert not svc["set_out_of_range"]["successful"] and "range" in svc["set_out_of_range"]["reason"]
        assert not svc["set_read_only"]["successful"] and "read-only" in svc["set_read_only"]["reason"]
        assert svc["set_mode_param"]["successful"]
        assert svc["final"] == ["mapping", 0.6, str(m)]
        map_check(env, tmp_path / "map.snapshots" / "copy")
        out = run(env, "ros2", "service", "call", "/vpr_node/save_map", "selavpr_ros/srv/SaveMap", "{path: /etc/x}")
        assert "success=False" in out.stdout.replace(" ", "") and "refused" in out.stdout
        assert not (tmp_path / "etc").exists() and not Path("/etc/x").exists()

        # The same through the ros2 command line tools.
        out = run(env, "ros2", "service", "call", "/vpr_node/set_mode", "selavpr_ros/srv/SetMode",
                  "{mode: localization}")
        assert "success=True" in out.stdout.replace(" ", "")
        assert "localization" in run(env, "ros2", "param", "get", "/vpr_node", "mode").stdout
        out = run(env, "ros2", "param", "set", "/vpr_node", "loop_closure.top_n", "5")
        assert "successful" in out.stdout.lower()
        assert "5" in run(env, "ros2", "param", "get", "/vpr_node", "loop_closure.top_n").stdout
        out = run(env, "ros2", "param", "set", "/vpr_node", "loop_closure.top_n", "500", check=False)
        assert "failed" in (out.stdout + out.stderr).lower()
        assert "5" in run(env, "ros2", "param", "get", "/vpr_node", "loop_closure.top_n").stdout
        out = run(env, "ros2", "param", "describe", "/vpr_node", "loop_closure.min_score")
        assert "Minimum cosine similarity" in out.stdout and "-1.0" in out.stdout
        out = run(env, "ros2", "service", "call", "/vpr_node/save_map", "selavpr_ros/srv/SaveMap", "{path: ''}")
        assert "up to date" in out.stdout
        # diagnostics_period_s takes effect at run time
        run(env, "ros2", "param", "set", "/vpr_node", "diagnostics_period_s", "0.2")
        fast = probe(env, "diagnostics-rate", "--seconds", "3")["messages"]
        run(env, "ros2", "param", "set", "/vpr_node", "diagnostics_period_s", "2.0")
        slow = probe(env, "diagnostics-rate", "--seconds", "3")["messages"]
        assert fast >= 8 and slow <= 3, (fast, slow)
    except BaseException:
        launch.stop()
        raise
    code = launch.interrupt()
    log = launch.text()
    assert code == 0, log[-4000:]
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-4000:]
    map_check(env, m)
    from selavpr_ros.mapdb.database import MapDatabase

    with MapDatabase.open(m) as db:
        assert db.count == 16  # every frame of the route became a keyframe before localization began
        cameras = {r.camera for r in db.iterate()}  # the CameraInfo reached the node beside each image
        assert len(cameras) == 1 and None not in cameras and cameras.pop().width == 64


def test_namespace_compressed_int_for_float_and_ctrl_c_in_localization(ros_ws, tmp_path):
    env = ros_ws
    m = tmp_path / "map"
    first = Launch(env, f"params_file:={params_file(tmp_path / 'a.yaml')}", f"map:={m}", "namespace:=robot1",
                   "compressed:=true", log=tmp_path / "a.log")
    try:
        first.wait_for("mapping on /robot1/image")
        got = probe(env, "stream", "--compressed", "--image-topic", "/robot1/image",
                    "--candidates-topic", "/robot1/loop_closures", "--n", "6")
        assert len(got["arrays"]) == 12 and all(a["frame_id"] == "cam_optical" for a in got["arrays"])
    except BaseException:
        first.stop()
        raise
    assert first.interrupt() == 0, first.text()[-3000:]
    # localization on the map just built, the file's values under the namespace, an int for a float
    second_params = params_file(tmp_path / "b.yaml", diagnostics_period_s=1, mode="localization",
                                **{"loop_closure.retrieval.stages": "binary,float,geometric",
                                   "loop_closure.min_score": -1.0})
    second = Launch(env, f"params_file:={second_params}", f"map:={m}", "namespace:=robot1", "compressed:=true",
                    log=tmp_path / "b.log")
    try:
        second.wait_for("localization on /robot1/image")
        # the geometric stage runs in the rclpy node: the first run stored no camera model, so every
        # candidate says it could not be verified, and why
        got = probe(env, "stream", "--compressed", "--image-topic", "/robot1/image", "--camera-info",
                    "/robot1/camera_info", "--candidates-topic", "/robot1/loop_closures", "--n", "3")
        cands = [c for a in got["arrays"] for c in a["candidates"]]
        assert cands and all(c["verification"] == 3 and "has no camera model" in c["reason"] for c in cands)
        out = run(env, "ros2", "param", "get", "/robot1/vpr_node", "diagnostics_period_s")
        assert "1.0" in out.stdout
        assert "5.0" in run(env, "ros2", "param", "get", "/robot1/vpr_node", "loop_closure.exclusion.recent_s").stdout
    except BaseException:
        second.stop()
        raise
    code = second.interrupt()
    assert code == 0 and "Traceback" not in second.text(), second.text()[-3000:]
    map_check(env, m)


def test_tf_poses_through_tf2_ros(ros_ws, tmp_path):
    """pose_source:=tf: keyframes get the camera's pose in odom at the image stamp; the motion gate works."""
    env = ros_ws
    m = tmp_path / "map"
    p = params_file(tmp_path / "p.yaml", **{"loop_closure.keyframe.min_translation_m": 1.5, "pose.timeout_s": 1.0})
    launch = Launch(env, f"params_file:={p}", f"map:={m}", "pose_source:=tf", log=tmp_path / "launch.log")
    try:
        launch.wait_for("poses: tf")
        got = probe(env, "stream", "--tf", "--image-topic", "/image", "--n", "5", "--expect", "5")
        assert len(got["arrays"]) == 5  # only keyframes are answered
    except BaseException:
        launch.stop()
        raise
    assert launch.interrupt() == 0, launch.text()[-3000:]
    from selavpr_ros.mapdb.database import MapDatabase

    with MapDatabase.open(m) as db:
        records = db.records(list(range(db.count)))
    frames = [(r.stamp_ns // 10**9) % 1000 for r in records]
    summer = [f for f in frames if f < 5]
    assert summer == [0, 2, 4], frames  # 1 m per frame, min_translation_m 1.5: every other frame
    for r in records:
        i = r.stamp_ns // 10**9 - (1000 if r.stamp_ns > 500 * 10**9 else 0)
        assert r.pose is not None and r.pose.frame_id == "odom"
        assert r.pose.position[0] == pytest.approx(i + 0.25, abs=1e-6)


def test_query_service_keys_edges_by_the_slams_ids(ros_ws, tmp_path):
    """A SLAM's own keyframes through ~/query (image + its id + CameraInfo): revisits of a turned camera
    come back with verified edges keyed by the SLAM's ids and robot id, between the robot frames (the
    camera mount from /tf_static through tf2), in the response and on loop_closure_edges."""
    from selavpr_ros.datasets.rotated_views import write_rotated_views
    from selavpr_ros.types import quaternion_to_rotation

    env = ros_ws
    views = write_rotated_views(tmp_path / "views", held_out=0)
    ev = views.eval_set
    picks = [i for i, p in enumerate(ev.positives) if len(p)][:6]
    mount = [0.1, -0.05, 1.2, -0.5, 0.5, -0.5, 0.5]  # an optical frame looking along base_link's x
    keyframes = [{"id": 1000 + n, "path": str(ev.database[ev.positives[i][0]]), "stamp": (10 + n) * 10**9}
                 for n, i in enumerate(picks)]
    keyframes += [{"id": 2000 + n, "path": str(ev.queries[i]), "stamp": (100 + n) * 10**9}
                  for n, i in enumerate(picks)]
    keyframes.append({"id": 3000, "path": "", "stamp": 200 * 10**9})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"keyframes": keyframes, "k": list(views.camera.k), "width": views.camera.width,
                                "height": views.camera.height, "mount": mount}))
    p = params_file(tmp_path / "p.yaml", robot_id=2, **{"edges.base_frame": "base_link",
                                                        "loop_closure.retrieval.stages": "binary,float,geometric",
                                                        "loop_closure.min_score": -1.0, "loop_closure.top_n": 6,
                                                        "loop_closure.keyframe.min_interval_s": 60.0})
    launch = Launch(env, f"params_file:={p}", f"map:={tmp_path / 'map'}", log=tmp_path / "launch.log")
    try:
        launch.wait_for("mapping on /image")
        got = probe(env, "query", "--spec", str(spec))
    except BaseException:
        launch.stop()
        raise
    assert launch.interrupt() == 0, launch.text()[-3000:]
    answers = {a["id"]: a for a in got["answers"]}
    assert all(answers[k["id"]]["success"] for k in keyframes[:-1])  # every one stored: no keyframe gate
    assert not answers[3000]["success"] and answers[3000]["message"]  # no image: a clear answer, not a crash
    revisits = [answers[2000 + n] for n in range(len(picks))]
    edges = [e for a in revisits for e in a["edges"]]
    assert len(edges) >= len(picks) // 2
    for n, a in enumerate(revisits):
        for e in a["edges"]:
            assert (e["key_from"], e["key_to"]) == (2000 + n, 1000 + n)  # the SLAM's ids, never the map's
            assert (e["robot_from"], e["robot_to"], e["type"], e["frame_id"]) == (2, 2, 1, "base_link")
            # a camera that only turned: between the bases, a turn about the base's vertical axis mostly
            r = quaternion_to_rotation(e["quaternion"])
            assert np.linalg.norm(e["position"][:2]) < 0.3 and r[2, 2] > 0.95
        accepted = [c for c in a["candidates"] if c["status"] == 0 and c["has_relative_pose"]]
        assert len(accepted) == len(a["edges"])
        assert all(c["query_slam_id"] == 2000 + n and c["match_slam_id"] == 1000 + n and c["robot_id"] == 2
                   for c in accepted)
    assert sorted(map(json.dumps, [e for g in got["graphs"] for e in g])) == sorted(map(json.dumps, edges))
    from selavpr_ros.mapdb.database import MapDatabase

    with MapDatabase.open(tmp_path / "map") as db:
        assert [r.slam_id for r in db.iterate()] == [k["id"] for k in keyframes[:-1]]


@pytest.mark.parametrize("case", ["unknown_key", "wrong_type", "missing_map", "missing_checkpoint", "bad_argument"])
def test_bad_start_up_input_is_one_clear_line(ros_ws, tmp_path, case):
    env = ros_ws
    args = [f"map:={tmp_path / 'map'}"]
    expected = {
        "unknown_key": "unknown parameter(s) loop_closure.min_scor",
        "wrong_type": "diagnostics_period_s",
        "missing_map": "map not found",
        "missing_checkpoint": "not found",
        "bad_argument": "launch argument 'mode:=exploring'",
    }[case]
    if case == "unknown_key":
        args.append(f"params_file:={params_file(tmp_path / 'p.yaml', **{'loop_closure.min_scor': 0.3})}")
    elif case == "wrong_type":
        args.append(f"params_file:={params_file(tmp_path / 'p.yaml', diagnostics_period_s='often')}")
    elif case == "missing_map":
        args += [f"params_file:={params_file(tmp_path / 'p.yaml')}", "mode:=localization"]
    elif case == "missing_checkpoint":
        args += [f"params_file:={params_file(tmp_path / 'p.yaml')}", f"checkpoint:={tmp_path / 'none.ckpt'}"]
    else:
        args.append("mode:=exploring")
    out = subprocess.run(["ros2", "launch", "selavpr_ros", "vpr.launch.py", *args], env=env, capture_output=True,
                         text=True, timeout=180)
    text = out.stdout + out.stderr
    assert expected in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    if case != "bad_argument":
        assert "process has died" in text and "exit code 1" in text, text[-3000:]
    else:
        assert out.returncode != 0


def test_colcon_test_runs_the_pytest_suite(ros_ws):
    """``colcon test`` runs the package's pytest suite through ament_cmake_pytest (a subset here, for time)."""
    env = {**ros_ws, "PYTEST_ADDOPTS": "-p no:cacheprovider -k 'test_registry or test_config'"}
    ws = Path(ros_ws["WS"])
    run(env, "colcon", "test", "--merge-install", "--packages-select", "selavpr_ros",
        "--event-handlers", "console_direct-", timeout=900, cwd=ws)
    results = run(env, "colcon", "test-result", "--all", "--verbose", check=False, cwd=ws)
    assert results.returncode == 0, results.stdout[-3000:]
    xunit = (ws / "build" / "selavpr_ros" / "test_results" / "selavpr_ros" / "selavpr_ros_pytest.xunit.xml").read_text()
    tests = int(__import__("re").search(r'tests="(\d+)"', xunit).group(1))
    assert tests >= 10 and 'failures="0"' in xunit and 'errors="0"' in xunit
