"""Offline work on recorded data: maps from bags and replays."""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "ReplayResult": "selavpr_ros.offline.replay",
    "ReplayWriter": "selavpr_ros.offline.replay",
    "SessionReport": "selavpr_ros.offline.build_map",
})
