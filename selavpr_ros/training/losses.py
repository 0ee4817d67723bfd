"""The seeds' training losses, written out so that each can be checked by hand.

* :func:`triplet_loss` — SelaVPR's global loss (margin 0.1, Euclidean), batch-hard;
* :func:`mnn_local_loss` — SelaVPR's local loss: mean similarity over mutual
  nearest neighbours, positive vs negative, hinge at 0;
* :func:`multi_similarity_miner` / :func:`multi_similarity_loss` — SelaVPR++
  and EMVP (alpha 1, beta 50, base 0, miner epsilon 0.1);
* :func:`hash_similarity_loss` — SelaVPR++'s constraint between the cosine of
  the continuous hash and the normalised Hamming similarity of its signs;
* :func:`generalized_contrastive_loss`, :func:`graded_regression_loss` —
  graded similarity psi from field-of-view overlap (seed 004).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _same(labels: Tensor) -> tuple[Tensor, Tensor]:
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def triplet_loss(x: Tensor, labels: Tensor, margin: float = 0.1) -> Tensor:
    """Batch-hard triplet loss on L2 distances: hardest positive and negative per anchor."""
    d = torch.cdist(x, x)
    pos, neg = _same(labels)
    valid = pos.any(1) & neg.any(1)
    if not valid.any():
        return x.sum() * 0
    hardest_pos = torch.where(pos, d, torch.full_like(d, -1)).max(1).values
    hardest_neg = torch.where(neg, d, torch.full_like(d, float("inf"))).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


def mnn_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Mean cosine over mutual nearest neighbours of two local maps (h, w, C); all pairs if none."""
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    sim = b2 @ a2.T  # (Lb, La)
    with torch.no_grad():
        best_b = sim.argmax(0)  # per a location
        best_a = sim.argmax(1)  # per b location
        mutual = best_a[best_b] == torch.arange(a2.shape[0], device=a.device)
    if not mutual.any():
        return (a2 * b2).sum(-1).mean()
    ia = torch.nonzero(mutual).flatten()
    return (a2[ia] * b2[best_b[ia]]).sum(-1).mean()


