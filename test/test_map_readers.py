"""A running reader stays consistent with a map that another process maintains (compaction, deletion, growth)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.retrieval.config import RetrievalConfig
from selavpr_ros.retrieval.retriever import Retriever

HERE = Path(__file__).resolve().parent


def writer(path: Path, code: str) -> None:
    """Run maintenance in another process, as `selavpr-ros map ...` or a mapping node would."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from _map_writer import LAYOUT, rows
        from selavpr_ros.mapdb.database import MapDatabase
        path = {str(path)!r}
    """) + textwrap.dedent(code)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def self_queries(retriever: Retriever, db: MapDatabase) -> tuple[int, int, set[int]]:
    """(live rows, rows whose own descriptors find them first, rows ever returned that are deleted)."""
    retriever.sync()
    live = np.flatnonzero(db.live_mask())
    hits, returned = 0, set()
    for row in live:
        cand = retriever.search(db.descriptors([int(row)]))
        hits += int(cand.rows[0]) == int(row)
        returned.update(int(r) for r in cand.rows)
    deleted = set(np.flatnonzero(~db.live_mask()).tolist())
    return len(live), hits, returned & deleted


def test_reader_follows_deletion_compaction_and_regrowth(tmp_path):
    path = tmp_path / "map"
    writer(path, """
        db = MapDatabase.create(path, LAYOUT, "readers:test")
        d, r = rows(0, 150); db.add(d, r, session="a")
        d, r = rows(150, 120); db.add(d, r, session="b")
    """)
    db = MapDatabase.open(path, "r")
    retriever = Retriever(db, RetrievalConfig(stages=["binary", "float"], k=10))
    assert self_queries(retriever, db)[:2] == (270, 270)

    writer(path, 'db = MapDatabase.open(path, "w"); db.delete_session("a")')  # count unchanged
    live, hits, ghosts = self_queries(retriever, db)
    assert (live, hits, ghosts) == (120, 120, set())  # deleted rows never come back

    writer(path, """
        db = MapDatabase.open(path, "w"); db.compact()
        d, r = rows(270, 200); db.add(d, r, session="c")   # grows past the size the reader had indexed
    """)
    live, hits, ghosts = self_queries(retriever, db)
    assert (live, hits, ghosts) == (320, 320, set())
    fresh = Retriever(MapDatabase.open(path, "r"), RetrievalConfig(stages=["binary", "float"], k=10))
    assert fresh.indexed == retriever.indexed == 320
    db.close()
