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
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selavpr_ros.transport.discovery import pin_loopback

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "test" / "ros2" / "probe.py"
pytestmark = [pytest.mark.ros2, pytest.mark.slow]


def find_ros() -> Path | None:
    """The setup script of the ROS 2 install to use: the sourced one, else one under /opt/ros."""
    prefix = os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)[0]
    if os.environ.get("ROS_DISTRO") and prefix and (Path(prefix) / "setup.bash").is_file():
        return Path(prefix) / "setup.bash"
    for setup in sorted(Path("/opt/ros").glob("*/setup.bash")):
        return setup
    return None


ROS_SETUP = find_ros()
if ROS_SETUP is None:
    pytest.skip("ROS 2 not found: source a ROS 2 install (setup.bash) or install one under /opt/ros to run "
                "the ROS 2 graph tests", allow_module_level=True)


def sourced_env(setup: Path, base: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(["bash", "-c", f"source {shlex.quote(str(setup))} >/dev/null && env -0"],
                         env=base, capture_output=True, check=True)
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


@pytest.fixture(scope="module")
def ros_ws(tmp_path_factory) -> dict[str, str]:
    """This package built with colcon into a fresh workspace; returns the sourced environment."""
    ws = tmp_path_factory.mktemp("ros_ws")
    (ws / "src").mkdir()
    (ws / "src" / "selavpr_ros").symlink_to(ROOT, target_is_directory=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COLCON_"))}
    env = sourced_env(ROS_SETUP, base)
    build = subprocess.run(
        ["colcon", "build", "--merge-install", "--packages-select", "selavpr_ros",
         "--cmake-args", "-DBUILD_TESTING=OFF", "-DCMAKE_BUILD_TYPE=Release",
         "--event-handlers", "console_direct-"],
        cwd=ws, env=env, capture_output=True, text=True, timeout=900,
    )
    assert build.returncode == 0, f"colcon build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    env = sourced_env(ws / "install" / "setup.bash", env)
    pin_loopback(env)
    env.update({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp", "ROS_DOMAIN_ID": str(random.randint(1, 200)),
                "ROS_LOG_DIR": str(ws / "log" / "ros"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                "RCUTILS_COLORIZED_OUTPUT": "0"})
    env["WS"] = str(ws)
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


def run(env: dict[str, str], *cmd: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
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
        got = probe(env, "stream", "--image-topic", "/camera/image_raw", "--candidates-topic", "/loop_closures")
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
        svc = probe(env, "services", "--node", "/vpr_node", "--copy-to", str(tmp_path / "copy"))
        assert svc["save_map"]["success"] and "copied" in svc["save_map"]["message"]
        assert svc["reset"]["success"]
        assert not svc["set_mode_bad"]["success"] and "mode must be" in svc["set_mode_bad"]["message"]
        assert svc["set_mode"]["success"] and svc["after_set_mode"][0] == "localization"
        assert svc["set_valid"]["successful"]
        assert not svc["set_out_of_range"]["successful"] and "range" in svc["set_out_of_range"]["reason"]
        assert not svc["set_read_only"]["successful"] and "read-only" in svc["set_read_only"]["reason"]
        assert svc["set_mode_param"]["successful"]
        assert svc["final"] == ["mapping", 0.6, str(m)]
        map_check(env, tmp_path / "copy")

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
    second = Launch(env, f"params_file:={params_file(tmp_path / 'b.yaml', diagnostics_period_s=1, mode='localization')}",
                    f"map:={m}", "namespace:=robot1", "compressed:=true", log=tmp_path / "b.log")
    try:
        second.wait_for("localization on /robot1/image")
        out = run(env, "ros2", "param", "get", "/robot1/vpr_node", "diagnostics_period_s")
        assert "1.0" in out.stdout
        assert "5.0" in run(env, "ros2", "param", "get", "/robot1/vpr_node", "loop_closure.exclusion.recent_s").stdout
    except BaseException:
        second.stop()
        raise
    code = second.interrupt()
    assert code == 0 and "Traceback" not in second.text(), second.text()[-3000:]
    map_check(env, m)


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
