"""Retrieval stages against brute force: exact Hamming top-K, exclusions without starvation,
float re-rank order, chunked local matching equal to the dense computation."""

from __future__ import annotations

import numpy as np
import pytest

from selavpr_ros.errors import ConfigError
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.mapdb.records import StorageConfig
from selavpr_ros.retrieval.config import RetrievalConfig
from selavpr_ros.retrieval.hamming import HammingIndex, hamming_distances
from selavpr_ros.retrieval.local_matching import dense_mutual_nn_counts, mutual_nn_counts, mutual_nn_pairs
from selavpr_ros.retrieval.retriever import Retriever
from selavpr_ros.types import DescriptorLayout, Descriptors, KeyframeRecord


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def random_desc(n: int, seed: int, dim=32, local=(6, 7, 16)) -> Descriptors:
    rng = np.random.default_rng(seed)
    f = unit(rng.standard_normal((n, dim)))
    z = rng.standard_normal((n, 512)).astype(np.float32)
    loc = unit(rng.standard_normal((n, *local))) if local else None
    return Descriptors(np.packbits(z >= 0, axis=1), f, z, loc)


def build(tmp_path, desc: Descriptors, storage=None, sessions=None) -> MapDatabase:
    local = desc.local_features
    layout = DescriptorLayout(
        512,
        desc.descriptors.shape[1],
        local.shape[-1] if local is not None else 0,
        local.shape[1:3] if local is not None else (0, 0),
    )
    db = MapDatabase.create(tmp_path / "map", layout, "t:1", storage=storage or StorageConfig(float_dtype="float32"))
    db.add(desc, [KeyframeRecord(stamp_ns=i) for i in range(len(desc))], session="s")
    return db


def test_hamming_top_k_is_exact():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (3000, 64), dtype=np.uint8)
    index = HammingIndex(512)
    index.add(codes)
    q = codes[17] ^ (rng.random(64) < 0.05).astype(np.uint8)
    dist, rows = index.search(q, 50)
    brute = hamming_distances(q, codes)
    np.testing.assert_array_equal(dist[0], np.sort(brute)[:50])
    np.testing.assert_array_equal(brute[rows[0]], dist[0])
    assert rows[0][0] == 17


def test_exclusions_cannot_starve_the_top_k():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, 64, dtype=np.uint8)
    near = np.repeat(base[None], 200, 0) ^ (rng.random((200, 64)) < 0.02).astype(np.uint8)  # 200 near copies
    far = rng.integers(0, 256, (800, 64), dtype=np.uint8)
    codes = np.concatenate([near, far])
    index = HammingIndex(512)
    index.add(codes)
    allowed = np.ones(1000, bool)
    allowed[:200] = False  # every near entry excluded
    dist, rows = index.search(base, 100, allowed)
    assert len(rows[0]) == 100 and (rows[0] >= 200).all()
    brute = hamming_distances(base, codes)
    brute[:200] = 10**6
    np.testing.assert_array_equal(dist[0], np.sort(brute)[:100])


@pytest.mark.parametrize("budget", [1 << 22, 500, 37])
def test_chunked_local_matching_equals_the_dense_computation(budget):
    rng = np.random.default_rng(3)
    query = unit(rng.standard_normal((13, 21, 32)))
    cands = unit(rng.standard_normal((5, 13, 21, 32)))
    cands[2] = unit(query + 0.05 * rng.standard_normal(query.shape))  # a true match
    cands[4, :3] = query[:3]  # exact duplicates: ties must resolve like argmax
    dense = dense_mutual_nn_counts(query, cands)
    chunked = mutual_nn_counts(query, cands, budget=budget)
    np.testing.assert_array_equal(chunked, dense)
    assert chunked.argmax() == 2 and chunked[2] > 250
    qi, ci = mutual_nn_pairs(query, cands[2])
    assert len(qi) == chunked[2] and (qi == ci).mean() > 0.9


