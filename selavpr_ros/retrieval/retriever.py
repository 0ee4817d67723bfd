"""Three-stage place retrieval over a map database.

1. ``binary``: Hamming top-K over the 512-bit codes (exhaustive, or IVF for huge maps);
2. ``float``: re-rank those K by cosine of the float descriptors;
3. ``local``: re-rank the best ``local_k`` by SelaVPR mutual-nearest-neighbour counts.

Other stage lists serve comparisons: ``[float]`` is an exhaustive float
search (what the papers' code does), ``[float, local]`` and ``[binary, local]``
skip a stage. Exclusions (recent keyframes, time windows, ids, deleted
sessions) are a row mask applied inside the first stage's scan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from selavpr_ros.errors import ConfigError
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.mapdb.records import pool_local
from selavpr_ros.retrieval.config import RetrievalConfig
from selavpr_ros.retrieval.hamming import HammingIndex, row_selector
from selavpr_ros.retrieval.ivf import IVFHammingIndex, IVFSettings
from selavpr_ros.retrieval.local_matching import mutual_nn_counts
from selavpr_ros.types import Descriptors


@dataclass
class Candidates:
    """Ranked map rows for one query, with each stage's evidence (-1 / NaN where not computed)."""

    rows: np.ndarray
    hamming: np.ndarray
    similarity: np.ndarray
    local_matches: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, order: np.ndarray) -> Candidates:
        return Candidates(
            self.rows[order], self.hamming[order], self.similarity[order], self.local_matches[order], self.timings_ms
        )

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int64))


