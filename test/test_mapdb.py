"""Map database: add/get/iterate/delete/compact, one writer and many readers, damage and crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _map_writer import LAYOUT, rows

from selavpr_ros.errors import LayoutMismatchError, MapError, MapLockedError
from selavpr_ros.mapdb.database import DB_NAME, MapDatabase
from selavpr_ros.mapdb.maintenance import check_map, repair_map
from selavpr_ros.mapdb.records import StorageConfig, decode_local, pool_local
from selavpr_ros.types import DescriptorLayout, Descriptors

WRITER = Path(__file__).with_name("_map_writer.py")


def make(tmp_path, n=10, storage=None, session="s1") -> MapDatabase:
    db = MapDatabase.create(tmp_path / "map", LAYOUT, "m:1", {"method": "test"}, storage)
    desc, recs = rows(0, n)
    db.add(desc, recs, session=session)
    return db


def test_add_get_iterate_and_reopen(tmp_path):
    db = make(tmp_path, 10)
    desc, recs = rows(10, 5)
    ids = db.add(desc, recs, session="s2")
    assert ids == [10, 11, 12, 13, 14] and len(db) == 15
    rec = db.get(12)
    assert rec.frame_id == "f12" and rec.session == "s2" and rec.pose.position == (12.0, 0.0, 0.0)
    assert [r.keyframe_id for r in db.iterate(batch=4)] == list(range(15))
    db.close()
    with MapDatabase.open(tmp_path / "map") as ro:
        assert len(ro) == 15 and ro.sessions() == {"s1": 10, "s2": 5}
        stored = ro.descriptors([3, 12])
        ref, _ = rows(3, 1)
        np.testing.assert_array_equal(stored.codes[0], ref.codes[0])
        np.testing.assert_allclose(stored.descriptors[0], ref.descriptors[0], atol=1e-3)  # float16 storage
        np.testing.assert_allclose(stored.local_features[0], ref.local_features[0], atol=1e-3)
        assert ro.rows["stamp_ns"][12] == 12000 and ro.model_id == "m:1"
        stats = ro.stats()
        assert stats["bytes_per_entry"] == {"codes": 64, "float": 128, "rows": 24, "local": 5 * 7 * 8 * 2}
        with pytest.raises(MapError, match="read-only"):
            ro.add(desc, recs)


def test_one_writer_many_readers(tmp_path):
    db = make(tmp_path, 5)
    with pytest.raises(MapLockedError, match=f"open for writing by pid {os.getpid()}"):
        MapDatabase.open(tmp_path / "map", "w")
    readers = [MapDatabase.open(tmp_path / "map") for _ in range(3)]
    desc, recs = rows(5, 3)
    db.add(desc, recs)
    for r in readers:
        assert len(r) == 5
        assert r.refresh() and len(r) == 8
        np.testing.assert_array_equal(r.codes[7], desc.codes[2])
        r.close()
    db.close()
    MapDatabase.open(tmp_path / "map", "w").close()  # the lock is released on close


def test_layout_and_model_mismatch_are_named(tmp_path):
    db = make(tmp_path, 2)
    other = DescriptorLayout(512, 128, 0)
    with pytest.raises(
        LayoutMismatchError,
        match="map holds codes 512 bit, float 64-d, local 5x7x8 from model m:1, "
        "but the model gives codes 512 bit, float 128-d, no local",
    ):
        db.check_model(other, "x:2")
    with pytest.raises(LayoutMismatchError, match="built with model m:1, not m:2"):
        db.check_model(LAYOUT, "m:2")
    db.check_model(LAYOUT, "m:1")
    desc, recs = rows(2, 2)
    bad = Descriptors(desc.codes, np.zeros((2, 32), np.float32), desc.hash_z, desc.local_features)
    with pytest.raises(LayoutMismatchError, match="descriptors are 32-d but the map stores 64-d"):
        db.add(bad, recs)
    nan = Descriptors(desc.codes, desc.descriptors.copy(), desc.hash_z, desc.local_features)
    nan.descriptors[1, 3] = np.nan
    with pytest.raises(MapError, match=r"descriptor rows \[1\] contain NaN.*nothing was added"):
        db.add(nan, recs)
    assert len(db) == 2


def test_delete_session_and_compact_keep_ids(tmp_path):
    db = make(tmp_path, 6, session="a")
    desc, recs = rows(6, 4)
    db.add(desc, recs, session="b")
    assert db.delete_session("a") == 6 and len(db) == 4 and db.count == 10
    assert not db.live_mask()[:6].any()
    result = db.compact()
    assert result == {"kept": 4, "removed": 6} and db.count == 4
    assert db.rows["keyframe_id"].tolist() == [6, 7, 8, 9]
    assert db.get(8).row == 2 and db.get(8).frame_id == "f8"
    np.testing.assert_array_equal(db.codes[2], desc.codes[2])
    assert not (tmp_path / "map" / "codes.0.bin").exists() and (tmp_path / "map" / "codes.1.bin").exists()
    with pytest.raises(MapError, match="no keyframe with id 2"):
        db.get(2)
    with pytest.raises(MapError, match="no session 'zzz'"):
        db.delete_session("zzz")
    db.close()
    assert check_map(tmp_path / "map").ok


def test_reduced_local_storage(tmp_path):
    db = make(tmp_path, 3, storage=StorageConfig(float_dtype="float32", local_dtype="int8", local_pool=2))
    desc, _ = rows(0, 3)
    assert db.local_features.shape == (3, 2, 3, 8) and db.local_features.dtype == np.int8
    expected = pool_local(desc.local_features, 2)
    np.testing.assert_allclose(decode_local(np.asarray(db.local_features)), expected, atol=1 / 127)
    np.testing.assert_array_equal(db.float_descriptors, desc.descriptors)


def test_damaged_maps_give_clear_errors_and_no_further_damage(tmp_path):
    db = make(tmp_path, 10)
    db.close()
    path = tmp_path / "map"
    codes = path / "codes.0.bin"
    codes_bytes = codes.read_bytes()
    with open(codes, "r+b") as f:
        f.truncate(64 * 7)
    with pytest.raises(MapError, match="truncated array file, it holds 7 of 10 committed rows"):
        MapDatabase.open(path)
    with pytest.raises(MapError, match="cannot repair without losing committed entries"):
        repair_map(path)
    assert codes.stat().st_size == 64 * 7  # repair refused and changed nothing
    codes.write_bytes(codes_bytes)
    assert check_map(path).ok

    (path / "map.sqlite").rename(tmp_path / "moved.sqlite")
    with pytest.raises(MapError, match="map.sqlite is missing but array files exist"):
        MapDatabase.open(path)
    with pytest.raises(MapError, match="holds array files but no map.sqlite"):
        MapDatabase.create(path, LAYOUT, "m:1")
    (tmp_path / "moved.sqlite").rename(path / "map.sqlite")
    with pytest.raises(MapError, match="map not found"):
        MapDatabase.open(tmp_path / "nowhere")
    with pytest.raises(MapError, match="a map exists here already"):
        MapDatabase.create(path, LAYOUT, "m:1")

    with MapDatabase.open(path, "w") as w:
        w.query("SELECT 1")
        w._conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(MapError, match="schema 99 was written by a newer selavpr_ros"):
        MapDatabase.open(path)


def test_repair_drops_only_an_uncommitted_tail(tmp_path):
    db = make(tmp_path, 10)
    db.close()
    path = tmp_path / "map"
    with open(path / "codes.0.bin", "ab") as f:  # a crashed add: codes written, float torn
        f.write(b"\x01" * 64 * 2)
    with open(path / "float.0.bin", "ab") as f:
        f.write(b"\x01" * 200)
    report = check_map(path)
    assert report.ok and report.torn_bytes == {"codes.0.bin": 128, "float.0.bin": 200}
    after = repair_map(path)
    assert after.ok and not after.torn_bytes and after.committed == 10
    assert (path / "float.0.bin").stat().st_size == 10 * 64 * 2


def _run_writer(path: Path, batch: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WRITER.parent), str(WRITER.parents[1])])}
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(path), str(batch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


class _Expected:
    """The deterministic rows the writer produces, generated once and extended as the map grows."""

    def __init__(self) -> None:
        self.desc: Descriptors | None = None

    def upto(self, n: int) -> Descriptors:
        have = 0 if self.desc is None else len(self.desc)
        if n > have:
            more, _ = rows(have, n - have)
            self.desc = more if self.desc is None else Descriptors.concat([self.desc, more])
        return self.desc[:n] if n else None


def _verify_prefix(path: Path, batch: int, expected: _Expected | None = None) -> int:
    """Reopen the map and compare every committed row with what the writer wrote."""
    expected = expected or _Expected()
    with MapDatabase.open(path) as db:
        n = db.count
        assert n % batch == 0, f"{n} rows is not a whole number of atomic batches"
        if n:
            desc = expected.upto(n)
            np.testing.assert_array_equal(np.asarray(db.codes), desc.codes)
            np.testing.assert_array_equal(np.asarray(db.float_descriptors), desc.descriptors.astype(np.float16))
            np.testing.assert_array_equal(np.asarray(db.local_features), desc.local_features.astype(np.float16))
            assert np.array_equal(db.rows["keyframe_id"], np.arange(n))
            assert np.array_equal(db.rows["stamp_ns"], np.arange(n) * 1000)
            last = db.records([0, n - 1])
            assert [r.frame_id for r in last] == ["f0", f"f{n - 1}"]
            assert db.query("SELECT COUNT(*) FROM keyframes")[0][0] == n
    return n


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_committed_entries(tmp_path):
    path, batch = tmp_path / "crash", 16
    rng = np.random.default_rng(1234)
    expected = _Expected()
    trials, previous, torn_seen = 24, 0, 0
    for _ in range(trials):
        proc = _run_writer(path, batch)
        time.sleep(float(rng.uniform(0.3, 0.9)))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        reported = [int(line.split()[1]) for line in out.splitlines() if line.startswith("committed")]
        n = _verify_prefix(path, batch, expected)
        # Every add the child saw return is there; at most the one in flight is extra.
        seen = max(reported, default=previous)
        assert seen <= n <= seen + batch and n >= previous
        report = check_map(path)
        assert report.ok, report.problems
        torn_seen += bool(report.torn_bytes)
        previous = n
    assert previous > 0
    assert repair_map(path).ok and _verify_prefix(path, batch, expected) == previous


def test_disk_full_loses_nothing_committed(tmp_path):
    """A real full filesystem: a 1 MB tmpfs in a private mount namespace (no root needed)."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) not available")
    mnt = tmp_path / "small"
    mnt.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WRITER.parent), str(WRITER.parents[1])])}
    script = f"mount -t tmpfs -o size=1m tmpfs {mnt} && exec {sys.executable} {WRITER.with_name('_disk_full.py')} {mnt}"
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    if result.returncode != 0 and "mount" in result.stderr and "permission" in result.stderr.lower():
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["committed"] > 0 and report["committed"] % 20 == 0
    assert "disk full" in report["error"]
    assert "nothing of these 20 keyframes was added, committed entries are intact" in report["error"]
    assert report["codes_intact"] and report["floats_intact"] and report["count_after_reopen"] == report["committed"]
    assert report["check_ok"] and report["repair_ok"]
    assert report["count_after_more"] == report["committed"] + 20 and report["new_rows_ok"]


