"""Symbolic links planted in a map folder never turn map tools against files outside it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _map_writer import LAYOUT, rows

from selavpr_ros.errors import MapError
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.mapdb.maintenance import check_map, repair_map


def make_map(path: Path, n: int = 100) -> None:
    db = MapDatabase.create(path, LAYOUT, "links:test")
    desc, records = rows(0, n)
    db.add(desc, records, session="s")
    db.close()


@pytest.mark.parametrize("entry", ["writer.lock", "codes.0.bin", "float.0.bin", "rows.0.bin", "local.0.bin",
                                   "map.sqlite"])
def test_planted_link_is_refused_and_its_target_untouched(tmp_path, entry):
    m = tmp_path / "map"
    make_map(m)
    victim = tmp_path / "victim.bin"
    if (m / entry).exists():
        shutil.copyfile(m / entry, victim)
        with open(victim, "ab") as f:
            f.write(b"\\0" * 100_000)  # a long "uncommitted tail" that repair would cut
        (m / entry).unlink()
    else:
        victim.write_bytes(b"precious" * 10_000)
    before = victim.read_bytes()
    (m / entry).symlink_to(victim)
    for action in (lambda: MapDatabase.open(m, "w"), lambda: MapDatabase.open(m, "r"), lambda: repair_map(m)):
        with pytest.raises(MapError, match=rf"{entry}: map entry is a symbolic link"):
            action()
    report = check_map(m)
    assert not report.ok and "symbolic link" in " ".join(report.problems)
    assert victim.read_bytes() == before


def test_create_refuses_a_planted_database_link(tmp_path):
    m = tmp_path / "new"
    m.mkdir()
    (m / "map.sqlite").symlink_to(tmp_path / "elsewhere.sqlite")  # dangling: SQLite would create it
    with pytest.raises(MapError, match="symbolic link"):
        MapDatabase.create(m, LAYOUT, "links:test")
    assert not (tmp_path / "elsewhere.sqlite").exists()


def test_a_link_planted_in_the_index_folder_is_refused(tmp_path):
    """The IVF is written as index/ivf.faissbin.tmp, then renamed: a planted link there would aim the write."""
    m = tmp_path / "map"
    make_map(m)
    (m / "index").mkdir()
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious" * 1000)
    (m / "index" / "ivf.faissbin.tmp").symlink_to(victim)
    for mode in ("w", "r"):
        with pytest.raises(MapError, match=r"index/ivf.faissbin.tmp: map entry is a symbolic link"):
            MapDatabase.open(m, mode)
    assert victim.read_bytes() == b"precious" * 1000
