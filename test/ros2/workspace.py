"""Find a ROS 2 install and build this package into a colcon workspace (ROS 2 tests and benchmarks).

Nothing here is needed at run time: it is how the project's own tests and
``benchmarks/node_load.py`` reach a real ROS 2 graph.
"""

from __future__ import annotations

import os
import random
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def find_ros() -> Path | None:
    """The setup script of the ROS 2 install to use: the sourced one, else one under /opt/ros."""
    prefix = os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)[0]
    if os.environ.get("ROS_DISTRO") and prefix and (Path(prefix) / "setup.bash").is_file():
        return Path(prefix) / "setup.bash"
    for setup in sorted(Path("/opt/ros").glob("*/setup.bash")):
        return setup
    return None


def sourced_env(setup: Path, base: dict[str, str]) -> dict[str, str]:
    """``base`` after ``source setup.bash``."""
    out = subprocess.run(["bash", "-c", f"source {shlex.quote(str(setup))} >/dev/null && env -0"],
                         env=base, capture_output=True, check=True)
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


def build_workspace(ws: Path, setup: Path, testing: bool = True, timeout: float = 900) -> dict[str, str]:
    """colcon-build this package into ``ws``; the sourced environment, pinned to loopback DDS."""
    from selavpr_ros.transport.discovery import pin_loopback

    (ws / "src").mkdir(parents=True, exist_ok=True)
    link = ws / "src" / "selavpr_ros"
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COLCON_"))}
    env = sourced_env(setup, base)
    build = subprocess.run(
        ["colcon", "build", "--merge-install", "--packages-select", "selavpr_ros",
         "--cmake-args", f"-DBUILD_TESTING={'ON' if testing else 'OFF'}", "-DCMAKE_BUILD_TYPE=Release",
         "--event-handlers", "console_direct-"],
        cwd=ws, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if build.returncode != 0:
        raise RuntimeError(f"colcon build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}")
    env = sourced_env(ws / "install" / "setup.bash", env)
    pin_loopback(env)
    env.update({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp", "ROS_DOMAIN_ID": str(random.randint(1, 200)),
                "ROS_LOG_DIR": str(ws / "log" / "ros"), "PYTHONUNBUFFERED": "1", "RCUTILS_COLORIZED_OUTPUT": "0"})
    env["WS"] = str(ws)
    return env
