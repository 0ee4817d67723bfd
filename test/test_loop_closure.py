"""Loop-closure engine: keyframe gate, temporal exclusion, scores, consistency, modes, restart."""

from __future__ import annotations

import numpy as np
import pytest

from selavpr_ros.errors import MapError
from selavpr_ros.loop_closure.config import (
    ConsistencyConfig,
    ExclusionConfig,
    KeyframeGateConfig,
    LoopClosureConfig,
)
from selavpr_ros.loop_closure.engine import LoopClosureEngine, Status
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.retrieval.config import RetrievalConfig
from selavpr_ros.types import DescriptorLayout, Descriptors, KeyframeRecord, Pose

DIM = 32
RNG = np.random.default_rng(0)
PLACES = RNG.standard_normal((60, DIM))
PROJ = RNG.standard_normal((DIM, 512))


def frame(place: int, noise: float = 0.05, seed: int = 0) -> Descriptors:
    f = PLACES[place] + noise * np.random.default_rng(seed).standard_normal(DIM)
    f = (f / np.linalg.norm(f)).astype(np.float32)[None]
    z = (f @ PROJ).astype(np.float32)
    return Descriptors(np.packbits(z >= 0, axis=1), f, z, None)


def engine(tmp_path, mode="mapping", n=3, **kw) -> LoopClosureEngine:
    path = tmp_path / "map"
    db = MapDatabase.open(path, "w") if path.exists() else MapDatabase.create(path, DescriptorLayout(512, DIM), "t:1")
    cfg = LoopClosureConfig(
        mode=mode,
        min_score=0.8,
        top_n=2,
        keyframe=KeyframeGateConfig(min_interval_s=0.5),
        exclusion=ExclusionConfig(recent_s=20.0),
        consistency=ConsistencyConfig(n=n, max_gap_s=3.0),
        retrieval=RetrievalConfig(stages=["binary", "float"], k=20),
        **kw,
    )
    return LoopClosureEngine(db, cfg)


def drive(eng: LoopClosureEngine, route, start_s=0.0, seed=0):
    results = []
    for i, place in enumerate(route):
        stamp = int((start_s + i) * 1e9)
        results.append(eng.process(frame(place, seed=seed + i), KeyframeRecord(stamp_ns=stamp, frame_id="cam")))
    return results


def test_revisit_is_accepted_after_n_consistent_queries(tmp_path):
    eng = engine(tmp_path, n=3)
    first = drive(eng, range(40))
    assert all(r.is_keyframe for r in first) and eng.db.count == 40
    assert not any(r.accepted for r in first)  # no loop on the first pass (recent entries excluded)
    revisit = drive(eng, range(5, 12), start_s=100.0, seed=1000)
    statuses = [[c.status for c in r.candidates] for r in revisit]
    best = [r.candidates[0] for r in revisit]
    assert [c.match_keyframe_id for c in best] == list(range(5, 12))
    assert best[0].status == Status.INCONSISTENT and "seen in 1 of 3" in best[0].reason
    assert best[1].status == Status.INCONSISTENT and "seen in 2 of 3" in best[1].reason
    assert all(c.status == Status.ACCEPTED for c in best[2:])
    assert all(s[1] == Status.LOW_SCORE for s in statuses)  # the runner-up is another place
    assert "score" in revisit[0].candidates[1].reason
    assert best[3].query_keyframe_id == 43 and best[3].match_stamp_ns == 8 * 10**9 and best[3].rank == 1


def test_n_equal_one_disables_consistency(tmp_path):
    eng = engine(tmp_path, n=1)
    drive(eng, range(30))
    r = drive(eng, [12], start_s=100.0, seed=77)[0]
    assert r.candidates[0].status == Status.ACCEPTED and r.candidates[0].match_keyframe_id == 12


def test_recent_entries_are_excluded_without_starving(tmp_path):
    eng = engine(tmp_path, n=1, report_excluded=True)
    drive(eng, range(30))
    # Back at place 25 five seconds later: the only similar entry is inside the 20 s window.
    r = drive(eng, [25], start_s=35.0, seed=5)[0]
    normal = [c for c in r.candidates if c.status != Status.EXCLUDED]
    excluded = [c for c in r.candidates if c.status == Status.EXCLUDED]
    assert len(normal) == 2 and all(c.status == Status.LOW_SCORE for c in normal)
    assert all(c.match_stamp_ns <= 15 * 10**9 for c in normal)  # only entries outside the window
    assert excluded[0].match_keyframe_id == 25 and "exclusion window" in excluded[0].reason


