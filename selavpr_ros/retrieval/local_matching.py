"""SelaVPR local re-ranking: count mutual nearest neighbours between dense feature maps.

For a query map Q (Lq x C) and a candidate map D (Ld x C) of unit vectors,
location j of Q and i of D are a pair when i is j's most similar location in
D and j is i's most similar location in Q. The score is the number of pairs
(no RANSAC). The reference computes a dense K x Ld x Lq similarity (5.5 GB
at K = 100, 61 x 61); here candidates are processed one at a time and, within
a candidate, in row chunks under a memory budget (cache-sized), so the cost is
the matmul's. Per chunk only contiguous reductions run: each row's argmax and
each column's maximum; a row that attains its column's chunk maximum is a
pair when that chunk holds the column's first global maximum and no earlier
row of the chunk attains it. Ties resolve to the first index, as ``argmax``
does, so the counts equal the dense computation exactly.

On the CPU this is NumPy (fp32 matmul through its BLAS): no PyTorch needed,
so ONNX-only robots re-rank too. PyTorch is used, when installed, for CUDA
and for the reduced-precision variant (``half``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from selavpr_ros.retrieval.config import DEFAULT_LOCAL_BUDGET


def _unit_rows(x: Any, dim: int) -> np.ndarray:
    """(L, C) float32 rows of a feature map; int8-stored unit vectors are scaled back."""
    a = np.asarray(x)
    a = a.astype(np.float32) / 127.0 if a.dtype == np.int8 else np.asarray(a, np.float32)
    return np.ascontiguousarray(a.reshape(-1, dim))


def mutual_nn_counts(
    query: Any,
    candidates: Any,
    budget: int = DEFAULT_LOCAL_BUDGET,
    device: str = "cpu",
    half: bool = False,
) -> np.ndarray:
    """Mutual-nearest-neighbour counts of ``query`` (h, w, C) against each of ``candidates`` (K, h', w', C).

    ``half`` computes similarities in bfloat16 on the CPU (float16 on CUDA), with PyTorch:
    several times faster where the hardware has it, but near-ties may then
    resolve differently from the fp32 computation.
    """
    if half or str(device) != "cpu":
        return _torch_counts(query, candidates, budget, str(device), half)
    dim = np.shape(query)[-1]
    q = _unit_rows(query, dim)
    counts = np.zeros(len(candidates), np.int64)
    work = _Workspace(q, budget)
    for k in range(len(candidates)):
        counts[k] = len(_mutual_pairs(q, _unit_rows(candidates[k], dim), budget, work)[0])
    return counts


def mutual_nn_pairs(query: np.ndarray, candidate: np.ndarray,
                    budget: int = DEFAULT_LOCAL_BUDGET) -> tuple[np.ndarray, np.ndarray]:
    """The matched locations themselves: (query flat indices, candidate flat indices), for drawing."""
    dim = query.shape[-1]
    return _mutual_pairs(_unit_rows(query, dim), _unit_rows(candidate, dim), budget)


class _Workspace:
    """What every candidate of one query reuses: the query transposed (contiguous, as BLAS packs it
    fastest) and the chunk's similarity buffer (a fresh one per chunk costs page faults)."""

    def __init__(self, q: np.ndarray, budget: int) -> None:
        self.rows = max(1, budget // max(q.shape[0], 1))
        self.qt = np.ascontiguousarray(q.T)
        self.sim = np.empty((self.rows, q.shape[0]), np.float32)


def _mutual_pairs(q: np.ndarray, d: np.ndarray, budget: int,
                  work: _Workspace | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours of sim = d @ q.T as (q indices ascending, d indices), in chunks of d rows."""
    work = work or _Workspace(q, budget)
    ld, lq = d.shape[0], q.shape[0]
    rows, qt = work.rows, work.qt
    col_max = np.full(lq, -np.inf, np.float32)
    col_chunk = np.full(lq, -1, np.int64)  # the first chunk holding the column's maximum
    found: list[tuple[int, np.ndarray, np.ndarray]] = []
    for c, s in enumerate(range(0, ld, rows)):
        block = d[s : s + rows]
        sim = np.matmul(block, qt, out=work.sim[: len(block)])  # (rows, Lq), fp32
        best = sim.argmax(1)  # each row's first best column
        chunk_max = sim.max(0)
        better = chunk_max > col_max  # strict: an earlier chunk keeps a tie
        col_max[better] = chunk_max[better]
        col_chunk[better] = c
        hit = np.flatnonzero(sim[np.arange(len(best)), best] == chunk_max[best])  # rows at their column's max
        if not len(hit):
            continue
        cols, inverse = np.unique(best[hit], return_inverse=True)
        first = (sim[:, cols] == chunk_max[cols]).argmax(0)  # the first row of this chunk at that maximum
        keep = first[inverse] == hit
        found.append((c, s + hit[keep], best[hit][keep]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    chunk = np.concatenate([np.full(len(r), c) for c, r, _ in found])
    d_idx = np.concatenate([r for _, r, _ in found])
    q_idx = np.concatenate([j for _, _, j in found])
    mutual = col_chunk[q_idx] == chunk
    order = np.argsort(q_idx[mutual], kind="stable")
    return q_idx[mutual][order], d_idx[mutual][order]


def dense_mutual_nn_counts(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The reference formulation (one K x Ld x Lq similarity); for tests and benchmarks only."""
    q = np.asarray(query, np.float32).reshape(-1, query.shape[-1])
    d = np.asarray(candidates, np.float32).reshape(len(candidates), -1, q.shape[1])
    m = d @ q.T  # (K, Ld, Lq)
    max1 = m.argmax(axis=1)  # best candidate location per query location
    max2 = m.argmax(axis=2)  # best query location per candidate location
    back = np.take_along_axis(max2, max1, axis=1)
    return (back == np.arange(q.shape[0])).sum(axis=1)


def _torch_counts(query: Any, candidates: Any, budget: int, device: str, half: bool) -> np.ndarray:
    """The same counts with PyTorch: on CUDA, or in bfloat16/float16 (``half``)."""
    try:
        import torch
    except ImportError:
        from selavpr_ros.errors import ConfigError

        raise ConfigError(f"local re-ranking on {device}{' in half precision' if half else ''} needs PyTorch "
                          "(pip install torch); on the CPU in fp32 it runs without") from None
    dev = torch.device(device)
    dtype = (torch.float16 if dev.type == "cuda" else torch.bfloat16) if half else torch.float32
    dim = np.shape(query)[-1]

    def rows(x: Any) -> Any:
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(_unit_rows(x, dim))
        return t.reshape(-1, dim).to(device=dev, dtype=dtype)

    q = rows(query)
    arange = torch.arange(q.shape[0], device=dev)
    counts = np.zeros(len(candidates), np.int64)
    with torch.inference_mode():
        for k in range(len(candidates)):
            best_q_for_d, best_d_for_q = _nearest(q, rows(candidates[k]), budget)
            counts[k] = int((best_q_for_d[best_d_for_q] == arange).sum())
    return counts


def _nearest(q: Any, d: Any, budget: int) -> tuple[Any, Any]:
    """For sim = d @ q.T (PyTorch tensors, whose reductions along either axis are vectorised): best q
    index per d row (row argmax) and best d index per q column (column argmax)."""
    import torch

    ld, lq = d.shape[0], q.shape[0]
    rows = max(1, budget // max(lq, 1))
    parts = []
    col_val: Any = None
    col_idx: Any = None
    qt = q.T
    for s in range(0, ld, rows):
        sim = d[s : s + rows] @ qt  # (rows, Lq)
        parts.append(sim.argmax(1))
        val = sim.max(0).values
        idx = sim.argmax(0) + s
        if col_val is None:
            col_val, col_idx = val, idx
            continue
        better = val > col_val  # strict: earlier rows win ties, as argmax over the full column does
        col_val[better] = val[better]
        col_idx[better] = idx[better]
    return torch.cat(parts), col_idx
