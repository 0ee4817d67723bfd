"""Datasets by layout (frame-aligned sequences, UTM-named images, GSV-Cities, maps) as EvalSet,
PlaceSet and PoseSet."""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "EvalSet": "selavpr_ros.datasets.base",
    "PlaceSet": "selavpr_ros.datasets.base",
    "PoseSet": "selavpr_ros.datasets.base",
    "fov_overlap": "selavpr_ros.datasets.fov",
    "load_gsv_cities": "selavpr_ros.datasets.gsv_cities",
    "load_map_eval": "selavpr_ros.datasets.map_data",
    "load_map_places": "selavpr_ros.datasets.map_data",
    "load_map_poses": "selavpr_ros.datasets.map_data",
    "load_sequence_eval": "selavpr_ros.datasets.sequence",
    "load_sequence_places": "selavpr_ros.datasets.sequence",
    "load_utm_eval": "selavpr_ros.datasets.utm",
    "load_utm_places": "selavpr_ros.datasets.utm",
})
