"""The IVF binary stage: recall against exhaustive search, exact row masks, a persisted
memory-mapped index that opening never retrains, growth, compaction and read-only maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_mapdb import _in_read_only_mount

import selavpr_ros.retrieval.ivf as ivf_module
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.mapdb.records import StorageConfig
from selavpr_ros.retrieval.config import RetrievalConfig
from selavpr_ros.retrieval.hamming import HammingIndex, hamming_distances
from selavpr_ros.retrieval.ivf import IVFHammingIndex, IVFSettings, auto_nlist
from selavpr_ros.retrieval.retriever import Retriever
from selavpr_ros.types import DescriptorLayout, Descriptors, KeyframeRecord

CENTRES = np.random.default_rng(7).integers(0, 256, (120, 64), dtype=np.uint8)


def clustered(n: int, seed: int, flip: float = 0.12) -> np.ndarray:
    """Codes around 120 centres (places seen many times), each bit flipped with ``flip``."""
    rng = np.random.default_rng(seed)
    bits = np.unpackbits(CENTRES[rng.integers(0, len(CENTRES), n)], axis=1)
    return np.packbits(bits ^ (rng.random(bits.shape) < flip), axis=1)


def entries(codes: np.ndarray, seed: int) -> Descriptors:
    f = np.random.default_rng(seed).standard_normal((len(codes), 16)).astype(np.float32)
    return Descriptors(codes, f / np.linalg.norm(f, axis=1, keepdims=True), np.zeros((len(codes), 512), np.float32))


def make_map(tmp_path, codes: np.ndarray, session: str = "a") -> MapDatabase:
    db = MapDatabase.create(tmp_path / "map", DescriptorLayout(512, 16), "t:1",
                            storage=StorageConfig(float_dtype="float32"))
    db.add(entries(codes, 0), [KeyframeRecord(stamp_ns=i) for i in range(len(codes))], session=session)
    return db


def recall_at(exact: np.ndarray, approx: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(exact, approx)]))


IVF = RetrievalConfig(index="ivf", ivf_nprobe=24)


def test_auto_nlist_is_a_power_of_two_near_sqrt():
    assert [auto_nlist(n) for n in (0, 100, 5000, 10**6, 10**7, 10**9)] == [16, 16, 64, 1024, 4096, 16384]


def test_ivf_recall_against_exhaustive_search_and_small_maps_stay_exact():
    codes, queries = clustered(12000, 1), clustered(60, 2)
    flat, ivf = HammingIndex(512), IVFHammingIndex(512, IVFSettings(nprobe=24))
    small = IVFHammingIndex(512)
    small.add(codes[:1000])  # 1000 < 40 codes x 32 lists: searched exhaustively, nothing trained
    assert not small.trained
    flat.add(codes[:1000])
    np.testing.assert_array_equal(small.search(queries, 50)[0], flat.search(queries, 50)[0])
    flat.add(codes[1000:])
    ivf.add(codes, all_codes=codes)
    assert ivf.trained and ivf.nlist == auto_nlist(12000) == 128 and len(ivf) == 12000
    exact_d, exact = flat.search(queries, 100)
    dist, rows = ivf.search(queries, 100)
    assert recall_at(exact, rows) > 0.9
    for q, d, r in zip(queries, dist, rows):  # distances are the true ones, in order
        np.testing.assert_array_equal(hamming_distances(q, codes[r]), d)
        assert (np.diff(d) >= 0).all()


@pytest.mark.parametrize("scan_in_place", [False, True])
def test_masks_are_exact_on_both_paths(monkeypatch, scan_in_place):
    codes, queries = clustered(8000, 3), clustered(20, 4)
    ivf = IVFHammingIndex(512, IVFSettings(nprobe=64))  # 64 of 64 lists: the IVF equals the exhaustive search
    ivf.add(codes, all_codes=codes)
    assert ivf.nlist == 64
    allowed = np.random.default_rng(5).random(8000) > 0.4  # 3200 rows excluded
    monkeypatch.setattr(ivf_module, "MAX_OVERFETCH", 0 if scan_in_place else 10**9)
    dist, rows = ivf.search(queries, 100, allowed)
    assert allowed[rows].all() and (rows >= 0).all()
    for q, d in zip(queries, dist):
        brute = hamming_distances(q, codes).astype(np.int64)
        brute[~allowed] = 10**6
        np.testing.assert_array_equal(d, np.sort(brute)[:100])  # no starvation: the true allowed top-100


def test_persisted_index_is_reopened_memory_mapped_without_retraining(tmp_path):
    codes, queries = clustered(10000, 6), clustered(30, 7)
    db = make_map(tmp_path, codes)
    first = Retriever(db, IVF)
    index = first.hamming_index
    assert isinstance(index, IVFHammingIndex) and index.retrains == 1
    record = json.loads((db.path / "index" / "ivf.json").read_text())
    assert record["rows"] == 10000 and record["generation"] == db.info.generation and record["model_id"] == "t:1"
    before = first.search_batch(entries(queries, 1))
    again = Retriever(db, IVF)  # a new process would do the same: the file, not a new k-means
    assert again.hamming_index.retrains == 0 and again.indexed == 10000
    after = again.search_batch(entries(queries, 1))
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.rows, b.rows)

    # growth below the retrain factor: new rows join the in-memory tail with the same centroids
    more = clustered(1100, 8)
    db.add(entries(more[:500], 2), [KeyframeRecord(stamp_ns=10000 + i) for i in range(500)], session="b")
    assert again.sync() == 500 and again.hamming_index.retrains == 0
    hits = again.search_batch(entries(more[:500], 2)[np.arange(5)])  # the stored entries themselves
    assert all(c.rows[0] == 10000 + i and c.hamming[0] == 0 for i, c in enumerate(hits))
    assert json.loads((db.path / "index" / "ivf.json").read_text())["rows"] == 10000  # 500 only in memory
    db.add(entries(more[500:], 3), [KeyframeRecord(stamp_ns=10500 + i) for i in range(600)], session="b")
    again.sync()  # 1100 new rows >= 10 % of 10000: written out with the lists
    assert json.loads((db.path / "index" / "ivf.json").read_text())["rows"] == 11100
    assert Retriever(db, IVF).hamming_index.retrains == 0


def test_retrained_only_after_the_stated_growth(tmp_path):
    codes = clustered(9000, 9)
    db = make_map(tmp_path, codes[:3000])
    retriever = Retriever(db, RetrievalConfig(index="ivf", ivf_retrain_growth=2.0))
    index = retriever.hamming_index
    assert index.retrains == 1 and index.trained_rows == 3000
    db.add(entries(codes[3000:5900], 1), [KeyframeRecord(stamp_ns=3000 + i) for i in range(2900)], session="b")
    retriever.sync()
    assert index.retrains == 1  # 5900 < 2 x 3000
    db.add(entries(codes[5900:], 2), [KeyframeRecord(stamp_ns=5900 + i) for i in range(3100)], session="c")
    retriever.sync()
    assert index.retrains == 2 and index.trained_rows == 9000 and len(index) == 9000
    _, rows = index.search(codes[[5, 4000, 8000]], 1)
    np.testing.assert_array_equal(rows[:, 0], [5, 4000, 8000])


def test_deleted_sessions_and_compaction_keep_the_centroids(tmp_path):
    a, b = clustered(6000, 10), clustered(4000, 11)
    db = make_map(tmp_path, a, "a")
    db.add(entries(b, 1), [KeyframeRecord(stamp_ns=6000 + i) for i in range(4000)], session="b")
    retriever = Retriever(db, IVF)
    centroids = retriever.hamming_index._centroids.copy()
    db.delete_session("a")
    hits = retriever.search_batch(entries(a[:10], 2))
    assert all((c.rows >= 6000).all() for c in hits)  # 6000 excluded rows: scanned in place, none returned
    db.compact()
    retriever.sync()  # rows renumbered: the lists are rebuilt from the stored centroids
    index = retriever.hamming_index
    assert index.retrains == 0 and len(index) == 4000
    np.testing.assert_array_equal(index._centroids, centroids)
    record = json.loads((db.path / "index" / "ivf.json").read_text())
    assert record["generation"] == db.info.generation and record["rows"] == 4000
    _, rows = index.search(b[[0, 3999]], 1)
    np.testing.assert_array_equal(rows[:, 0], [0, 3999])


def test_an_index_of_another_map_or_model_is_rebuilt_and_a_read_only_map_is_indexed_in_memory(tmp_path):
    codes = clustered(5000, 12)
    db = make_map(tmp_path, codes)
    Retriever(db, IVF)
    record_path = db.path / "index" / "ivf.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "model_id": "other:2"}))
    rebuilt = Retriever(db, IVF).hamming_index
    assert rebuilt.retrains == 1 and json.loads(record_path.read_text())["model_id"] == "t:1"
    record_path.write_text(json.dumps({**record, "rows": 99999}))  # covers rows the map does not have
    assert Retriever(db, IVF).hamming_index.retrains == 1
    index_file = db.path / "index" / "ivf.faissbin"
    index_file.write_bytes(index_file.read_bytes()[:5000])  # torn
    assert Retriever(db, IVF).hamming_index.retrains == 1
    index_file.write_bytes(b"IBxF" + bytes(100))  # not an IVF at all
    assert Retriever(db, IVF).hamming_index.retrains == 1
    assert Retriever(db, IVF).hamming_index.retrains == 0  # and the rebuilt file is used again
    db.close()

    folder = tmp_path / "ro"
    make_map(folder, codes).close()
    code = (
        "import json\n"
        "from selavpr_ros.mapdb.database import MapDatabase\n"
        "from selavpr_ros.retrieval.config import RetrievalConfig\n"
        "from selavpr_ros.retrieval.retriever import Retriever\n"
        f"db = MapDatabase.open({str(folder / 'map')!r})\n"
        "index = Retriever(db, RetrievalConfig(index='ivf')).hamming_index\n"
        "_, rows = index.search(db.codes[[7]], 1)\n"
        "print(json.dumps({'trained': index.trained, 'rows': len(index), 'hit': int(rows[0, 0])}))\n"
    )
    result = _in_read_only_mount(folder, code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"trained": True, "rows": 5000, "hit": 7}
    assert not (folder / "map" / "index").exists()  # nothing written to a read-only map


def test_map_index_command_and_node_parameters(tmp_path, capsys):
    from selavpr_ros.cli import main
    from selavpr_ros.node.params import loop_closure_config, validate

    db = make_map(tmp_path, clustered(5000, 13))
    db.close()
    assert main(["map", "index", str(tmp_path / "map")]) == 0
    out = capsys.readouterr().out
    assert "IVF trained, 64 lists over 5000 keyframes" in out
    assert main(["map", "index", str(tmp_path / "map")]) == 0
    assert "IVF up to date" in capsys.readouterr().out  # the second open reuses the file
    assert main(["map", "stats", str(tmp_path / "map")]) == 0
    assert "ivf index  64 lists over 5000 keyframes, centroids from 5000" in capsys.readouterr().out
    params = validate({"loop_closure.retrieval.index": "ivf", "loop_closure.retrieval.ivf_nprobe": 8})
    retrieval = loop_closure_config(params).retrieval
    assert retrieval.index == "ivf" and retrieval.ivf_nprobe == 8 and retrieval.ivf_retrain_growth == 2.0
    with pytest.raises(Exception, match="ivf_nlist"):
        RetrievalConfig(index="ivf", ivf_nlist=3)
