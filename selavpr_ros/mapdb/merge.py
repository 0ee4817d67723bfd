"""``selavpr-ros map merge``: one map from several maps of the same model, without re-extraction.

Maps built by different robots, machines or workers combine as they are
stored: descriptors, codes and local features are copied byte for byte;
records keep their stamps, poses, camera models, SLAM ids and keypoints;
each session keeps its robot. Keyframe ids are the merged map's own. A
session name already taken by an earlier map is renamed ``NAME@MAP``
(reported). Deleted keyframes are left out.

The merged map is written beside its destination under ``NAME.partial`` and
renamed into place only when complete: a crash or kill leaves the
destination absent, never half written (a stale ``.partial`` is removed by
the next merge).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from selavpr_ros.errors import MapError
from selavpr_ros.mapdb.database import MapDatabase

CHUNK = 1024  # rows appended per atomic commit


@dataclass
class MergedSession:
    source: str
    name: str
    merged_name: str
    robot_id: int
    keyframes: int


@dataclass
class MergeReport:
    out: str
    model_id: str
    keyframes: int = 0
    sessions: list[MergedSession] = field(default_factory=list)


def _sessions(db: MapDatabase) -> list[tuple[int, str, int]]:
    """(id, name, robot id) of each live session, in creation order."""
    try:
        return [(int(i), n, int(r)) for i, n, r in
                db.query("SELECT id, name, robot_id FROM sessions WHERE deleted = 0 ORDER BY id")]
    except sqlite3.OperationalError:  # a map from before robot ids
        return [(int(i), n, 0) for i, n in db.query("SELECT id, name FROM sessions WHERE deleted = 0 ORDER BY id")]


def _free_name(name: str, source: Path, taken: set[str]) -> str:
    if name not in taken:
        return name
    candidate, n = f"{name}@{source.name}", 2
    while candidate in taken:
        candidate, n = f"{name}@{source.name}-{n}", n + 1
    return candidate


def merge_maps(sources: list[str | Path], out: str | Path, progress: bool = True) -> MergeReport:
    """Write the merged map of ``sources`` (in that order) to the new directory ``out``."""
    out = Path(out).expanduser()
    if len(sources) < 2:
        raise MapError("merge needs at least two maps")
    if out.exists():
        raise MapError(f"{out} exists; choose a new directory for the merged map")
    dbs = [MapDatabase.open(p, "r") for p in sources]
    try:
        first = dbs[0]
        for db in dbs[1:]:  # every check before anything is written
            first.check_stored_alike(db)
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        report = MergeReport(str(out), first.model_id)
        try:
            merged = MapDatabase.create(partial, first.layout, first.model_id, first.info.model_config,
                                        first.info.stored.storage)
            try:
                _copy_all(dbs, merged, report, progress)
            finally:
                merged.close()
            os.replace(partial, out)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    finally:
        for db in dbs:
            db.close()
    return report


def _copy_all(dbs: list[MapDatabase], merged: MapDatabase, report: MergeReport, progress: bool) -> None:
    total = sum(int(db.live_mask().sum()) for db in dbs)
    bar = tqdm(total=total, desc="merging", unit="kf", disable=not progress)
    taken: set[str] = set()
    for db in dbs:
        rows_meta = db.rows[: db.count]
        live = db.live_mask()
        for sid, name, robot in _sessions(db):
            rows = np.flatnonzero((rows_meta["session"] == sid) & live)
            if not len(rows):
                continue
            new_name = _free_name(name, db.path, taken)
            taken.add(new_name)
            for start in range(0, len(rows), CHUNK):
                chunk = rows[start : start + CHUNK]
                records = db.records(chunk)
                _copy_images(db.path, merged.path, records, name, new_name)
                merged.append_stored(db, chunk, new_name, records)
                bar.update(len(chunk))
            report.sessions.append(MergedSession(str(db.path), name, new_name, robot, len(rows)))
            report.keyframes += len(rows)
    bar.close()


def _copy_images(src: Path, dst: Path, records: list, name: str, new_name: str) -> None:
    """Keyframe images saved in the source map (``build-map --save-images``) travel with their records
    (into the renamed session's folder when the session was renamed). Only regular files inside the
    source map are copied, and only to inside the merged one: a reference elsewhere (a dataset's
    absolute path, ``..``, a symbolic link) stays as it is, never followed."""
    root = src.resolve()
    for record in records:
        ref = Path(record.image_ref) if record.image_ref else None
        if ref is None or ref.is_absolute() or ".." in ref.parts:
            continue
        file = src / ref
        if file.is_symlink() or not file.is_file() or not file.resolve().is_relative_to(root):
            continue
        new_ref = Path("images", new_name, *ref.parts[2:]) if ref.parts[:2] == ("images", name) else ref
        (dst / new_ref).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / ref, dst / new_ref)
        record.image_ref = str(new_ref)
