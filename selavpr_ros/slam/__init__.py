"""Pose graphs from odometry and published loop-closure edges (GTSAM) and trajectory scores (evo): ``slam-eval``."""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "Edge": "selavpr_ros.slam.pose_graph",
    "SlamResult": "selavpr_ros.slam.evaluate",
    "optimise": "selavpr_ros.slam.pose_graph",
    "slam_eval": "selavpr_ros.slam.evaluate",
})
