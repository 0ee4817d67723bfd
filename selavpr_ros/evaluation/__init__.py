"""Evaluation: Recall@N per retrieval stage, latency and size, reports with figures."""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "EvalReport": "selavpr_ros.evaluation.evaluate",
    "descriptor_recall": "selavpr_ros.evaluation.baselines",
    "load_eval_set": "selavpr_ros.evaluation.evaluate",
    "pixel_recall": "selavpr_ros.evaluation.baselines",
    "recall_at": "selavpr_ros.evaluation.recall",
    "write_report": "selavpr_ros.evaluation.evaluate",
})
