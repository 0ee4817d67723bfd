"""Every training loss against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from selavpr_ros.models.heads import binarize
from selavpr_ros.training import losses as L


def test_batch_hard_triplet_by_hand():
    # labels 0,0,1,1 on a plane; per anchor: relu(hardest pos - hardest neg + 0.1)
    x = torch.tensor([[0.0, 0.0], [0.3, 0.0], [0.0, 0.35], [0.0, 0.62]])
    labels = torch.tensor([0, 0, 1, 1])
    # a: 0.3 - 0.35 + 0.1 = 0.05;  p: 0.3 - |p-n| (0.461) + 0.1 < 0;  n: 0.27 - 0.35 + 0.1 = 0.02;  m: < 0
    assert L.triplet_loss(x, labels, margin=0.1).item() == pytest.approx((0.05 + 0.02) / 4, abs=1e-6)
    a, p, n = L.hardest_triplets(x, labels)
    assert a.tolist() == [0, 1, 2, 3] and p.tolist() == [1, 0, 3, 2] and n.tolist() == [2, 2, 0, 0]


def test_triplet_without_valid_anchor_is_zero_with_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    loss = L.triplet_loss(x, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0 and x.grad is not None


def _three_points():
    # cos(x0, x1) = 0.5, cos(x0, x2) = 0, cos(x1, x2) = sin 60 deg
    s60 = math.sin(math.radians(60))
    return torch.tensor([[1.0, 0.0], [0.5, s60], [0.0, 1.0]]), torch.tensor([0, 0, 1]), s60


def test_multi_similarity_loss_by_hand():
    x, labels, s12 = _three_points()
    alpha, beta, base = 2.0, 10.0, 0.5
    pos = 0.5 * math.log(1 + math.exp(-2 * (0.5 - 0.5)))  # anchors 0 and 1, S = 0.5
    neg0 = 0.1 * math.log(1 + math.exp(10 * (0.0 - 0.5)))
    neg1 = 0.1 * math.log(1 + math.exp(10 * (s12 - 0.5)))
    neg2 = 0.1 * math.log(1 + math.exp(10 * (0.0 - 0.5)) + math.exp(10 * (s12 - 0.5)))
    expected = (pos + neg0 + pos + neg1 + neg2) / 3  # anchor 2 has no positive: log(1) = 0
    got = L.multi_similarity_loss(x, labels, None, alpha, beta, base)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_multi_similarity_miner_by_hand():
    x, labels, _ = _three_points()
    pairs = L.multi_similarity_miner(x, labels, epsilon=0.1)
    # anchor 0: hardest negative cos 0 -> positive 0.5 - 0.1 is not below it; negative 0 + 0.1 not above 0.5
    # anchor 1: hardest negative 0.866 -> keeps (1, 0); negative 0.966 > 0.5 -> keeps (1, 2)
    # anchor 2: no positive -> nothing
    assert (pairs.a1.tolist(), pairs.p.tolist(), pairs.a2.tolist(), pairs.n.tolist()) == ([1], [0], [1], [2])
    s60 = math.sin(math.radians(60))
    only = L.multi_similarity_loss(x, labels, pairs, 2.0, 10.0, 0.5)
    assert only.item() == pytest.approx((0.5 * math.log(2) + 0.1 * math.log(1 + math.exp(10 * (s60 - 0.5)))) / 3,
                                        rel=1e-6)


def test_hash_similarity_loss_by_hand():
    z = torch.tensor([[0.6, 0.8, -0.2, 0.1], [0.5, -0.5, -0.5, 0.5]])
    codes = binarize(z)  # [1, 1, -1, 1] and [1, -1, -1, 1]: 3 of 4 bits agree -> similarity 1 - 2/4 = 0.5
    pairs = L.MinedPairs(torch.tensor([0]), torch.tensor([1]), torch.tensor([], dtype=torch.long),
                         torch.tensor([], dtype=torch.long))
    zn = z / z.norm(dim=1, keepdim=True)
    cos = float(zn[0] @ zn[1])
    assert L.hash_similarity_loss(z, codes, pairs).item() == pytest.approx((cos - 0.5) ** 2, rel=1e-6)


def test_straight_through_sign():
    z = torch.tensor([-0.3, 0.0, 2.0], requires_grad=True)
    b = binarize(z)
    assert b.tolist() == [-1.0, 1.0, 1.0]
    (b * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert z.grad.tolist() == [1.0, 2.0, 3.0]


def test_graded_regression_by_hand():
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    psi = torch.tensor([0.25, 1.0])
    # pair 0: orthogonal -> d = 1, target 0.75 -> 0.0625; pair 1: identical -> d ~ 0, target 0 -> 0
    assert L.graded_regression_loss(a, b, psi).item() == pytest.approx(0.0625 / 2, abs=1e-6)


def test_generalized_contrastive_by_hand():
    theta = 2 * math.asin(0.1)  # chord 0.2 on the unit circle
    a = torch.tensor([[1.0, 0.0]] * 3)
    b = torch.tensor([[0.0, 1.0], [math.cos(theta), math.sin(theta)], [math.cos(theta), math.sin(theta)]])
    psi = torch.tensor([1.0, 0.0, 0.5])
    # d = sqrt 2, psi 1 -> 2 / 2 = 1;  d = 0.2, psi 0 -> (0.5 - 0.2)^2 / 2 = 0.045;  psi 0.5 -> 0.01 + 0.0225
    expected = (1.0 + 0.045 + 0.0325) / 3
    assert L.generalized_contrastive_loss(a, b, psi, tau=0.5).item() == pytest.approx(expected, rel=1e-5)


def test_mnn_similarity_and_local_loss_by_hand():
    e = torch.eye(3)
    a = torch.stack([e[0], e[1]]).reshape(1, 2, 3)  # two locations
    same = a.clone()
    other = torch.stack([e[2], e[2]]).reshape(1, 2, 3)
    # identical maps: both locations are mutual nearest neighbours with cosine 1
    assert L.mnn_similarity(a, same).item() == pytest.approx(1.0)
    # unrelated: only one mutual pair (ties resolve to the first index) with cosine 0
    assert L.mnn_similarity(a, other).item() == pytest.approx(0.0)
    local = torch.stack([a, same, other])
    idx = torch.tensor
    assert L.mnn_local_loss(local, idx([0]), idx([1]), idx([2])).item() == 0.0  # positive is more similar
    assert L.mnn_local_loss(local, idx([0]), idx([2]), idx([1])).item() == pytest.approx(1.0)
