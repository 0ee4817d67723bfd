"""``selavpr-ros map check|repair``: verify a map and drop what a crash left behind.

``check`` verifies SQLite's integrity, that the metadata and the arrays agree
on the committed entries, and reports uncommitted tails and stale files.
``repair`` truncates uncommitted tails and removes files of other
generations; it never touches committed entries, and it refuses (leaving the
map as it is) when committed data is missing.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selavpr_ros.errors import MapError, MapNotFoundError, MapVersionError
from selavpr_ros.mapdb.database import DB_NAME, MapDatabase


@dataclass
class CheckReport:
    path: Path
    ok: bool = True
    problems: list[str] = field(default_factory=list)  # damage that loses committed data
    notes: list[str] = field(default_factory=list)  # harmless leftovers that repair removes
    committed: int = 0
    not_checked: str = ""  # why the path could not be checked at all (no map there, a newer schema)
    torn_bytes: dict[str, int] = field(default_factory=dict)
    stale_files: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.ok = False
        self.problems.append(text)


def check_map(path: str | Path) -> CheckReport:
    path = Path(path)
    report = CheckReport(path)
    try:
        db = MapDatabase.open(path, "r")
    except (MapNotFoundError, MapVersionError) as exc:  # nothing this version can judge: not damage
        report.ok, report.not_checked = False, str(exc)
        return report
    except MapError as exc:
        report.problem(str(exc))
        return report
    with db:
        report.committed = db.count
        result = db.query("PRAGMA integrity_check")[0][0]
        if result != "ok":
            report.problem(f"SQLite integrity check: {result}")
        n_rows, max_row = db.query("SELECT COUNT(*), COALESCE(MAX(row), -1) FROM keyframes")[0]
        if n_rows != db.count or max_row != db.count - 1:
            report.problem(f"metadata lists {n_rows} keyframes (last row {max_row}) but {db.count} are committed")
        ids = np.array([i for (i,) in db.query("SELECT id FROM keyframes ORDER BY row")], np.int64)
        if len(ids) == db.count and not np.array_equal(ids, db.rows["keyframe_id"]):
            report.problem("keyframe ids in rows array disagree with the metadata")
        _check_tails(db, report)
        live = {a.path.name for a in db.arrays.values()}
    for p in path.glob("*.bin"):
        if p.name not in live and re.match(r"^(codes|float|local|rows)\.\d+\.bin$", p.name):
            report.stale_files.append(p.name)
            report.notes.append(f"{p.name}: file of an old generation (interrupted compaction)")
    return report


def _check_tails(db: MapDatabase, report: CheckReport) -> None:
    """Tell a crashed add's uncommitted tail from a file that contradicts the map's metadata.

    An add writes the arrays in one order (codes, float, local, rows) and commits after the last, so a
    crash leaves tails that never grow along that order: a file holding more uncommitted rows than one
    written before it is no tail but a file of another layout (another float precision or width than the
    metadata says), and cutting it would destroy committed rows. That is damage, and repair refuses it.
    """
    previous: tuple[str, int] | None = None
    for name in ("codes", "float", "local", "rows"):
        array = db.arrays.get(name)
        if array is None:
            continue
        extra = array.path.stat().st_size - array.nbytes(db.count) if array.path.exists() else 0
        extra_rows = -(-extra // array.row_bytes) if extra > 0 else 0  # a torn last row counts as a row
        if previous is not None and extra_rows > previous[1]:
            report.problem(
                f"{array.path.name} holds {extra} bytes ({extra_rows} rows of {array.row_bytes} B) beyond its "
                f"{db.count} committed rows, more than {previous[0]} written before it: not a crashed add's tail "
                f"but a file that does not match the map's layout metadata ({db.info.stored.layout.describe()}, "
                f"storage {db.info.stored.storage}); nothing was changed")
            return
        if extra > 0:
            report.torn_bytes[array.path.name] = extra
            report.notes.append(f"{array.path.name}: {extra} bytes of uncommitted tail (a crashed add)")
        previous = (array.path.name, extra_rows)


def repair_map(path: str | Path) -> CheckReport:
    """Drop torn tails and stale files; committed entries are never modified."""
    path = Path(path)
    report = check_map(path)
    if report.not_checked:
        raise MapError(report.not_checked)
    if not report.ok:
        raise MapError(f"{path}: cannot repair without losing committed entries: {'; '.join(report.problems)}")
    with MapDatabase.open(path, "w") as db:
        for array in db.arrays.values():
            array.truncate(db.count)
        with contextlib.suppress(sqlite3.DatabaseError):
            db.query("PRAGMA wal_checkpoint(TRUNCATE)")
    for name in report.stale_files:
        (path / name).unlink(missing_ok=True)
    after = check_map(path)
    after.notes = [f"removed: {n}" for n in report.notes] or ["nothing to repair"]
    return after


__all__ = ["CheckReport", "DB_NAME", "check_map", "repair_map"]
