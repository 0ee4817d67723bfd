"""Stage 1: Hamming top-K over packed binary codes (faiss), with row filters inside the scan.

Exclusions are passed to faiss as a selector, so excluded rows are skipped
during the scan and can never take places in the top-K (no starvation).
:class:`HammingIndex` is exhaustive and exact; for very large maps
:class:`~selavpr_ros.retrieval.ivf.IVFHammingIndex` is approximate (its recall
cost measured in ``benchmarks/retrieval.py``).
"""

from __future__ import annotations

import faiss
import numpy as np

from selavpr_ros.threads import search_threads


def hamming_distances(query: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Exact Hamming distances of one packed query code to many (NumPy, int64)."""
    x = np.bitwise_xor(codes, query[None, :])
    if hasattr(np, "bitwise_count") and x.shape[1] % 8 == 0:  # NumPy 2: one popcount per 64-bit word
        return np.bitwise_count(x.view(np.uint64)).sum(axis=1, dtype=np.int64)
    return np.unpackbits(x, axis=1).sum(axis=1, dtype=np.int64)


def row_selector(allowed: np.ndarray | None):
    """faiss selector keeping rows where ``allowed`` is True (None or all-True: no selector)."""
    if allowed is None or allowed.all():
        return None, None
    bits = np.packbits(allowed.astype(np.uint8), bitorder="little")
    sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
    return sel, bits  # the bitmap must outlive the search


class HammingIndex:
    """Binary codes of a map, searched exhaustively by Hamming distance (exact)."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self._index = faiss.IndexBinaryFlat(bits)

    def __len__(self) -> int:
        return self._index.ntotal

    def add(self, codes: np.ndarray, all_codes: np.ndarray | None = None) -> None:
        """Index the next rows (``all_codes`` is for indexes that retrain; unused here)."""
        codes = np.ascontiguousarray(codes, np.uint8)
        if codes.ndim != 2 or codes.shape[1] * 8 != self.bits:
            raise ValueError(f"codes must be (N, {self.bits // 8}) uint8, got {codes.shape}")
        self._index.add(codes)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows per query: (distances, rows), -1 rows where fewer than ``k`` exist."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), np.uint8)
        if len(self) == 0 or k <= 0:
            return np.zeros((len(queries), 0), np.int32), np.zeros((len(queries), 0), np.int64)
        k = min(k, len(self))
        if allowed is not None and len(allowed) != len(self):
            raise ValueError(f"allowed mask has {len(allowed)} rows, index has {len(self)}")
        faiss.omp_set_num_threads(search_threads(len(self)))  # small maps: one thread beats waking a pool
        sel, _keep = row_selector(allowed)
        if sel is None:
            return self._index.search(queries, k)
        params = faiss.SearchParameters()  # an attribute: faiss's stubs do not declare the keyword
        params.sel = sel
        return self._index.search(queries, k, params=params)