class Retriever:
    """Searches a :class:`MapDatabase`; follows the map as it grows (call :meth:`sync`)."""

    def __init__(self, database: MapDatabase, config: RetrievalConfig | None = None) -> None:
        self.db = database
        self.config = config or RetrievalConfig()
        if "local" in self.config.stages and not database.info.stored.stores_local:
            raise ConfigError(f"retrieval stage 'local' needs local features, but map {database.path} stores none")
        self._hamming = self._binary_index()
        self._float_index: faiss.IndexFlatIP | None = None
        self._synced = 0
        self._generation = database.info.generation  # rows are renumbered when this changes (compaction)
        self.sync()

    def _binary_index(self) -> HammingIndex | IVFHammingIndex:
        cfg, db = self.config, self.db
        if cfg.index == "flat":
            return HammingIndex(db.layout.code_bits)
        settings = IVFSettings(nlist=cfg.ivf_nlist, nprobe=cfg.ivf_nprobe, retrain_growth=cfg.ivf_retrain_growth)
        return IVFHammingIndex(db.layout.code_bits, settings, db.path, db.info.generation, db.model_id,
                               map_rows=db.count)

    @property
    def hamming_index(self) -> HammingIndex | IVFHammingIndex:
        return self._hamming

    @property
    def indexed(self) -> int:
        """Map rows currently searchable."""
        return self._synced

    def sync(self) -> int:
        """Index keyframes committed since the last call; returns how many were added."""
        self.db.refresh()
        n = self.db.count
        if self.db.info.generation != self._generation or n < self._synced:  # compacted: rows renumbered
            type(self).__init__(self, self.db, self.config)
            return n
        new = n - self._synced
        if new:
            if self.config.stages[0] == "binary":
                self._hamming.add(self.db.codes[self._synced : n], all_codes=self.db.codes)
            else:
                if self._float_index is None:
                    self._float_index = faiss.IndexFlatIP(self.db.layout.float_dim)
                self._float_index.add(np.ascontiguousarray(self.db.float_descriptors[self._synced : n], np.float32))
            self._synced = n
        return new

    def _allowed(self, allowed: np.ndarray | None) -> np.ndarray | None:
        live = self.db.live_mask()[: self._synced]
        if allowed is None:
            return None if live.all() else live
        if len(allowed) != self._synced:
            raise ValueError(f"exclusion mask covers {len(allowed)} rows, the index has {self._synced}")
        return allowed & live

    def search(self, query: Descriptors, allowed: np.ndarray | None = None) -> Candidates:
        """Candidates for one query (``query`` holds one row). ``allowed`` masks map rows."""
        if len(query) != 1:
            raise ValueError(f"search takes one query, got {len(query)}; use search_batch")
        return self.search_batch(query, allowed)[0]

    def search_batch(self, queries: Descriptors, allowed: np.ndarray | None = None) -> list[Candidates]:
        """Candidates for each query row (the first stage runs batched)."""
        cfg = self.config
        if self._synced == 0:
            return [Candidates.empty() for _ in range(len(queries))]
        mask = self._allowed(allowed)
        t0 = time.perf_counter()
        if cfg.stages[0] == "binary":
            dist, rows = self._hamming.search(queries.codes, cfg.k, mask)
        else:
            dist, rows = self._float_search(queries.descriptors, cfg.k, mask)
        first_ms = (time.perf_counter() - t0) * 1000 / max(len(queries), 1)
        results = []
        for q in range(len(queries)):
            valid = rows[q] >= 0
            r = rows[q][valid].astype(np.int64)
            n = len(r)
            cand = Candidates(
                r,
                dist[q][valid].astype(np.int32) if cfg.stages[0] == "binary" else np.full(n, -1, np.int32),
                dist[q][valid].astype(np.float32) if cfg.stages[0] == "float" else np.full(n, np.nan, np.float32),
                np.full(n, -1, np.int64),
                {cfg.stages[0]: first_ms},
            )
            if "float" in cfg.stages[1:]:
                cand = self._float_rerank(cand, queries.descriptors[q])
            if "local" in cfg.stages:
                local = queries.local_features
                cand = self._local_rerank(cand, None if local is None else local[q])
            results.append(cand)
        return results

    def _float_search(self, descriptors: np.ndarray, k: int, mask: np.ndarray | None):
        q = np.ascontiguousarray(descriptors, np.float32)
        assert self._float_index is not None  # made by sync for a float first stage
        sel, _keep = row_selector(mask)
        k = min(k, self._float_index.ntotal)
        if sel is None:
            return self._float_index.search(q, k)
        params = faiss.SearchParameters()  # attribute, not keyword: faiss's stubs do not declare the keyword
        params.sel = sel
        return self._float_index.search(q, k, params=params)

    def _float_rerank(self, cand: Candidates, query: np.ndarray) -> Candidates:
        t0 = time.perf_counter()
        order_in = np.argsort(cand.rows, kind="stable")
        gathered = np.empty((len(cand), self.db.layout.float_dim), np.float32)
        gathered[order_in] = self.db.float_descriptors[cand.rows[order_in]]  # sorted reads from the memory map
        sim = gathered @ np.asarray(query, np.float32)
        cand.similarity = sim.astype(np.float32)
        # Higher similarity first; ties keep the Hamming order (lexsort: last key is primary).
        order = np.lexsort((np.arange(len(cand)), -sim))
        out = cand.take(order)
        out.timings_ms = {**cand.timings_ms, "float": (time.perf_counter() - t0) * 1000}
        return out

    def _local_rerank(self, cand: Candidates, query_local: np.ndarray | None) -> Candidates:
        if query_local is None:
            raise ConfigError("retrieval stage 'local' needs the query's local features (a SelaVPR model)")
        t0 = time.perf_counter()
        cfg = self.config
        k = min(cfg.local_k, len(cand))
        head = cand.rows[:k]
        stored = self.db.local_features
        assert stored is not None  # __init__ refuses the local stage on maps without local features
        order_in = np.argsort(head, kind="stable")
        cands = np.empty((k, *stored.shape[1:]), stored.dtype)
        cands[order_in] = stored[head[order_in]]
        query = pool_local(query_local[None], self.db.info.stored.storage.local_pool)[0]
        counts = mutual_nn_counts(query, cands, cfg.local_budget, cfg.local_device, cfg.local_half)
        cand.local_matches = cand.local_matches.copy()
        cand.local_matches[:k] = counts
        order = np.concatenate([np.lexsort((np.arange(k), -counts)), np.arange(k, len(cand))])
        out = cand.take(order)
        out.timings_ms = {**cand.timings_ms, "local": (time.perf_counter() - t0) * 1000}
        return out
