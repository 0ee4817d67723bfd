"""Inference: preprocessing and the backends that turn images into Descriptors (PyTorch, ONNX Runtime)."""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "Extractor": "selavpr_ros.inference.base",
    "OnnxExtractor": "selavpr_ros.inference.onnx_backend",
    "TorchExtractor": "selavpr_ros.inference.torch_backend",
    "export_onnx": "selavpr_ros.inference.onnx_backend",
    "load_image": "selavpr_ros.inference.preprocess",
    "open_extractor": "selavpr_ros.inference.loader",
    "preprocess_batch": "selavpr_ros.inference.preprocess",
})
