"""The node without ROS: parameters, the per-frame pipeline, the newest-frame worker, the DDS runner."""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "DDSNode": "selavpr_ros.node.dds_node",
    "Frame": "selavpr_ros.node.pipeline",
    "FrameOutcome": "selavpr_ros.node.pipeline",
    "LatestFrameWorker": "selavpr_ros.node.worker",
    "NodeStats": "selavpr_ros.node.worker",
    "PARAMS": "selavpr_ros.node.params",
    "VPRPipeline": "selavpr_ros.node.pipeline",
    "load_params_file": "selavpr_ros.node.params",
    "parse_overrides": "selavpr_ros.node.params",
    "validate": "selavpr_ros.node.params",
})
