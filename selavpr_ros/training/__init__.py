"""Training the adapters and heads of any method, without ROS."""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "TrainConfig": "selavpr_ros.training.config",
    "TrainResult": "selavpr_ros.training.trainer",
    "Trainer": "selavpr_ros.training.trainer",
    "load_train_config": "selavpr_ros.training.config",
})
