"""DDS discovery range from the environment, as ROS 2 reads it, and a participant that stays on loopback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from selavpr_ros.errors import ConfigError
from selavpr_ros.transport.discovery import LOCALHOST_CONFIG, cyclonedds_config, discovery_range


def test_range_follows_ros_variables():
    assert discovery_range({}) == "SUBNET"
    assert discovery_range({"ROS_LOCALHOST_ONLY": "1"}) == "LOCALHOST"
    assert discovery_range({"ROS_AUTOMATIC_DISCOVERY_RANGE": "localhost"}) == "LOCALHOST"
    assert discovery_range({"ROS_AUTOMATIC_DISCOVERY_RANGE": "OFF", "ROS_LOCALHOST_ONLY": "1"}) == "OFF"
    assert discovery_range({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT"}) == "SUBNET"
    with pytest.raises(ConfigError, match="ROS_AUTOMATIC_DISCOVERY_RANGE='LAN'"):
        discovery_range({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LAN"})


def test_config_per_range_and_user_uri(tmp_path):
    assert cyclonedds_config({}) is None
    assert cyclonedds_config({"ROS_LOCALHOST_ONLY": "1"}) == LOCALHOST_CONFIG
    user = "<CycloneDDS><Domain><Tracing><Verbosity>warning</Verbosity></Tracing></Domain></CycloneDDS>"
    assert cyclonedds_config({"ROS_LOCALHOST_ONLY": "1", "CYCLONEDDS_URI": user}) == f"{user},{LOCALHOST_CONFIG}"
    chosen = tmp_path / "mine.xml"
    chosen.write_text('<CycloneDDS><Domain><General><Interfaces><NetworkInterface name="lo"/>'
                      "</Interfaces></General></Domain></CycloneDDS>")
    uri = f"file://{chosen}"  # the user picked interfaces: used as it is (no interface twice)
    assert cyclonedds_config({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "CYCLONEDDS_URI": uri}) == uri


@pytest.mark.parametrize("env", [{"ROS_LOCALHOST_ONLY": "1"}, {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}])
def test_localhost_participant_binds_loopback_only(tmp_path, env):
    pytest.importorskip("cyclonedds")
    log = tmp_path / "cdds.log"
    trace = (f'<CycloneDDS><Domain Id="any"><Tracing><Verbosity>config</Verbosity><OutputFile>{log}</OutputFile>'
             "</Tracing></Domain></CycloneDDS>")
    code = (
        "import os\n"
        "from selavpr_ros.transport.discovery import open_domain\n"
        "from cyclonedds.domain import DomainParticipant\n"
        "domain = open_domain(77)\n"
        "participant = DomainParticipant(77)\n"
    )
    clean = {k: v for k, v in __import__("os").environ.items()
             if k not in ("CYCLONEDDS_URI", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY")}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={**clean, **env, "CYCLONEDDS_URI": trace})
    text = log.read_text()
    selected = next(line for line in text.splitlines() if "selected interfaces:" in line)
    assert "selected interfaces: lo " in selected and "ownip: udp/127.0.0.1" in text
    assert "AllowMulticast/#text: false" in text
