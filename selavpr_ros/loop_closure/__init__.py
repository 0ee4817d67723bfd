"""Loop closure: keyframe gate, exclusion of the robot's recent past, scoring, temporal consistency, and
pose-graph edges of the accepted closures."""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "ConsistencyConfig": "selavpr_ros.loop_closure.config",
    "EdgeConfig": "selavpr_ros.loop_closure.edges",
    "ExclusionConfig": "selavpr_ros.loop_closure.config",
    "FrameResult": "selavpr_ros.loop_closure.engine",
    "KeyframeGate": "selavpr_ros.loop_closure.engine",
    "KeyframeGateConfig": "selavpr_ros.loop_closure.config",
    "LoopCandidate": "selavpr_ros.loop_closure.engine",
    "LoopClosureConfig": "selavpr_ros.loop_closure.config",
    "LoopClosureEngine": "selavpr_ros.loop_closure.engine",
    "PoseGraphEdge": "selavpr_ros.loop_closure.edges",
    "closure_edges": "selavpr_ros.loop_closure.edges",
    "Status": "selavpr_ros.loop_closure.engine",
})