@pytest.mark.parametrize("budget", [1 << 20, 300, 41, 1])
def test_local_matching_resolves_ties_like_argmax(budget):
    """Coarsely quantised features make similarities tie everywhere (rows, columns, across chunks):
    the chunked counts and pairs still equal the dense argmax formulation."""
    rng = np.random.default_rng(7)
    query = rng.integers(-1, 2, (9, 11, 6)).astype(np.float32)
    cands = rng.integers(-1, 2, (6, 9, 11, 6)).astype(np.float32)
    cands[3] = query  # every location has an exact twin, and twins of twins
    dense = dense_mutual_nn_counts(query, cands)
    np.testing.assert_array_equal(mutual_nn_counts(query, cands, budget=budget), dense)
    sim = cands[3].reshape(-1, 6) @ query.reshape(-1, 6).T
    max1, max2 = sim.argmax(0), sim.argmax(1)
    want = np.flatnonzero(max2[max1] == np.arange(sim.shape[1]))
    qi, ci = mutual_nn_pairs(query, cands[3], budget=budget)
    np.testing.assert_array_equal(qi, want)
    np.testing.assert_array_equal(ci, max1[want])


def test_pipeline_stages_against_brute_force(tmp_path):
    desc = random_desc(400, 4)
    db = build(tmp_path, desc)
    q = random_desc(1, 99)
    q.descriptors[0] = unit(desc.descriptors[123] + 0.2 * np.random.default_rng(5).standard_normal(32))
    q.codes[0] = desc.codes[123]
    q.local_features[0] = unit(desc.local_features[123] + 0.3 * np.random.default_rng(6).standard_normal((6, 7, 16)))
    cfg = RetrievalConfig(stages=["binary", "float", "local"], k=60, local_k=10)
    cand = Retriever(db, cfg).search(q)
    assert cand.rows[0] == 123 and cand.hamming[cand.rows == 123][0] == 0
    # Stage 1 kept the 60 Hamming-nearest rows.
    brute = hamming_distances(q.codes[0], desc.codes)
    assert sorted(brute[cand.rows]) == sorted(np.sort(brute)[:60])
    # Stage 3 reordered the first 10 by local counts, the rest stay in float order.
    assert (np.diff(cand.local_matches[:10]) <= 0).all() and (cand.local_matches[10:] == -1).all()
    assert (np.diff(cand.similarity[10:]) <= 1e-7).all()
    np.testing.assert_allclose(cand.similarity, desc.descriptors[cand.rows] @ q.descriptors[0], rtol=1e-5)
    assert set(cand.timings_ms) == {"binary", "float", "local"}

    exhaustive = Retriever(db, RetrievalConfig(stages=["float"], k=5)).search(q)
    np.testing.assert_array_equal(exhaustive.rows, np.argsort(-(desc.descriptors @ q.descriptors[0]))[:5])


def test_deleted_rows_masks_and_growth(tmp_path):
    desc = random_desc(100, 7, local=None)
    db = build(tmp_path, desc)
    retriever = Retriever(db, RetrievalConfig(stages=["binary", "float"], k=100))
    more = random_desc(20, 8, local=None)
    db.add(more, [KeyframeRecord(stamp_ns=1000 + i) for i in range(20)], session="new")
    assert retriever.sync() == 20 and retriever.indexed == 120
    db.delete_session("s")
    cand = retriever.search(more[3])
    assert set(cand.rows.tolist()) == set(range(100, 120)) and cand.rows[0] == 103
    mask = np.ones(120, bool)
    mask[103] = False
    assert 103 not in Retriever(db, RetrievalConfig(k=10)).search(more[3], mask).rows


def test_empty_map_and_bad_configs(tmp_path):
    layout = DescriptorLayout(512, 32)
    db = MapDatabase.create(tmp_path / "empty", layout, "t:1")
    assert len(Retriever(db).search(random_desc(1, 0, local=None))) == 0
    with pytest.raises(ConfigError, match="needs local features"):
        Retriever(db, RetrievalConfig(stages=["binary", "local"]))
    with pytest.raises(ConfigError, match="must keep the order"):
        RetrievalConfig(stages=["float", "binary"])
    with pytest.raises(ConfigError, match="must start with"):
        RetrievalConfig(stages=["local"])


def test_reduced_local_storage_still_reranks(tmp_path):
    desc = random_desc(50, 10, local=(13, 21, 16))
    db = build(tmp_path, desc, storage=StorageConfig(local_dtype="int8", local_pool=2))
    q = random_desc(1, 11, local=(13, 21, 16))
    q.codes[0] = desc.codes[7]
    q.local_features[0] = desc.local_features[7]
    q.descriptors[0] = desc.descriptors[7]
    cand = Retriever(db, RetrievalConfig(stages=["binary", "float", "local"], k=20, local_k=20)).search(q)
    assert cand.rows[0] == 7 and cand.local_matches[0] == 6 * 10  # every pooled cell matches itself
