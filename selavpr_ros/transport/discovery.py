"""How far DDS discovery reaches, read from the environment the way ROS 2 reads it.

ROS 2 (Iron and later) has ``ROS_AUTOMATIC_DISCOVERY_RANGE`` (``SUBNET``,
``LOCALHOST``, ``OFF``, ``SYSTEM_DEFAULT``); Humble has ``ROS_LOCALHOST_ONLY=1``.
``rmw_cyclonedds_cpp`` turns ``LOCALHOST`` into a configuration bound to the
loopback interface without multicast, and ``OFF`` into one that finds no peers
at all. The ROS-less node does the same, so a user who asked for localhost is
not reachable from the network, and ``CYCLONEDDS_URI`` is honoured on top.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from selavpr_ros.errors import ConfigError

RANGES = ("SUBNET", "LOCALHOST", "OFF", "SYSTEM_DEFAULT")

# Bound to loopback, no multicast, unicast discovery of participants on this host.
LOCALHOST_CONFIG = (
    "<CycloneDDS><Domain Id=\"any\"><General><Interfaces><NetworkInterface address=\"127.0.0.1\"/></Interfaces>"
    "<AllowMulticast>false</AllowMulticast></General><Discovery><ParticipantIndex>auto</ParticipantIndex>"
    "<MaxAutoParticipantIndex>64</MaxAutoParticipantIndex><Peers><Peer address=\"localhost\"/></Peers>"
    "</Discovery></Domain></CycloneDDS>"
)
# Loopback without peers: participants of this process only.
OFF_CONFIG = (
    "<CycloneDDS><Domain Id=\"any\"><General><Interfaces><NetworkInterface address=\"127.0.0.1\"/></Interfaces>"
    "<AllowMulticast>false</AllowMulticast></General><Discovery><ParticipantIndex>none</ParticipantIndex>"
    "</Discovery></Domain></CycloneDDS>"
)


def discovery_range(env: Mapping[str, str] | None = None) -> str:
    """The requested range: ``ROS_AUTOMATIC_DISCOVERY_RANGE``, else ``LOCALHOST`` for
    ``ROS_LOCALHOST_ONLY=1``, else ``SUBNET`` (ROS 2's default)."""
    env = os.environ if env is None else env
    value = env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").strip().upper()
    if value:
        if value not in RANGES:
            raise ConfigError(f"ROS_AUTOMATIC_DISCOVERY_RANGE={value!r} is not one of {', '.join(RANGES)}")
        return "SUBNET" if value == "SYSTEM_DEFAULT" else value
    if env.get("ROS_LOCALHOST_ONLY", "").strip() == "1":
        return "LOCALHOST"
    return "SUBNET"


def cyclonedds_config(env: Mapping[str, str] | None = None) -> str | None:
    """CycloneDDS configuration for the requested range (None: the library's own default).

    A user's ``CYCLONEDDS_URI`` comes first and the range's fragment is appended
    to it; when the user's configuration already selects network interfaces,
    it is used as it is (CycloneDDS refuses an interface selected twice).
    """
    env = os.environ if env is None else env
    fragment = {"LOCALHOST": LOCALHOST_CONFIG, "OFF": OFF_CONFIG}.get(discovery_range(env))
    user = env.get("CYCLONEDDS_URI", "").strip()
    if fragment is None:
        return None
    if user and "NetworkInterface" in _config_text(user):
        return user
    return f"{user},{fragment}" if user else fragment


def _config_text(uri: str) -> str:
    """The XML behind a ``CYCLONEDDS_URI`` value: inline fragments and the files it names."""
    parts = []
    for item in uri.split(","):
        item = item.strip()
        if item.startswith("file://"):
            try:
                parts.append(Path(item[len("file://"):]).read_text(encoding="utf-8"))
            except OSError:
                continue
        else:
            parts.append(item)
    return "\n".join(parts)


def open_domain(domain_id: int, env: Mapping[str, str] | None = None) -> Any:
    """A ``cyclonedds.domain.Domain`` configured for the requested range, or None for the default.

    Keep the returned object alive for as long as participants of the domain exist.
    """
    config = cyclonedds_config(env)
    if config is None:
        return None
    from cyclonedds.domain import Domain

    return Domain(domain_id, config)


def pin_loopback(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Keep every DDS participant started from ``env`` (default: this process) on this machine.

    Sets ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (read by ROS 2 and by this
    package) and, unless the user chose one, ``CYCLONEDDS_URI`` to the loopback
    configuration (read by plain CycloneDDS programs and rmw_cyclonedds alike).
    The tests and benchmarks call this before any participant exists.
    """
    target: MutableMapping[str, str] = os.environ if env is None else env
    target["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    target.setdefault("CYCLONEDDS_URI", LOCALHOST_CONFIG)
    return target
