"""Geometry: camera models, keyframe keypoints, relative-pose estimation (NumPy, OpenCV when used).

Verifying map candidates with them is the retrieval stage ``geometric``
(:mod:`selavpr_ros.retrieval.verification`).
"""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "CameraModel": "selavpr_ros.geometry.camera",
    "KeypointConfig": "selavpr_ros.geometry.features",
    "Keypoints": "selavpr_ros.geometry.features",
    "RelativePose": "selavpr_ros.geometry.estimation",
    "VerificationConfig": "selavpr_ros.geometry.estimation",
    "detect": "selavpr_ros.geometry.features",
    "estimate_relative_pose": "selavpr_ros.geometry.estimation",
    "match": "selavpr_ros.geometry.features",
})
