"""Approximate Hamming search for large maps: an inverted file kept beside the map, memory-mapped.

An exhaustive scan reads every code (N x 64 B per query: ~25 ms at 10 M
keyframes). The IVF clusters the codes (binary k-means on a sample), keeps
each cluster's codes together, and scans only the ``nprobe`` clusters
nearest the query. What it costs in recall is measured in
``benchmarks/retrieval.py``.

Life cycle, so that opening a map never retrains:

* **Persisted** in ``<map>/index/`` as a faiss file plus a JSON record of
  what it covers (map generation, rows, the row count it was trained on,
  code bits, model id). Both are replaced atomically (temporary file, fsync,
  rename), by any process that may write the map folder; a read-only map is
  indexed in memory instead.
* **Opened memory-mapped** (faiss ``IO_FLAG_MMAP_IFC``): the inverted lists are
  paged in from the file as queries touch them, never copied into RAM.
* **Followed as the map grows**: rows added after the file was written go to
  a small in-memory IVF with the same centroids (exact assignment, no
  training) and are searched with it; when they pass ``persist_fraction`` of
  the indexed rows the two are written out as one file again.
* **Retrained** only when the map holds ``retrain_growth`` times the rows the
  centroids were trained on (clusters drawn from a tenth of the data would
  be unbalanced for the rest). Until a map reaches ``min_train_per_list``
  codes per list it is searched exhaustively: there is nothing to gain.
* **Compaction** renumbers rows (a new map generation): the lists are rebuilt
  from the stored centroids, without retraining. Deleted rows stay in the
  lists until then and are skipped by the row mask like everywhere else.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from selavpr_ros.retrieval.hamming import hamming_distances
from selavpr_ros.threads import search_threads

log = logging.getLogger(__name__)

INDEX_DIR = "index"
INDEX_FILE, RECORD_FILE = "ivf.faissbin", "ivf.json"  # in INDEX_DIR of the map folder
FORMAT = 1
MIN_NLIST, MAX_NLIST = 16, 16384
MAX_OVERFETCH = 4096  # excluded rows up to which a masked search asks faiss for k + excluded


def auto_nlist(rows: int) -> int:
    """Lists for ``rows`` codes: the power of two nearest sqrt(rows), within [16, 16384].

    sqrt balances the two costs of a query (centroids compared, list entries
    scanned); the power of two keeps the choice stable while a map grows.
    """
    if rows <= 0:
        return MIN_NLIST
    return int(min(MAX_NLIST, max(MIN_NLIST, 2 ** round(math.log2(math.sqrt(rows))))))


@dataclass(frozen=True)
class IVFSettings:
    """How the IVF is sized and maintained (see :class:`~selavpr_ros.retrieval.config.RetrievalConfig`)."""

    nlist: int = 0  # 0: auto_nlist of the rows at training time
    nprobe: int = 0  # 0: a quarter of the lists (see probes)
    retrain_growth: float = 2.0
    persist_fraction: float = 0.1
    min_train_per_list: int = 40
    train_per_list: int = 64  # training sample: this many codes per list
    train_iterations: int = 10


@dataclass
class IndexRecord:
    """What a persisted index covers (the JSON file beside it)."""

    generation: int
    rows: int
    trained_rows: int
    nlist: int
    code_bits: int
    model_id: str
    format: int = FORMAT

    @classmethod
    def read(cls, path: Path) -> IndexRecord | None:
        try:
            data = json.loads(path.read_text())
            record = cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return record if record.format == FORMAT else None


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class IVFHammingIndex:
    """Hamming top-K over a map's codes through a persisted, memory-mapped inverted file.

    ``folder`` is the map directory (None: nothing persisted); ``generation`` and
    ``model_id`` tie the persisted file to the map it indexes. Rows are map
    rows, added in order with :meth:`add` like :class:`~selavpr_ros.retrieval.hamming.HammingIndex`.
    """

    def __init__(self, bits: int, settings: IVFSettings | None = None, folder: Path | None = None,
                 generation: int = 0, model_id: str = "", map_rows: int | None = None) -> None:
        self.bits = bits
        self.settings = settings or IVFSettings()
        self.generation = generation
        self.model_id = model_id
        self._dir = Path(folder) / INDEX_DIR if folder is not None else None
        self._main: faiss.IndexBinaryIVF | None = None  # persisted part, memory-mapped
        self._main_rows = 0
        self._tail: faiss.IndexBinaryIVF | None = None  # rows added since, same centroids
        self._pending = np.zeros((0, bits // 8), np.uint8)  # before training: searched exhaustively
        self._flat = faiss.IndexBinaryFlat(bits)
        self.trained_rows = 0
        self.nlist = 0
        self.retrains = 0
        self._skip = 0
        self._restore(map_rows)

    # -- files ------------------------------------------------------------------------
    @property
    def _paths(self) -> tuple[Path, Path] | None:
        return None if self._dir is None else (self._dir / INDEX_FILE, self._dir / RECORD_FILE)

    def _restore(self, map_rows: int | None) -> None:
        """Open the persisted index when it belongs to this map (else start empty: rows come by ``add``)."""
        paths = self._paths
        if paths is None or not paths[0].exists():
            return
        record = IndexRecord.read(paths[1])
        if record is None or record.code_bits != self.bits or record.model_id != self.model_id:
            log.info("the index in %s is not this map's; it is rebuilt", self._dir)
            return
        try:
            index = _read(paths[0], mmap=True)
        except (RuntimeError, TypeError) as exc:  # torn or foreign file: the index is a cache of the map
            log.warning("the index in %s is unreadable (%s); it is rebuilt", self._dir, str(exc).splitlines()[0])
            return
        if index.ntotal != record.rows or index.code_size * 8 != self.bits:
            log.info("the index in %s does not match its record; it is rebuilt", self._dir)
            return
        if record.generation != self.generation:
            # the map was compacted (rows renumbered): keep the centroids, rebuild the lists from the rows
            self._set_centroids(_centroids(index), record.trained_rows)
            return
        if map_rows is not None and record.rows > map_rows:
            log.info("the index in %s covers rows the map does not hold; it is rebuilt", self._dir)
            return
        self._set_centroids(_centroids(index), record.trained_rows)
        self._main, self._main_rows = index, record.rows
        self._skip = record.rows  # the first add() re-offers these rows: they are in the file

    def _persist(self) -> None:
        """Write main + tail as one file (atomically), then reopen it memory-mapped."""
        paths = self._paths
        if paths is None or not os.access(self._dir.parent, os.W_OK):  # type: ignore[union-attr]
            return
        index = self._merged_in_ram()
        try:
            self._dir.mkdir(exist_ok=True)  # type: ignore[union-attr]
            _write_atomic(paths[0], lambda p: faiss.write_index_binary(index, str(p)))
            record = IndexRecord(self.generation, index.ntotal, self.trained_rows, self.nlist, self.bits,
                                 self.model_id)
            _write_atomic(paths[1], lambda p: p.write_text(json.dumps(record.__dict__)))
        except OSError as exc:  # read-only or full disk: keep searching from memory
            log.warning("cannot persist the map index in %s (%s); it stays in memory", self._dir, exc)
            return
        self._main = _read(paths[0], mmap=True)
        self._main_rows = self._main.ntotal
        self._tail = self._empty_ivf()

    def _merged_in_ram(self) -> faiss.IndexBinaryIVF:
        paths = self._paths
        if self._main is None:
            out = self._empty_ivf()
        else:
            assert paths is not None
            out = _read(paths[0], mmap=False)  # a writable copy of the persisted lists
        if self._tail is not None and self._tail.ntotal:
            out.merge_from(self._tail, 0)
        return out

    # -- centroids --------------------------------------------------------------------
    def _set_centroids(self, centroids: np.ndarray, trained_rows: int) -> None:
        """New centroids: the lists start empty (the rows are added again)."""
        self.nlist = len(centroids)
        self._centroids = np.ascontiguousarray(centroids, np.uint8)
        self.trained_rows = trained_rows
        self._main, self._main_rows = None, 0
        self._tail = self._empty_ivf()

    def _empty_ivf(self) -> faiss.IndexBinaryIVF:
        quantizer = faiss.IndexBinaryFlat(self.bits)
        quantizer.add(self._centroids)
        index = faiss.IndexBinaryIVF(quantizer, self.bits, self.nlist)  # keeps a reference to the quantizer
        index.is_trained = True
        return index

    def _train(self, codes: np.ndarray) -> None:
        """Binary k-means on a sample of ``codes`` (all rows so far)."""
        s = self.settings
        nlist = s.nlist or auto_nlist(len(codes))
        sample = codes
        if len(codes) > s.train_per_list * nlist:
            pick = np.random.default_rng(len(codes)).choice(len(codes), s.train_per_list * nlist, replace=False)
            sample = codes[np.sort(pick)]
        quantizer = faiss.IndexBinaryFlat(self.bits)
        index = faiss.IndexBinaryIVF(quantizer, self.bits, nlist)
        index.cp.niter = s.train_iterations
        index.cp.seed = 1234
        index.cp.max_points_per_centroid = s.train_per_list
        index.train(np.ascontiguousarray(sample))
        centroids = quantizer.reconstruct_n(0, nlist)
        self._set_centroids(centroids, len(codes))
        self.retrains += 1

    # -- the index API ----------------------------------------------------------------
    @property
    def probes(self) -> int:
        """Lists scanned per query: ``settings.nprobe``, or a quarter of the lists when it is 0.

        The neighbours ranked 10-100 of a place-recognition code lie about as far from
        the query as from each other, in many clusters: measured on codes made like the
        built-in model's, a quarter of 4096 lists gives recall@100 0.955 of the exhaustive
        search at 10 M keyframes (``benchmarks/retrieval.py``).
        """
        return max(1, min(self.settings.nprobe or self.nlist // 4, self.nlist))

    def __len__(self) -> int:
        tail = self._tail.ntotal if self._tail is not None else 0
        return self._main_rows + tail + len(self._pending)

    @property
    def trained(self) -> bool:
        return self.nlist > 0

    def add(self, codes: np.ndarray, all_codes: np.ndarray | None = None) -> None:
        """Index the next rows. ``all_codes`` (every row so far, memory-mapped) serves retraining."""
        codes = np.ascontiguousarray(codes, np.uint8)
        if codes.ndim != 2 or codes.shape[1] * 8 != self.bits:
            raise ValueError(f"codes must be (N, {self.bits // 8}) uint8, got {codes.shape}")
        if self._skip:  # rows the persisted file already holds
            skip = min(self._skip, len(codes))
            codes, self._skip = codes[skip:], self._skip - skip
            if not len(codes):
                return
        start = len(self)
        total = start + len(codes)
        s = self.settings
        if not self.trained:
            history = np.concatenate([self._pending, codes])
            if total < s.min_train_per_list * (s.nlist or auto_nlist(total)):
                self._pending = history  # too few codes per list yet: exhaustive search
                self._flat.add(codes)
                return
        elif total >= s.retrain_growth * self.trained_rows:
            if all_codes is None or len(all_codes) < total:
                raise ValueError(f"retraining at {total} rows needs every row's code (all_codes)")
            history = all_codes[:total]
        else:
            assert self._tail is not None
            self._tail.add_with_ids(codes, np.arange(start, total, dtype=np.int64))
            if self._tail.ntotal >= s.persist_fraction * max(self._main_rows, 1):
                self._persist()
            return
        self._train(np.asarray(history))
        self._pending = np.zeros((0, self.bits // 8), np.uint8)
        self._flat.reset()
        assert self._tail is not None
        for lo in range(0, total, 1 << 20):  # bounded copies out of the memory map
            chunk = np.ascontiguousarray(history[lo : lo + (1 << 20)])
            self._tail.add_with_ids(chunk, np.arange(lo, lo + len(chunk), dtype=np.int64))
        self._persist()

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows per query among the ``nprobe`` nearest lists: (distances, rows), -1 rows where fewer.

        faiss's binary IVF takes no row selector, so a mask is applied exactly
        another way: with few excluded rows, the top ``k`` + excluded of the
        probed lists hold the top ``k`` allowed ones; with many (a deleted
        session), the probed lists are scanned here, reading the memory-mapped
        lists in place.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), np.uint8)
        n = len(self)
        if n == 0 or k <= 0:
            return np.zeros((len(queries), 0), np.int32), np.zeros((len(queries), 0), np.int64)
        k = min(k, n)
        if allowed is not None and len(allowed) != n:
            raise ValueError(f"allowed mask has {len(allowed)} rows, index has {n}")
        if allowed is not None and allowed.all():
            allowed = None
        excluded = 0 if allowed is None else n - int(np.count_nonzero(allowed))
        faiss.omp_set_num_threads(search_threads(n))
        parts = []
        if len(self._pending):
            parts.append(self._flat.search(queries, min(k + excluded, self._flat.ntotal)))
        for index in (self._main, self._tail):
            if index is None or index.ntotal == 0:
                continue
            if excluded > MAX_OVERFETCH:
                parts.append(self._scan_lists(index, queries, k, allowed))  # type: ignore[arg-type]
            else:
                params = faiss.SearchParametersIVF()
                params.nprobe = self.probes
                parts.append(index.search(queries, min(k + excluded, index.ntotal), params=params))
        dist = np.concatenate([d for d, _ in parts], axis=1).astype(np.int32)
        rows = np.concatenate([r for _, r in parts], axis=1).astype(np.int64)
        drop = rows < 0
        if allowed is not None:
            drop |= ~allowed[np.maximum(rows, 0)]
        dist = np.where(drop, np.iinfo(np.int32).max, dist)
        rows = np.where(drop, -1, rows)
        order = np.lexsort((rows, dist), axis=1)[:, :k]  # by distance, then row: one order for every path
        return np.take_along_axis(dist, order, 1), np.take_along_axis(rows, order, 1)

    def _scan_lists(self, index: faiss.IndexBinaryIVF, queries: np.ndarray, k: int,
                    allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The probed lists' allowed entries, scanned in place (zero-copy views of the lists)."""
        _, probe = index.quantizer.search(queries, self.probes)
        invlists, width = index.invlists, self.bits // 8
        dist = np.full((len(queries), k), np.iinfo(np.int32).max, np.int32)
        rows = np.full((len(queries), k), -1, np.int64)
        for qi, lists in enumerate(probe):
            got_d, got_r = [], []
            for lst in lists[lists >= 0]:
                size = invlists.list_size(int(lst))
                if not size:
                    continue
                ids = faiss.rev_swig_ptr(invlists.get_ids(int(lst)), size)
                keep = allowed[ids]
                if not keep.any():
                    continue
                codes = faiss.rev_swig_ptr(invlists.get_codes(int(lst)), size * width).reshape(size, width)[keep]
                got_d.append(hamming_distances(queries[qi], codes))
                got_r.append(ids[keep])
            if not got_d:
                continue
            d, r = np.concatenate(got_d), np.concatenate(got_r)
            top = np.lexsort((r, d))[:k]
            dist[qi, : len(top)], rows[qi, : len(top)] = d[top].astype(np.int32), r[top]
        return dist, rows


def _centroids(index: faiss.IndexBinaryIVF) -> np.ndarray:
    return np.array(index.quantizer.reconstruct_n(0, index.nlist), np.uint8).reshape(index.nlist, index.code_size)


def _read(path: Path, mmap: bool) -> faiss.IndexBinaryIVF:
    """A persisted index: memory-mapped and read-only, or a writable copy in RAM."""
    flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0  # (IO_FLAG_MMAP: 30x slower scans)
    index = faiss.read_index_binary(str(path), flags)
    if not isinstance(index, faiss.IndexBinaryIVF):
        raise TypeError(f"{path} holds a {type(index).__name__}, not a binary IVF")
    return index
