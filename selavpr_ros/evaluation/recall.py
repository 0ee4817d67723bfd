"""Recall@N: a query counts as correct when any of its top N predictions is a true match.

Queries without any true match in the database are left out (and counted),
as the standard benchmarks do.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from selavpr_ros.retrieval.hamming import HammingIndex


def recall_at(predictions: np.ndarray, positives: Sequence[np.ndarray], ns: Sequence[int]) -> dict[int, float]:
    """Recall@N in percent for each N in ``ns``; ``predictions`` is (Q, K) database indices."""
    valid = [q for q, pos in enumerate(positives) if len(pos)]
    if not valid:
        return {n: float("nan") for n in ns}
    first_hit = np.full(len(valid), np.iinfo(np.int64).max)
    for row, q in enumerate(valid):
        hits = np.flatnonzero(np.isin(predictions[q], positives[q]))
        if len(hits):
            first_hit[row] = hits[0]
    return {int(n): float(100.0 * np.mean(first_hit < n)) for n in ns}


def rank_float(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` database rows per query by inner product (cosine for unit vectors)."""
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(np.ascontiguousarray(database, np.float32))
    return index.search(np.ascontiguousarray(queries, np.float32), min(k, len(database)))[1]


def rank_binary(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` database rows per query by Hamming distance of packed codes."""
    index = HammingIndex(database.shape[1] * 8)
    index.add(database)
    return index.search(queries, min(k, len(database)))[1]
