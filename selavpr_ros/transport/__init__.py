"""Wire formats: decoding camera messages without cv_bridge and ROS 2 message types for bags and DDS."""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "decode_any": "selavpr_ros.transport.image_decoding",
    "decode_compressed": "selavpr_ros.transport.image_decoding",
    "decode_image": "selavpr_ros.transport.image_decoding",
    "encode_compressed": "selavpr_ros.transport.image_decoding",
    "encode_image": "selavpr_ros.transport.image_decoding",
    "message": "selavpr_ros.transport.msgtypes",
    "typestore": "selavpr_ros.transport.msgtypes",
})