def test_keyframe_gate(tmp_path):
    eng = engine(tmp_path)
    r1 = eng.process(frame(0), KeyframeRecord(stamp_ns=0, pose=Pose((0.0, 0.0, 0.0))))
    r2 = eng.process(frame(1), KeyframeRecord(stamp_ns=int(0.2e9)))
    assert r1.is_keyframe and not r2.is_keyframe and "min_interval_s 0.5" in r2.skipped_reason
    eng.gate.config = KeyframeGateConfig(
        min_interval_s=0.0, min_translation_m=1.0, min_rotation_deg=10, max_similarity=0.9
    )
    r3 = eng.process(frame(1), KeyframeRecord(stamp_ns=int(1e9), pose=Pose((0.3, 0.0, 0.0))))
    assert not r3.is_keyframe and "moved 0.30 m" in r3.skipped_reason
    r4 = eng.process(frame(0, seed=9), KeyframeRecord(stamp_ns=int(2e9), pose=Pose((5.0, 0.0, 0.0))))
    assert not r4.is_keyframe and "similarity" in r4.skipped_reason
    r5 = eng.process(frame(2), KeyframeRecord(stamp_ns=int(3e9), pose=Pose((5.0, 0.0, 0.0))))
    assert r5.is_keyframe and eng.db.count == 2


def test_localization_mode_is_read_only_and_deterministic(tmp_path):
    drive(engine(tmp_path, n=2), range(40))
    engine_path = tmp_path / "map"
    for _ in range(2):
        db = MapDatabase.open(engine_path, "r")
        cfg = LoopClosureConfig(
            mode="localization",
            min_score=0.8,
            consistency=ConsistencyConfig(n=2),
            keyframe=KeyframeGateConfig(min_interval_s=0.0),
        )
        loc = LoopClosureEngine(db, cfg)
        runs = [
            [(c.match_keyframe_id, c.status, round(c.score, 6)) for c in r.candidates]
            for r in drive(loc, [3, 4, 5, 30], start_s=500.0, seed=300)
        ]
        assert db.count == 40
        db.close()
        if _ == 0:
            first = runs
    assert runs == first
    assert first[0][0][1] == Status.INCONSISTENT and first[1][0][1] == Status.ACCEPTED
    assert first[3][0][1] == Status.INCONSISTENT  # jumped to another place: the chain restarts
    with pytest.raises(MapError, match="mapping mode needs the map open for writing"):
        LoopClosureEngine(MapDatabase.open(engine_path, "r"), LoopClosureConfig(mode="mapping"))


def test_restart_resumes_the_session(tmp_path):
    eng = engine(tmp_path)
    drive(eng, range(10))
    eng.db.close()
    again = engine(tmp_path)
    assert again.gate.last is not None and again.gate.last.stamp_ns == 9 * 10**9
    r = again.process(frame(10), KeyframeRecord(stamp_ns=int(9.2e9)))
    assert not r.is_keyframe  # 0.2 s after the last keyframe before the restart
    r = again.process(frame(10), KeyframeRecord(stamp_ns=int(10e9)))
    assert r.is_keyframe and r.keyframe_id == 10 and again.db.sessions() == {"live": 11}


def _aliased_map(eng: LoopClosureEngine, twin_at: int) -> None:
    """A first pass over places 0..39 (1 m and 1 s apart) where keyframes twin_at..twin_at+4 look exactly
    like places 5..9 (one wall photographed twice)."""
    for i in range(40):
        place = 5 + i - twin_at if twin_at <= i < twin_at + 5 else i
        eng.process(frame(place, seed=i), KeyframeRecord(stamp_ns=i * 10**9, frame_id="cam",
                                                         pose=Pose((float(i), 0.0, 0.0))))


@pytest.mark.parametrize("twin_at, gap_s, refused_by", [(25, 3.0, "s apart in map time"),
                                                       (25, 100.0, "m apart > max_distance_m 10"),
                                                       (12, 100.0, "")])
def test_a_frame_is_at_one_place(tmp_path, twin_at, gap_s, refused_by):
    """Two accepted candidates of one session far apart (by map time or by pose): the better one stays,
    the other is refused; a twin within max_distance_m is the same place and stays."""
    eng = engine(tmp_path, n=2)
    eng.config.consistency = ConsistencyConfig(n=2, max_gap_s=gap_s, max_distance_m=10.0)
    _aliased_map(eng, twin_at)
    revisit = drive(eng, range(5, 10), start_s=100.0, seed=1000)
    last = revisit[-1].candidates
    assert {c.match_keyframe_id for c in last} == {9, twin_at + 4}
    assert last[0].status == Status.ACCEPTED
    if refused_by:
        assert last[1].status == Status.INCONSISTENT and refused_by in last[1].reason
        assert f"another place than keyframe {last[0].match_keyframe_id}" in last[1].reason
    else:
        assert last[1].status == Status.ACCEPTED  # 7 m apart: the same place seen from two keyframes
