"""Stage 1: Hamming top-K over packed binary codes (faiss), with row filters inside the scan.

Exclusions are passed to faiss as a selector, so excluded rows are skipped
during the scan and can never take places in the top-K (no starvation).
``flat`` is exhaustive and exact; ``ivf`` (inverted file over a k-means of
the codes) is approximate for very large maps, its recall loss measured in
``benchmarks/retrieval.py``.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from selavpr_ros.threads import search_threads


def hamming_distances(query: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Exact Hamming distances of one packed query code to many (NumPy; for checks and small sets)."""
    x = np.bitwise_xor(codes, query[None, :])
    return np.unpackbits(x, axis=1).sum(axis=1)


def row_selector(allowed: np.ndarray | None):
    """faiss selector keeping rows where ``allowed`` is True (None or all-True: no selector)."""
    if allowed is None or allowed.all():
        return None, None
    bits = np.packbits(allowed.astype(np.uint8), bitorder="little")
    sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
    return sel, bits  # the bitmap must outlive the search


class HammingIndex:
    """Binary codes of a map, searchable by Hamming distance."""

    def __init__(self, bits: int, kind: str = "flat", nlist: int = 0, nprobe: int = 16) -> None:
        if kind not in ("flat", "ivf"):
            raise ValueError(f"index kind must be 'flat' or 'ivf', got {kind!r}")
        self.bits = bits
        self.kind = kind
        self.nlist = nlist
        self.nprobe = nprobe
        self._index: faiss.IndexBinary | None = faiss.IndexBinaryFlat(bits) if kind == "flat" else None
        self._pending: list[np.ndarray] = []

    def __len__(self) -> int:
        return 0 if self._index is None else self._index.ntotal

    def add(self, codes: np.ndarray) -> None:
        codes = np.ascontiguousarray(codes, np.uint8)
        if codes.ndim != 2 or codes.shape[1] * 8 != self.bits:
            raise ValueError(f"codes must be (N, {self.bits // 8}) uint8, got {codes.shape}")
        if self.kind == "ivf" and self._index is None:
            self._build_ivf(codes)
        assert self._index is not None  # flat: made in __init__; ivf: built just above
        self._index.add(codes)

    def _build_ivf(self, codes: np.ndarray) -> None:
        nlist = self.nlist or max(1, int(4 * math.sqrt(len(codes))))
        quantizer = faiss.IndexBinaryFlat(self.bits)
        index = faiss.IndexBinaryIVF(quantizer, self.bits, nlist)
        train = codes if len(codes) <= 256 * nlist else codes[np.random.default_rng(0).choice(len(codes), 256 * nlist)]
        index.train(train)
        index.nprobe = self.nprobe
        self._quantizer = quantizer  # keep alive
        self._index = index

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows per query: (distances, rows), -1 rows where fewer than ``k`` exist."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), np.uint8)
        if len(self) == 0 or k <= 0:
            return np.zeros((len(queries), 0), np.int32), np.zeros((len(queries), 0), np.int64)
        k = min(k, len(self))
        if allowed is not None and len(allowed) != len(self):
            raise ValueError(f"allowed mask has {len(allowed)} rows, index has {len(self)}")
        assert self._index is not None  # len(self) > 0
        faiss.omp_set_num_threads(search_threads(len(self)))  # small maps: one thread beats waking a pool
        sel, _keep = row_selector(allowed)
        if sel is None:
            return self._index.search(queries, k)
        # Attributes rather than keyword arguments (which faiss accepts, but its stubs do not declare).
        params: faiss.SearchParameters
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF()
            params.sel, params.nprobe = sel, self.nprobe
        else:
            params = faiss.SearchParameters()
            params.sel = sel
        return self._index.search(queries, k, params=params)
