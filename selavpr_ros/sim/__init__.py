"""Simulated worlds and robots with exact geometry, recorded as real rosbag2 files (``selavpr-ros sim``)."""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "OdometryNoise": "selavpr_ros.sim.route",
    "Session": "selavpr_ros.sim.session",
    "Wall": "selavpr_ros.sim.world",
    "World": "selavpr_ros.sim.world",
    "block_world": "selavpr_ros.sim.world",
    "camera_pose": "selavpr_ros.sim.world",
    "drifting_odometry": "selavpr_ros.sim.route",
    "loop_route": "selavpr_ros.sim.route",
    "write_session": "selavpr_ros.sim.session",
})
