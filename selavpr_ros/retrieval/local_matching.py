"""SelaVPR local re-ranking: count mutual nearest neighbours between dense feature maps.

For a query map Q (Lq x C) and a candidate map D (Ld x C) of unit vectors,
location j of Q and i of D are a pair when i is j's most similar location in
D and j is i's most similar location in Q. The score is the number of pairs
(no RANSAC). The reference computes a dense K x Ld x Lq similarity (5.5 GB
at K = 100, 61 x 61); here candidates are processed one at a time and, within
a candidate, in row chunks under a memory budget, keeping running column
maxima. Ties resolve to the first index, as ``argmax`` does, so the counts
equal the dense computation exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from selavpr_ros.retrieval.config import DEFAULT_LOCAL_BUDGET


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.dtype == torch.int8:  # int8-stored unit vectors
        t = t.float() / 127.0
    return t.to(device=device, dtype=dtype)


def _nearest(q: torch.Tensor, d: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For sim = d @ q.T: best q index per d row (row argmax) and best d index per q column (column argmax)."""
    ld, lq = d.shape[0], q.shape[0]
    rows = max(1, budget // max(lq, 1))
    best_q_for_d = torch.empty(ld, dtype=torch.long, device=d.device)
    col_val = torch.full((lq,), float("-inf"), dtype=torch.float32, device=d.device)
    col_idx = torch.zeros(lq, dtype=torch.long, device=d.device)
    qt = q.T
    for s in range(0, ld, rows):
        sim = d[s : s + rows] @ qt  # (rows, Lq)
        best_q_for_d[s : s + rows] = sim.argmax(dim=1)
        val, idx = sim.max(dim=0)
        val = val.float()
        better = val > col_val  # strict: earlier rows win ties, as argmax over the full column does
        col_val = torch.where(better, val, col_val)
        col_idx = torch.where(better, idx + s, col_idx)
    return best_q_for_d, col_idx


@torch.inference_mode()
def mutual_nn_counts(
    query: np.ndarray | torch.Tensor,
    candidates: np.ndarray | torch.Tensor,
    budget: int = DEFAULT_LOCAL_BUDGET,
    device: str | torch.device = "cpu",
    half: bool = False,
) -> np.ndarray:
    """Mutual-nearest-neighbour counts of ``query`` (h, w, C) against each of ``candidates`` (K, h', w', C).

    ``half`` computes similarities in bfloat16 on the CPU (float16 on CUDA):
    several times faster where the hardware has it, but near-ties may then
    resolve differently from the fp32 computation.
    """
    device = torch.device(device)
    dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if half else torch.float32
    q = _as_tensor(query, device, dtype).reshape(-1, query.shape[-1])
    counts = np.zeros(len(candidates), np.int64)
    arange = torch.arange(q.shape[0], device=device)
    for k in range(len(candidates)):
        d = _as_tensor(candidates[k], device, dtype).reshape(-1, q.shape[1])
        best_q_for_d, best_d_for_q = _nearest(q, d, budget)
        counts[k] = int((best_q_for_d[best_d_for_q] == arange).sum())
    return counts


@torch.inference_mode()
def mutual_nn_pairs(
    query: np.ndarray, candidate: np.ndarray, budget: int = DEFAULT_LOCAL_BUDGET
) -> tuple[np.ndarray, np.ndarray]:
    """The matched locations themselves: (query flat indices, candidate flat indices), for drawing."""
    q = _as_tensor(query, torch.device("cpu"), torch.float32).reshape(-1, query.shape[-1])
    d = _as_tensor(candidate, torch.device("cpu"), torch.float32).reshape(-1, q.shape[1])
    best_q_for_d, best_d_for_q = _nearest(q, d, budget)
    qi = torch.nonzero(best_q_for_d[best_d_for_q] == torch.arange(q.shape[0])).flatten()
    return qi.numpy(), best_d_for_q[qi].numpy()


def dense_mutual_nn_counts(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The reference formulation (one K x Ld x Lq similarity); for tests and benchmarks only."""
    q = torch.from_numpy(np.ascontiguousarray(query, np.float32)).reshape(-1, query.shape[-1])
    d = torch.from_numpy(np.ascontiguousarray(candidates, np.float32)).reshape(len(candidates), -1, q.shape[1])
    m = d @ q.T  # (K, Ld, Lq)
    max1 = m.argmax(dim=1)  # best candidate location per query location
    max2 = m.argmax(dim=2)  # best query location per candidate location
    back = torch.gather(max2, 1, max1)
    return (back == torch.arange(q.shape[0])).sum(dim=1).numpy()