def _in_read_only_mount(folder: Path, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` (Python) with ``folder`` bind-mounted read-only, in a private mount namespace."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) not available")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WRITER.parent), str(WRITER.parents[1])])}
    script = f"mount --bind -o ro {folder} {folder} && exec {sys.executable} -c \"$0\""
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script, code], capture_output=True, text=True, env=env,
                            timeout=120)
    if result.returncode != 0 and "mount" in result.stderr and "permission" in result.stderr.lower():
        pytest.skip(f"cannot bind-mount here: {result.stderr.strip()}")
    return result


def test_a_map_on_a_read_only_medium_reads(tmp_path):
    """Localization, stats and check on a map nobody can write (no WAL shared-memory file can be made);
    a copy whose WAL still holds commits is refused with what to do, never read without them."""
    folder = tmp_path / "maps"
    with MapDatabase.create(folder / "m", LAYOUT, "t:1") as db:
        desc, recs = rows(0, 12)
        db.add(desc, recs)
    code = (
        "import json, subprocess, sys\n"
        "from selavpr_ros.mapdb.database import MapDatabase\n"
        f"db = MapDatabase.open({str(folder / 'm')!r})\n"
        "out = {'count': db.count, 'stamp': int(db.rows['stamp_ns'][11]), 'writable': db.writable}\n"
        "db.close()\n"
        f"check = subprocess.run([sys.executable, '-m', 'selavpr_ros', 'map', 'check', {str(folder / 'm')!r}],"
        " capture_output=True, text=True)\n"
        "out['check'] = [check.returncode, check.stdout]\n"
        "print(json.dumps(out))\n"
    )
    result = _in_read_only_mount(folder, code)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["count"] == 12 and out["stamp"] == 11000 and not out["writable"]
    assert out["check"][0] == 0 and "OK, 12 committed entries" in out["check"][1]

    import shutil

    writer = MapDatabase.open(folder / "m", "w")  # a copy taken while a writer has commits in its WAL
    desc, recs = rows(12, 5)
    writer.add(desc, recs)
    shutil.copytree(folder / "m", tmp_path / "copy" / "m")
    writer.close()
    code = (
        "from selavpr_ros.errors import MapError\n"
        "from selavpr_ros.mapdb.database import MapDatabase\n"
        "try:\n"
        f"    MapDatabase.open({str(tmp_path / 'copy' / 'm')!r})\n"
        "except MapError as exc:\n"
        "    print(exc)\n"
    )
    result = _in_read_only_mount(tmp_path / "copy", code)
    assert "read-only folder" in result.stdout and "still holds committed changes" in result.stdout, result.stderr


def test_check_and_repair_refuse_arrays_that_contradict_the_layout_metadata(tmp_path):
    """Metadata saying float16 over a float32 file: the surplus is committed data, not a crashed add's
    tail. check says DAMAGED and why; repair refuses and leaves every byte as it was."""
    import sqlite3

    path = tmp_path / "map"
    with MapDatabase.create(path, LAYOUT, "t:1", storage=StorageConfig(float_dtype="float32")) as db:
        desc, recs = rows(0, 10)
        db.add(desc, recs)
    floats = (path / "float.0.bin").read_bytes()
    conn = sqlite3.connect(path / "map.sqlite")
    storage = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'storage'").fetchone()[0])
    edited = json.dumps({**storage, "float_dtype": "float16"})
    conn.execute("UPDATE meta SET value = ? WHERE key = 'storage'", (edited,))
    conn.commit()
    conn.close()
    report = check_map(path)
    assert not report.ok and "does not match the map's layout metadata" in report.problems[0]
    assert "float.0.bin" in report.problems[0] and "codes.0.bin" in report.problems[0]
    with pytest.raises(MapError, match="cannot repair without losing committed entries"):
        repair_map(path)
    assert (path / "float.0.bin").read_bytes() == floats
    # a real crashed add still is a tail that repair drops
    ok = tmp_path / "ok"
    with MapDatabase.create(ok, LAYOUT, "t:1") as db:
        desc, recs = rows(0, 10)
        db.add(desc, recs)
    with open(ok / "codes.0.bin", "ab") as f:
        f.write(b"\1" * 64 * 3)
    with open(ok / "float.0.bin", "ab") as f:
        f.write(b"\1" * 100)
    report = check_map(ok)
    assert report.ok and set(report.torn_bytes) == {"codes.0.bin", "float.0.bin"}
    assert repair_map(ok).ok and check_map(ok).torn_bytes == {}


def test_a_failed_add_leaves_no_empty_session(tmp_path):
    with MapDatabase.create(tmp_path / "map", LAYOUT, "t:1") as db:
        desc, recs = rows(0, 4)
        db.add(desc, recs, session="a")
        bad = Descriptors(desc.codes, np.full_like(desc.descriptors, np.nan), desc.hash_z, desc.local_features)
        with pytest.raises(MapError, match="NaN"):
            db.add(bad, rows(4, 4)[1], session="c")
        broken = rows(4, 4)[1]
        broken[2].stamp_ns = "not a stamp"  # fails inside the commit, after the arrays were written
        with pytest.raises((MapError, TypeError, ValueError)):
            db.add(rows(4, 4)[0], broken, session="c")
        assert db.sessions() == {"a": 4} and db.count == 4
        db.add(*rows(4, 2), session="c")
        assert db.sessions() == {"a": 4, "c": 2}
    assert check_map(tmp_path / "map").ok


def test_map_tools_name_what_is_wrong_without_a_traceback(tmp_path, capsys):
    import sqlite3

    from selavpr_ros.cli import main

    afile = tmp_path / "afile"
    afile.write_text("not a map")
    for call in (lambda: MapDatabase.create(afile, LAYOUT, "t:1"), lambda: MapDatabase.open(afile)):
        with pytest.raises(MapError, match="is a file, not a map folder"):
            call()
    assert main(["node", "-p", f"map_path:={afile}", "-p", "device:=cpu"]) != 0
    assert "is a file, not a map folder" in capsys.readouterr().err
    assert main(["map", "check", str(tmp_path / "nothing")]) == 2
    assert "NOT CHECKED" in capsys.readouterr().out  # not "DAMAGED, 0 committed entries"
    make(tmp_path, 3).close()
    conn = sqlite3.connect(tmp_path / "map" / "map.sqlite")
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    assert main(["map", "check", str(tmp_path / "map")]) == 2
    out = capsys.readouterr().out
    assert "NOT CHECKED" in out and "newer selavpr_ros" in out
    conn.execute("UPDATE meta SET value = 'one' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(MapError, match="schema_version 'one' is not a number"):
        MapDatabase.open(tmp_path / "map")
    assert main(["map", "check", str(tmp_path / "map")]) == 1
    assert "DAMAGED" in capsys.readouterr().out
    assert main(["map", "repair", str(tmp_path / "map")]) != 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_read_only_filesystem_refuses_writers_with_a_message(tmp_path):
    folder = tmp_path / "maps"
    make(folder, 3).close()
    code = (
        "import sys\n"
        "sys.path.insert(0, 'test')\n"
        "from _map_writer import LAYOUT\n"
        "from selavpr_ros.errors import MapError\n"
        "from selavpr_ros.mapdb.database import MapDatabase\n"
        "for call in (lambda: MapDatabase.create(" f"{str(folder / 'new')!r}" ", LAYOUT, 't:1'),\n"
        "             lambda: MapDatabase.open(" f"{str(folder / 'map')!r}" ", 'w')):\n"
        "    try:\n"
        "        call()\n"
        "    except MapError as exc:\n"
        "        print(exc)\n"
    )
    result = _in_read_only_mount(folder, code)
    assert result.returncode == 0, result.stderr
    assert "cannot create a map here (Read-only file system)" in result.stdout
    assert "cannot open the map for writing (Read-only file system)" in result.stdout


def _robot_map(path: Path, start: int, n: int, sessions: list[tuple[str, int]], storage=None,
               model_id: str = "m:1") -> MapDatabase:
    """A map whose sessions (name, robot) each hold n keyframes with cameras, keypoints, SLAM ids, images."""
    from selavpr_ros.geometry.camera import CameraModel
    from selavpr_ros.geometry.features import Keypoints

    db = MapDatabase.create(path, LAYOUT, model_id, {"method": "test"}, storage)
    for k, (name, robot) in enumerate(sessions):
        desc, recs = rows(start + k * n, n)
        kps = []
        for i, r in enumerate(recs):
            r.robot_id, r.slam_id = robot, 1000 * robot + i
            r.camera = CameraModel.nominal(64, 48, 60.0 + k)
            image = Path("images", name, f"{r.stamp_ns}.jpg")
            (path / image).parent.mkdir(parents=True, exist_ok=True)
            (path / image).write_bytes(f"jpeg {start} {k} {i}".encode())
            r.image_ref = str(image)
            rng = np.random.default_rng(i)
            kps.append(Keypoints("orb", rng.uniform(0, 60, (5, 2)).astype(np.float32),
                                 rng.integers(0, 255, (5, 32), np.uint8)) if i % 2 == 0 else None)
        db.add(desc, recs, session=name, keypoints=kps)
    return db


def test_merge_keeps_sessions_robots_and_everything_stored(tmp_path, capsys):
    """Two robots' maps (a session name taken twice, a deleted session) merge into one without
    re-extraction: same bytes, records, cameras, keypoints and images; the result searches as both."""
    from selavpr_ros.cli import main
    from selavpr_ros.mapdb.merge import merge_maps

    a = _robot_map(tmp_path / "a", 0, 6, [("live", 1), ("dock", 1)])
    b = _robot_map(tmp_path / "b", 100, 5, [("live", 2), ("gone", 2)])
    b.delete_session("gone")
    a.close()
    b.close()
    assert main(["map", "merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "17 keyframes" in out and "live@b (renamed from 'live'): 5 keyframes, robot 2" in out
    with MapDatabase.open(tmp_path / "c") as c, MapDatabase.open(tmp_path / "a") as a, \
            MapDatabase.open(tmp_path / "b") as b:
        assert c.sessions() == {"live": 6, "dock": 6, "live@b": 5} and c.model_id == "m:1"
        sources = [(a, list(range(12))), (b, list(range(5)))]
        merged_row = 0
        for src, src_rows in sources:
            n = len(src_rows)
            here = list(range(merged_row, merged_row + n))
            np.testing.assert_array_equal(np.asarray(c.codes[here]), np.asarray(src.codes[src_rows]))
            np.testing.assert_array_equal(np.asarray(c.float_descriptors[here]),
                                          np.asarray(src.float_descriptors[src_rows]))
            np.testing.assert_array_equal(np.asarray(c.local_features[here]), np.asarray(src.local_features[src_rows]))
            for got, want in zip(c.records(here), src.records(src_rows)):
                assert (got.stamp_ns, got.pose, got.camera, got.slam_id, got.robot_id, got.frame_id) == \
                       (want.stamp_ns, want.pose, want.camera, want.slam_id, want.robot_id, want.frame_id)
                assert (tmp_path / "c" / got.image_ref).read_bytes() == (src.path / want.image_ref).read_bytes()
            kp_c = c.keypoints([c.records([r])[0].keyframe_id for r in here])
            kp_s = src.keypoints([r.keyframe_id for r in src.records(src_rows)])
            assert len(kp_c) == len(kp_s) > 0
            for got, want in zip(kp_c.values(), kp_s.values()):
                np.testing.assert_array_equal(got.xy, want.xy)
                np.testing.assert_array_equal(got.descriptors, want.descriptors)
            merged_row += n
        assert c.records([12])[0].image_ref.startswith("images/live@b/")
    assert check_map(tmp_path / "c").ok
    # refused before anything is written: another model, another storage, an existing destination
    _robot_map(tmp_path / "other", 0, 2, [("x", 3)], model_id="m:2").close()
    with pytest.raises(MapError, match=r"other was built with model m:2, .*a with m:1"):
        merge_maps([tmp_path / "a", tmp_path / "other"], tmp_path / "d", progress=False)
    _robot_map(tmp_path / "f32", 0, 2, [("x", 3)], storage=StorageConfig(float_dtype="float32")).close()
    with pytest.raises(MapError, match="store descriptors differently"):
        merge_maps([tmp_path / "a", tmp_path / "f32"], tmp_path / "d", progress=False)
    with pytest.raises(MapError, match="exists"):
        merge_maps([tmp_path / "a", tmp_path / "b"], tmp_path / "c", progress=False)
    assert not (tmp_path / "d").exists() and not (tmp_path / "d.partial").exists()


def test_merge_never_follows_image_references_out_of_the_map(tmp_path):
    """Image references that point outside the source map ('..', a symbolic link to a file elsewhere)
    are kept as they are and nothing outside either map is read into, or written beside, the merge."""
    from selavpr_ros.mapdb.merge import merge_maps

    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"not the map's")
    db = _robot_map(tmp_path / "a", 0, 3, [("live", 1)])
    db.close()
    with MapDatabase.open(tmp_path / "a") as ro:
        refs = [r.image_ref for r in ro.records([0, 1, 2])]
    (tmp_path / "a" / refs[1]).unlink()
    (tmp_path / "a" / refs[1]).symlink_to(secret)  # planted below images/<session>/
    import sqlite3

    with sqlite3.connect(tmp_path / "a" / DB_NAME) as conn:
        conn.execute("UPDATE keyframes SET image_ref = ? WHERE id = 2", ("../secret.jpg",))
    _robot_map(tmp_path / "b", 100, 2, [("dock", 2)]).close()
    merge_maps([tmp_path / "a", tmp_path / "b"], tmp_path / "out" / "c", progress=False)
    with MapDatabase.open(tmp_path / "out" / "c") as c:
        got = [r.image_ref for r in c.records([0, 1, 2])]
    assert got == [refs[0], refs[1], "../secret.jpg"]  # kept, not followed
    assert (tmp_path / "out" / "c" / refs[0]).is_file() and not (tmp_path / "out" / "c" / refs[1]).exists()
    assert not (tmp_path / "out" / "secret.jpg").exists()


def test_a_merge_killed_midway_leaves_no_destination(tmp_path):
    """SIGKILL during the merge: the destination is absent (only a .partial that the next merge
    replaces); the next merge completes."""
    for name, start in (("a", 0), ("b", 5000)):
        db = MapDatabase.create(tmp_path / name, LAYOUT, "m:1")
        for s in range(0, 3000, 500):
            desc, recs = rows(start + s, 500)
            db.add(desc, recs, session=name)
        db.close()
    code = ("import sys, selavpr_ros.mapdb.merge as m\n"
            "m.CHUNK = 50\n"
            "orig = m.MapDatabase.append_stored\n"
            "def slow(self, *a, **k):\n"
            "    print('chunk', flush=True)\n"
            "    return orig(self, *a, **k)\n"
            "m.MapDatabase.append_stored = slow\n"
            "m.merge_maps(sys.argv[1:3], sys.argv[3], progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "a"), str(tmp_path / "b"),
                             str(tmp_path / "c")], stdout=subprocess.PIPE, text=True)
    for _ in range(20):  # some chunks committed, the merge far from done
        assert proc.stdout.readline().startswith("chunk")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "c").exists() and (tmp_path / "c.partial").exists()
    from selavpr_ros.mapdb.merge import merge_maps

    report = merge_maps([tmp_path / "a", tmp_path / "b"], tmp_path / "c", progress=False)
    assert report.keyframes == 6000 and not (tmp_path / "c.partial").exists()
    with MapDatabase.open(tmp_path / "c") as c:
        assert c.sessions() == {"a": 3000, "b": 3000}