def mnn_local_loss(local: Tensor, anchors: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
    """Hinge on MNN similarity: ``mean(relu(sim(a, n) - sim(a, p)))`` over the given triplets."""
    if len(anchors) == 0:
        return local.sum() * 0
    terms = [
        F.relu(mnn_similarity(local[a], local[n]) - mnn_similarity(local[a], local[p]))
        for a, p, n in zip(anchors.tolist(), positives.tolist(), negatives.tolist())
    ]
    return torch.stack(terms).mean()


def hardest_triplets(x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(anchor, hardest positive, hardest negative) indices for every anchor that has both."""
    with torch.no_grad():
        d = torch.cdist(x, x)
        pos, neg = _same(labels)
        valid = torch.nonzero(pos.any(1) & neg.any(1)).flatten()
        p = torch.where(pos, d, torch.full_like(d, -1)).argmax(1)
        n = torch.where(neg, d, torch.full_like(d, float("inf"))).argmin(1)
    return valid, p[valid], n[valid]


@dataclass
class MinedPairs:
    """Index pairs kept by the miner: positives (a1, p) and negatives (a2, n)."""

    a1: Tensor
    p: Tensor
    a2: Tensor
    n: Tensor


def multi_similarity_miner(x: Tensor, labels: Tensor, epsilon: float = 0.1) -> MinedPairs:
    """Keep positive pairs less similar than the anchor's most similar negative + epsilon,
    and negative pairs more similar than the anchor's least similar positive - epsilon (cosine)."""
    with torch.no_grad():
        xn = F.normalize(x.float(), dim=-1)
        s = xn @ xn.T
        pos, neg = _same(labels)
        max_neg = torch.where(neg, s, torch.full_like(s, float("-inf"))).max(1, keepdim=True).values
        min_pos = torch.where(pos, s, torch.full_like(s, float("inf"))).min(1, keepdim=True).values
        keep_pos = pos & (s - epsilon < max_neg)
        keep_neg = neg & (s + epsilon > min_pos)
        a1, p = torch.nonzero(keep_pos, as_tuple=True)
        a2, n = torch.nonzero(keep_neg, as_tuple=True)
    return MinedPairs(a1, p, a2, n)


def multi_similarity_loss(
    x: Tensor, labels: Tensor, pairs: MinedPairs | None = None, alpha: float = 1.0, beta: float = 50.0,
    base: float = 0.0,
) -> Tensor:
    """Multi-similarity loss on cosine similarities, averaged over all anchors of the batch.

    ``(1/alpha) log(1 + sum_pos exp(-alpha (S - base))) + (1/beta) log(1 + sum_neg exp(beta (S - base)))``
    over the mined pairs of each anchor.
    """
    xn = F.normalize(x, dim=-1)
    s = xn @ xn.T
    n = len(x)
    pos_mask = torch.zeros(n, n, dtype=torch.bool, device=x.device)
    neg_mask = torch.zeros_like(pos_mask)
    if pairs is None:
        pos_mask, neg_mask = _same(labels)
    else:
        pos_mask[pairs.a1, pairs.p] = True
        neg_mask[pairs.a2, pairs.n] = True
    zero = torch.zeros(n, 1, device=x.device, dtype=s.dtype)

    def term(mask: Tensor, scale: float, sign: float) -> Tensor:
        logits = torch.where(mask, sign * scale * (s - base), torch.full_like(s, float("-inf")))
        # log(1 + sum exp(l)) = logsumexp([0, l...])
        return torch.logsumexp(torch.cat([zero, logits], dim=1), dim=1) / scale

    return (term(pos_mask, alpha, -1.0) + term(neg_mask, beta, 1.0)).mean()


def hash_similarity_loss(z: Tensor, codes: Tensor, pairs: MinedPairs) -> Tensor:
    """Mean squared gap between cos(z_i, z_j) and the Hamming similarity 1 - 2 ham / bits of the
    ±1 ``codes`` (= dot / bits), over the mined positive and negative pairs."""
    i = torch.cat([pairs.a1, pairs.a2])
    j = torch.cat([pairs.p, pairs.n])
    if len(i) == 0:
        return z.sum() * 0
    zn = F.normalize(z, dim=-1)
    cos = (zn[i] * zn[j]).sum(-1)
    ham_sim = (codes[i] * codes[j]).sum(-1) / codes.shape[-1]
    return (cos - ham_sim).pow(2).mean()


def pair_distance(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distance of L2-normalised descriptors, scaled so that orthogonal ones are at 1.

    ``||a - b|| / sqrt(2) = sqrt(1 - cos)``: 0 for equal descriptors, 1 for
    unrelated (orthogonal) ones, at most sqrt(2) for opposite ones.
    """
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return (1 - (a * b).sum(-1)).clamp(min=0).add(1e-12).sqrt()


def graded_regression_loss(a: Tensor, b: Tensor, psi: Tensor) -> Tensor:
    """Regress the scaled distance onto 1 - psi: ``mean((d - (1 - psi))^2)``."""
    return (pair_distance(a, b) - (1 - psi)).pow(2).mean()


def generalized_contrastive_loss(a: Tensor, b: Tensor, psi: Tensor, tau: float = 0.5) -> Tensor:
    """``psi d^2 / 2 + (1 - psi) max(tau - d, 0)^2 / 2`` with d the Euclidean distance of the
    L2-normalised descriptors (in [0, 2])."""
    d = torch.linalg.vector_norm(F.normalize(a, dim=-1) - F.normalize(b, dim=-1), dim=-1)
    return (psi * d.pow(2) / 2 + (1 - psi) * F.relu(tau - d).pow(2) / 2).mean()
