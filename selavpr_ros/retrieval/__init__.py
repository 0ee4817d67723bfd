"""Retrieval: Hamming top-K over binary codes, float re-rank, SelaVPR local re-rank, geometric verification."""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "Candidates": "selavpr_ros.retrieval.retriever",
    "HammingIndex": "selavpr_ros.retrieval.hamming",
    "QueryView": "selavpr_ros.retrieval.verification",
    "Verifier": "selavpr_ros.retrieval.verification",
    "RetrievalConfig": "selavpr_ros.retrieval.config",
    "Retriever": "selavpr_ros.retrieval.retriever",
    "mutual_nn_counts": "selavpr_ros.retrieval.local_matching",
    "parse_stages": "selavpr_ros.retrieval.config",
})
