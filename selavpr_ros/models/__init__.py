"""Models: the DINOv2 trunk, the method registry and the methods, checkpoints and importers.

Public names are imported lazily, so ``import selavpr_ros.models`` loads no
PyTorch until a model is actually needed.
"""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "MethodConfig": "selavpr_ros.models.config",
    "ModelConfig": "selavpr_ros.models.config",
    "MethodSpec": "selavpr_ros.models.registry",
    "get_method": "selavpr_ros.models.registry",
    "list_methods": "selavpr_ros.models.registry",
    "register_method": "selavpr_ros.models.registry",
    "VPRModel": "selavpr_ros.models.vpr",
    "VPROutput": "selavpr_ros.models.vpr",
    "build_model": "selavpr_ros.models.vpr",
    "Checkpoint": "selavpr_ros.models.checkpoint",
    "load_checkpoint": "selavpr_ros.models.checkpoint",
    "read_checkpoint": "selavpr_ros.models.checkpoint",
    "save_checkpoint": "selavpr_ros.models.checkpoint",
    "import_release": "selavpr_ros.models.importers",
    "builtin_checkpoint": "selavpr_ros.models.zoo",
    "resolve_checkpoint": "selavpr_ros.models.zoo",
})
