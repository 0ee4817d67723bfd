"""The map database: one directory per map, safe against crashes, one writer and many readers.

Layout of a map directory::

    map.sqlite            metadata (WAL): keyframes, sessions, model, layout, committed count
    codes.<g>.bin         N x bits/8 uint8           (append-only, memory-mapped)
    float.<g>.bin         N x D float16/float32
    local.<g>.bin         N x h x w x C (optional, float16/float32/int8, optionally pooled)
    rows.<g>.bin          N x 24 B: keyframe id, stamp, session, flags (search-time metadata)
    writer.lock           advisory lock held by the single writer

``<g>`` is the generation, bumped by compaction. An add writes and fsyncs the
array rows first and then commits their metadata and the new count in one
SQLite transaction; readers see only committed rows. A crash at any moment
leaves exactly a prefix of the committed adds, and at most an uncommitted
tail in the arrays that the next add overwrites (``repair`` truncates it).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selavpr_ros._version import __version__
from selavpr_ros.config import from_dict, to_dict
from selavpr_ros.errors import (
    DiskFullError,
    LayoutMismatchError,
    MapError,
    MapLockedError,
    MapNotFoundError,
    MapVersionError,
)
from selavpr_ros.geometry.camera import CameraModel
from selavpr_ros.geometry.features import Keypoints
from selavpr_ros.mapdb.arrays import RowArray
from selavpr_ros.mapdb.records import FLAG_HAS_POSE, ROW_META, StorageConfig, StoredLayout, decode_local, encode_local
from selavpr_ros.types import MODEL_ID_FORMAT, DescriptorLayout, Descriptors, KeyframeRecord, Pose, upgrade_model_id

SCHEMA_VERSION = 1
DB_NAME = "map.sqlite"
LOCK_NAME = "writer.lock"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    robot_id INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE keyframes (
    id INTEGER PRIMARY KEY,
    row INTEGER UNIQUE NOT NULL,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    stamp_ns INTEGER NOT NULL,
    frame_id TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    topic TEXT NOT NULL DEFAULT '',
    image_ref TEXT NOT NULL DEFAULT '',
    px REAL, py REAL, pz REAL, qx REAL, qy REAL, qz REAL, qw REAL,
    covariance BLOB,
    deleted INTEGER NOT NULL DEFAULT 0,
    pose_frame TEXT NOT NULL DEFAULT '',
    camera_id INTEGER,
    slam_id INTEGER
);
CREATE INDEX keyframes_session ON keyframes(session_id);
CREATE INDEX keyframes_deleted ON keyframes(deleted) WHERE deleted = 1;
"""
# Geometry (camera models, keyframe keypoints) came after schema 1's first release: additive
# tables, created when a writer opens an older map; readers of such a map see no geometry.
_GEOMETRY_SCHEMA = """
CREATE TABLE IF NOT EXISTS cameras (id INTEGER PRIMARY KEY, digest TEXT UNIQUE NOT NULL, model TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keypoints (keyframe_id INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""

_KEYFRAME_COLUMNS = (
    "k.id, k.row, s.name, k.stamp_ns, k.frame_id, k.source, k.topic, k.image_ref, "
    "k.px, k.py, k.pz, k.qx, k.qy, k.qz, k.qw, k.covariance, {pose_frame}, {camera}, {slam_id}, {robot_id}"
)


def _refuse_links(path: Path) -> None:
    """Refuse a map folder holding symbolic links: map tools write, truncate and lock these files,
    and a planted link would turn them against files outside the map."""
    subfolders = ("images", "index")  # keyframe images; the retrieval index (selavpr_ros.retrieval.ivf)
    for entry in (*path.iterdir(), *(e for sub in subfolders if (path / sub).is_dir() for e in (path / sub).iterdir())):
        if entry.is_symlink():
            raise MapError(
                f"{entry}: map entry is a symbolic link (to {os.readlink(entry)}); map files must be regular files "
                "inside the map folder, refusing to open the map"
            )


class _limited:
    """A read-only file view of the first ``size`` bytes (for copying committed rows only)."""

    def __init__(self, f, size: int) -> None:
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class MapInfo:
    """What ``open`` learns from the metadata."""

    model_id: str
    stored: StoredLayout
    model_config: dict | None
    count: int
    generation: int


class MapDatabase:
    """An embedded map of keyframes (see the module docstring for the on-disk layout)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, writable: bool, lock_file=None) -> None:
        self.path = path
        self._conn = conn
        self.writable = writable
        self._lock_file = lock_file
        self._mutex = threading.RLock()
        self.durable = True  # fsync every commit (create(durable=False): a scratch map)
        self._load_meta()

    # -- opening ----------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        layout: DescriptorLayout,
        model_id: str,
        model_config: dict | None = None,
        storage: StorageConfig | None = None,
        durable: bool = True,
    ) -> MapDatabase:
        """Create an empty map for a model; the directory must not hold a map already.

        ``durable=False`` makes a scratch map (evaluation): nothing is fsynced, so a power loss may
        lose it; everything else, atomic adds included, is as for a map a robot keeps.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise MapError(f"{path} is a file, not a map folder; choose a folder for the map")
        if (path / DB_NAME).exists():
            raise MapError(f"{path}: a map exists here already; open it, or choose another directory")
        if path.exists() and any(p.suffix == ".bin" for p in path.iterdir()):
            raise MapError(f"{path}: holds array files but no {DB_NAME}; refusing to overwrite a damaged map")
        try:
            path.mkdir(parents=True, exist_ok=True)
            _refuse_links(path)
            lock = cls._acquire_lock(path)
        except OSError as exc:  # read-only filesystem, permissions, a file where a parent folder should be
            raise MapError(f"{path}: cannot create a map here ({exc.strerror or exc})") from None
        stored = StoredLayout(layout, storage or StorageConfig())
        conn = cls._connect(path / DB_NAME, writable=True)
        with conn:
            conn.executescript(_SCHEMA)
            conn.executescript(_GEOMETRY_SCHEMA)
            meta = {
                "schema_version": str(SCHEMA_VERSION),
                "count": "0",
                "next_id": "0",
                "generation": "0",
                "model_id": model_id,
                "model_id_format": MODEL_ID_FORMAT,
                "layout": json.dumps(layout.to_dict()),
                "storage": json.dumps(to_dict(stored.storage)),
                "model_config": json.dumps(model_config) if model_config is not None else "null",
                "created": _now(),
                "package_version": __version__,
            }
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        db = cls(path, conn, writable=True, lock_file=lock)
        if not durable:
            conn.execute("PRAGMA synchronous=OFF")
            db.durable = False
        return db

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> MapDatabase:
        """Open a map for reading (``r``) or for adding (``w``, one writer at a time)."""
        path = Path(path)
        if mode not in ("r", "w"):
            raise ValueError(f"mode must be 'r' or 'w', got {mode!r}")
        if path.exists() and not path.is_dir():
            raise MapNotFoundError(f"{path} is a file, not a map folder")
        if not path.is_dir():
            raise MapNotFoundError(f"{path}: map not found (no such directory); build one with "
                                   "`selavpr-ros build-map`")
        _refuse_links(path)
        if not (path / DB_NAME).is_file():
            if any(p.suffix == ".bin" for p in path.iterdir()):
                raise MapError(f"{path}: {DB_NAME} is missing but array files exist; the map's metadata is lost")
            raise MapNotFoundError(f"{path}: not a map (no {DB_NAME})")
        try:
            lock = cls._acquire_lock(path) if mode == "w" else None
        except OSError as exc:  # a read-only filesystem or folder: no writer can work here
            raise MapError(f"{path}: cannot open the map for writing ({exc.strerror or exc}); "
                           "open it read-only (localization) or copy it somewhere writable") from None
        try:
            conn = cls._connect(path / DB_NAME, writable=mode == "w")
            return cls(path, conn, writable=mode == "w", lock_file=lock)
        except Exception:
            if lock is not None:
                lock.close()
            raise

    @staticmethod
    def _connect(db: Path, writable: bool) -> sqlite3.Connection:
        if not writable and not os.access(db.parent, os.W_OK):
            return MapDatabase._connect_immutable(db)
        try:
            conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            if not writable:
                conn.execute("PRAGMA query_only=ON")
            return conn
        except sqlite3.DatabaseError as exc:
            raise MapError(f"{db}: not a readable SQLite database ({exc})") from None

    @staticmethod
    def _connect_immutable(db: Path) -> sqlite3.Connection:
        """A map in a folder nobody can write (read-only medium, mount or permissions): SQLite cannot
        create the WAL's shared-memory file there, so the map is opened as an immutable file. That is
        exact when everything is folded into the database file, as closing a writer leaves it; a
        WAL file with content would be ignored, so it is refused instead."""
        from urllib.parse import quote

        wal = db.with_name(db.name + "-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            raise MapError(
                f"{db.parent}: the map is in a read-only folder and {wal.name} still holds committed changes that "
                "only a writer can fold in; open it once where it is writable (a copy will do), then use it here")
        try:
            conn = sqlite3.connect(f"file:{quote(str(db))}?mode=ro&immutable=1", uri=True, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
            conn.execute("SELECT 1 FROM meta LIMIT 1")
            return conn
        except sqlite3.DatabaseError as exc:
            raise MapError(f"{db}: not a readable SQLite database ({exc})") from None

    @staticmethod
    def _acquire_lock(path: Path):
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # a planted link fails here
        lock = os.fdopen(fd, "r+")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise MapLockedError(f"{path}: map is open for writing by {holder}; open it read-only") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        return lock

    def _load_meta(self) -> None:
        try:
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise MapError(f"{self.path}: metadata unreadable ({exc})") from None
        try:
            version = int(meta.get("schema_version", "0"))
        except ValueError:
            raise MapError(f"{self.path}: schema_version {meta.get('schema_version')!r} is not a number; "
                           "the metadata was edited or is corrupt") from None
        if version > SCHEMA_VERSION:
            raise MapVersionError(
                f"{self.path}: map schema {version} was written by a newer selavpr_ros "
                f"({meta.get('package_version')}); this version reads schema {SCHEMA_VERSION}. Upgrade."
            )
        try:
            layout = DescriptorLayout.from_dict(json.loads(meta["layout"]))
            storage = from_dict(StorageConfig, json.loads(meta["storage"]))
            model_config = json.loads(meta.get("model_config", "null"))
            self.info = MapInfo(
                model_id=meta["model_id"] if meta.get("model_id_format") == MODEL_ID_FORMAT else
                upgrade_model_id(meta["model_id"], model_config),  # built before ids named the configuration
                stored=StoredLayout(layout, storage),
                model_config=model_config,
                count=int(meta["count"]),
                generation=int(meta["generation"]),
            )
        except (KeyError, ValueError) as exc:
            raise MapError(f"{self.path}: metadata incomplete or corrupt ({exc})") from None
        self._next_id = int(meta["next_id"])
        self._arrays = self._make_arrays(self.info.generation)
        for array in self._arrays.values():
            array.check(self.info.count)
        self._deleted = {r for (r,) in self._conn.execute("SELECT row FROM keyframes WHERE deleted = 1")}
        self._sessions = {name: sid for sid, name in self._conn.execute("SELECT id, name FROM sessions")}
        self._changes = self._read_changes()
        # The frame of each pose (REP 105) came after schema 1's first release: an additive column,
        # added when a writer opens an older map; readers of such a map see it empty.
        columns = {c[1] for c in self._conn.execute("PRAGMA table_info(keyframes)")}
        if "pose_frame" not in columns and self.writable:
            self._conn.execute("ALTER TABLE keyframes ADD COLUMN pose_frame TEXT NOT NULL DEFAULT ''")
            columns.add("pose_frame")
        if "camera_id" not in columns and self.writable:
            self._conn.execute("ALTER TABLE keyframes ADD COLUMN camera_id INTEGER")
            columns.add("camera_id")
        if "slam_id" not in columns and self.writable:  # the SLAM's own keyframe id (pose-graph edges)
            self._conn.execute("ALTER TABLE keyframes ADD COLUMN slam_id INTEGER")
            columns.add("slam_id")
        session_columns = {c[1] for c in self._conn.execute("PRAGMA table_info(sessions)")}
        if "robot_id" not in session_columns and self.writable:
            self._conn.execute("ALTER TABLE sessions ADD COLUMN robot_id INTEGER NOT NULL DEFAULT 0")
            session_columns.add("robot_id")
        self._has_robot_ids = "robot_id" in session_columns
        if self.writable:
            self._conn.executescript(_GEOMETRY_SCHEMA)
        tables = {t for (t,) in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self._has_geometry = {"cameras", "keypoints"} <= tables and "camera_id" in columns
        self._cameras: dict[int, CameraModel] = {}
        self._columns = _KEYFRAME_COLUMNS.format(pose_frame="k.pose_frame" if "pose_frame" in columns else "''",
                                                 camera="k.camera_id" if self._has_geometry else "NULL",
                                                 slam_id="k.slam_id" if "slam_id" in columns else "NULL",
                                                 robot_id="s.robot_id" if "robot_id" in session_columns else "0")

    @property
    def arrays(self) -> dict[str, RowArray]:
        """The array files of the current generation, by name (codes, float, rows, local)."""
        return dict(self._arrays)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run a read query on the metadata (maintenance and diagnostics)."""
        with self._mutex:
            return self._conn.execute(sql, params).fetchall()

    def _make_arrays(self, generation: int) -> dict[str, RowArray]:
        stored = self.info.stored
        layout = stored.layout
        arrays = {
            "codes": RowArray(self.path / f"codes.{generation}.bin", np.uint8, (layout.code_bytes,)),
            "float": RowArray(self.path / f"float.{generation}.bin", stored.storage.float_dtype, (layout.float_dim,)),
            "rows": RowArray(self.path / f"rows.{generation}.bin", ROW_META, ()),
        }
        if stored.stores_local:
            dtype = {"float16": np.float16, "float32": np.float32, "int8": np.int8}[stored.storage.local_dtype]
            h, w = stored.local_grid
            arrays["local"] = RowArray(self.path / f"local.{generation}.bin", dtype, (h, w, layout.local_dim))
        return arrays

    def close(self) -> None:
        with self._mutex:
            for array in self._arrays.values():
                array.close()
            self._conn.close()
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    def __enter__(self) -> MapDatabase:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- compatibility ----------------------------------------------------------
    @property
    def layout(self) -> DescriptorLayout:
        return self.info.stored.layout

    @property
    def model_id(self) -> str:
        return self.info.model_id

    def check_model(self, layout: DescriptorLayout, model_id: str, allow_other_weights: bool = False) -> None:
        """Refuse a model whose descriptors cannot be compared with this map's."""
        if layout != self.layout:
            raise LayoutMismatchError(
                f"{self.path}: map holds {self.layout.describe()} from model {self.model_id}, but the model gives "
                f"{layout.describe()} ({model_id}); use the map's model or build a new map"
            )
        if model_id != self.model_id and not allow_other_weights:
            raise LayoutMismatchError(
                f"{self.path}: map was built with model {self.model_id}, not {model_id}; descriptors of "
                "different weights or configuration (input size, preprocessing, method options) are not comparable "
                "(use the map's checkpoint or rebuild the map)"
            )

    # -- writing ----------------------------------------------------------------
    def _require_writable(self) -> None:
        if not self.writable:
            raise MapError(f"{self.path}: map is open read-only")

    def find_session(self, name: str, robot_id: int = 0) -> int | None:
        """Id of session ``name``, or None before its first keyframe; a session belongs to one robot, so
        naming it for another is refused."""
        with self._mutex:
            sid = self._sessions.get(name)
            if sid is None:
                return None
            (owner,) = self._conn.execute("SELECT robot_id FROM sessions WHERE id = ?", (sid,)).fetchone() \
                if self._has_robot_ids else (0,)
        if int(owner) != int(robot_id):
            raise MapError(f"{self.path}: session {name!r} belongs to robot {owner}, not robot {robot_id}; "
                           "give this robot a session of its own")
        return sid

    def _validate(self, desc: Descriptors, records: Sequence[KeyframeRecord]) -> None:
        layout = self.layout
        n = len(records)
        if len(desc) != n:
            raise MapError(f"{len(desc)} descriptor rows but {n} keyframe records")
        if desc.codes.shape[1:] != (layout.code_bytes,):
            raise LayoutMismatchError(
                f"{self.path}: codes are {desc.codes.shape[1] * 8} bit but the map stores {layout.code_bits} bit"
            )
        if desc.descriptors.shape[1:] != (layout.float_dim,):
            raise LayoutMismatchError(
                f"{self.path}: descriptors are {desc.descriptors.shape[1]}-d but the map stores {layout.float_dim}-d "
                f"(model {self.model_id})"
            )
        bad = np.flatnonzero(~np.isfinite(desc.descriptors).all(axis=1))
        if len(bad):
            raise MapError(f"descriptor rows {bad[:5].tolist()} contain NaN or infinite values; nothing was added")
        if self.info.stored.stores_local:
            if desc.local_features is None:
                raise LayoutMismatchError(f"{self.path}: map stores local features but none were given")
            if desc.local_features.shape[1:] != (*layout.local_grid, layout.local_dim):
                raise LayoutMismatchError(
                    f"{self.path}: local features {desc.local_features.shape[1:]} do not match the map's "
                    f"{(*layout.local_grid, layout.local_dim)}"
                )
            if not np.isfinite(desc.local_features).all():
                raise MapError("local features contain NaN or infinite values; nothing was added")

    def add(self, desc: Descriptors, records: Sequence[KeyframeRecord], session: str = "default",
            keypoints: Sequence[Keypoints | None] | None = None) -> list[int]:
        """Append keyframes atomically; returns their new keyframe ids.

        Either all of ``records`` are committed or none is, whatever happens
        (exception, SIGKILL, power loss after the commit returns). ``keypoints``
        (one entry per record, None where there are none) and each record's
        ``camera`` are committed in the same transaction.
        """
        self._require_writable()
        records = list(records)
        self._validate(desc, records)
        if not records:
            if keypoints:
                raise MapError(f"{len(keypoints)} keypoint sets for 0 keyframes")
            return []
        local = None
        if "local" in self._arrays:
            assert desc.local_features is not None  # _validate requires them when the map stores local
            local = encode_local(desc.local_features, self.info.stored.storage)
        return self._append(desc.codes, desc.descriptors, local, records, session, keypoints)

    def check_stored_alike(self, other: MapDatabase) -> None:
        """Refuse, naming both maps, another map whose rows cannot be copied into this one as stored:
        another model, or another storage (float/local dtype, pooling)."""
        if other.model_id != self.model_id:
            raise MapError(f"{other.path} was built with model {other.model_id}, {self.path} with {self.model_id}: "
                           "maps of different models cannot be merged (rebuild one with the other's model)")
        if other.info.stored.storage != self.info.stored.storage:
            raise MapError(f"{other.path} and {self.path} store descriptors differently "
                           f"({other.info.stored.storage} vs {self.info.stored.storage}); merge maps stored alike")

    def append_stored(self, source: MapDatabase, rows: Sequence[int] | np.ndarray, session: str,
                      records: list[KeyframeRecord] | None = None) -> list[int]:
        """Append ``rows`` of another map of the same model and storage as they are stored there (no
        decoding or re-encoding): descriptors, records with poses, camera models and SLAM ids, and
        keypoints; atomically, as :meth:`add`. The records keep their robot; their keyframe ids are
        this map's new ones. ``records``: those of ``rows`` as read from ``source``, edited (image
        paths). What ``map merge`` is made of."""
        self._require_writable()
        self.check_stored_alike(source)
        idx = np.asarray(rows, np.int64)
        if not len(idx):
            return []
        records = source.records(idx) if records is None else records
        if len(records) != len(idx):
            raise MapError(f"{len(records)} records for {len(idx)} rows")
        stored_kp = source.keypoints([r.keyframe_id for r in records])
        keypoints = [stored_kp.get(r.keyframe_id) for r in records] if stored_kp else None
        local = None if source.local_features is None else np.asarray(source.local_features[idx])
        return self._append(np.asarray(source.codes[idx]), np.asarray(source.float_descriptors[idx]), local,
                            records, session, keypoints)

    def _append(self, codes: np.ndarray, floats: np.ndarray, local: np.ndarray | None,
                records: list[KeyframeRecord], session: str,
                keypoints: Sequence[Keypoints | None] | None) -> list[int]:
        """Write rows already in the stored form, then commit their records (see :meth:`add`)."""
        if keypoints is not None and len(keypoints) != len(records):
            raise MapError(f"{len(keypoints)} keypoint sets for {len(records)} keyframes")
        with self._mutex:
            sid = self.find_session(session, records[0].robot_id)
            new_session = None
            if sid is None:  # created in the commit's transaction: a failed add leaves no empty session
                (top,) = self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM sessions").fetchone()
                sid = int(top) + 1
                new_session = (sid, session, records[0].source, _now(), int(records[0].robot_id))
            start = self.info.count
            ids = list(range(self._next_id, self._next_id + len(records)))
            rows_meta = np.zeros(len(records), ROW_META)
            rows_meta["keyframe_id"] = ids
            rows_meta["stamp_ns"] = [r.stamp_ns for r in records]
            rows_meta["session"] = sid
            rows_meta["flags"] = [FLAG_HAS_POSE if r.pose is not None else 0 for r in records]
            try:
                self._arrays["codes"].write_rows(start, codes, self.durable)
                self._arrays["float"].write_rows(start, floats, self.durable)
                if "local" in self._arrays:
                    assert local is not None
                    self._arrays["local"].write_rows(start, local, self.durable)
                self._arrays["rows"].write_rows(start, rows_meta, self.durable)
                self._commit(start, ids, sid, records, keypoints, new_session)
            except DiskFullError as exc:
                raise DiskFullError(
                    f"{exc}; nothing of these {len(records)} keyframes was added, committed entries are intact"
                ) from None
            for record, kid, row in zip(records, ids, range(start, start + len(records))):
                record.keyframe_id, record.row, record.session = kid, row, session
            return ids

    def _camera_id(self, camera: CameraModel | None) -> int | None:
        """Row of ``camera`` in the cameras table, inserted on first use (inside the caller's transaction)."""
        if camera is None:
            return None
        digest = camera.digest()
        self._conn.execute("INSERT OR IGNORE INTO cameras (digest, model) VALUES (?, ?)", (digest, camera.to_json()))
        return int(self._conn.execute("SELECT id FROM cameras WHERE digest = ?", (digest,)).fetchone()[0])

    def _commit(self, start: int, ids: list[int], sid: int, records: Sequence[KeyframeRecord],
                keypoints: Sequence[Keypoints | None] | None = None, new_session: tuple | None = None) -> None:
        values = []
        for i, (kid, r) in enumerate(zip(ids, records)):
            p = r.pose
            pos = p.position if p else (None, None, None)
            ori = p.orientation if p else (None, None, None, None)
            cov = np.asarray(p.covariance, "<f8").tobytes() if p is not None and p.covariance is not None else None
            values.append(
                [kid, start + i, sid, int(r.stamp_ns), r.frame_id, r.source, r.topic, r.image_ref, *pos, *ori, cov,
                 p.frame_id if p else "", r.slam_id, None]
            )
        new_count = start + len(records)
        blobs = [(kid, kp.to_bytes()) for kid, kp in zip(ids, keypoints or ()) if kp is not None]
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            if new_session is not None:
                self._conn.execute("INSERT INTO sessions (id, name, source, created, robot_id) VALUES (?, ?, ?, ?, ?)",
                                   new_session)
            for row, r in zip(values, records):
                row[-1] = self._camera_id(r.camera)
            self._conn.executemany(
                "INSERT INTO keyframes (id, row, session_id, stamp_ns, frame_id, source, topic, image_ref, "
                "px, py, pz, qx, qy, qz, qw, covariance, pose_frame, slam_id, camera_id) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                values,
            )
            self._conn.executemany("INSERT INTO keypoints (keyframe_id, data) VALUES (?, ?)", blobs)
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'count'", (str(new_count),))
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (str(ids[-1] + 1),))
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            if "full" in str(exc).lower():
                raise DiskFullError(f"{self.path / DB_NAME}: disk full while committing ({exc})") from None
            raise MapError(f"{self.path}: could not commit ({exc}); nothing was added") from None
        self.info.count = new_count
        self._next_id = ids[-1] + 1
        if new_session is not None:
            self._sessions[new_session[1]] = sid

    def snapshot(self, dest: str | os.PathLike) -> int:
        """Copy the committed map to the new directory ``dest``; returns the entries copied.

        Safe while this process keeps adding: the metadata is copied with
        SQLite's online backup (a consistent state, under the map's mutex for
        just that step), then exactly that many rows of each append-only array,
        which later adds never rewrite. The copy appears under its name only
        when complete.
        """
        dest = Path(dest).expanduser()
        if dest.exists():
            raise MapError(f"{dest} exists; choose a new directory for the copy")
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            with self._mutex:
                target = sqlite3.connect(partial / DB_NAME)
                try:
                    self._conn.backup(target)
                    count = int(target.execute("SELECT value FROM meta WHERE key = 'count'").fetchone()[0])
                finally:
                    target.close()
                arrays = [(a.path, a.row_bytes) for a in self._arrays.values()]
            for path, row_bytes in arrays:
                with open(path, "rb") as src, open(partial / path.name, "wb") as out:
                    shutil.copyfileobj(_limited(src, count * row_bytes), out)
                    out.flush()
                    os.fsync(out.fileno())
            if (self.path / "images").is_dir():
                shutil.copytree(self.path / "images", partial / "images")
            os.replace(partial, dest)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return count

    def delete_session(self, name: str) -> int:
        """Mark a session's keyframes deleted (search skips them; ``compact`` reclaims space)."""
        self._require_writable()
        with self._mutex:
            sid = self._sessions.get(name)
            if sid is None:
                raise MapError(f"{self.path}: no session {name!r} (sessions: {', '.join(sorted(self._sessions))})")
            self._conn.execute("BEGIN IMMEDIATE")
            rows = [r for (r,) in self._conn.execute("SELECT row FROM keyframes WHERE session_id = ?", (sid,))]
            self._conn.execute("UPDATE keyframes SET deleted = 1 WHERE session_id = ?", (sid,))
            self._conn.execute("UPDATE sessions SET deleted = 1 WHERE id = ?", (sid,))
            self._bump_changes()
            self._conn.execute("COMMIT")
            self._deleted.update(rows)
            return len(rows)

    def compact(self) -> dict[str, int]:
        """Rewrite the arrays without deleted keyframes (keyframe ids stay the same).

        New arrays are written under the next generation and fsynced; one
        SQLite transaction then renumbers rows and switches generation. A crash
        before the commit leaves the old generation in use; after, the new one.
        """
        self._require_writable()
        with self._mutex:
            keep = np.setdiff1d(np.arange(self.info.count), np.fromiter(self._deleted, np.int64, len(self._deleted)))
            old_gen, new_gen = self.info.generation, self.info.generation + 1
            new_arrays = self._make_arrays(new_gen)
            for name, array in self._arrays.items():
                new_arrays[name].path.unlink(missing_ok=True)
                data = array.view(self.info.count)
                for s in range(0, len(keep), 65536):
                    chunk = keep[s : s + 65536]
                    new_arrays[name].write_rows(s, data[chunk], sync=False)
                if len(keep):
                    fd = os.open(new_arrays[name].path, os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
            self._conn.execute("BEGIN IMMEDIATE")
            if self._has_geometry:
                self._conn.execute(
                    "DELETE FROM keypoints WHERE keyframe_id IN (SELECT id FROM keyframes WHERE deleted = 1)")
            self._conn.execute("DELETE FROM keyframes WHERE deleted = 1")
            self._conn.execute("DELETE FROM sessions WHERE deleted = 1")
            self._conn.executemany(
                "UPDATE keyframes SET row = ? WHERE row = ?",
                [(-1 - int(new), int(old)) for new, old in enumerate(keep)],
            )
            self._conn.execute("UPDATE keyframes SET row = -1 - row WHERE row < 0")
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'count'", (str(len(keep)),))
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(new_gen),))
            self._bump_changes()
            self._conn.execute("COMMIT")
            removed = self.info.count - len(keep)
            for array in self._arrays.values():
                array.close()
                array.path.unlink(missing_ok=True)
            self._load_meta()
            assert self.info.generation == new_gen and old_gen != new_gen
            return {"kept": len(keep), "removed": removed}

    # -- reading ----------------------------------------------------------------
    def _bump_changes(self) -> None:
        """Count a change that is not an append (session deletion, compaction), inside the caller's
        transaction, so that readers in other processes know to reload what they cached."""
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES ('changes', '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

    def _read_changes(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'changes'").fetchone()
        return int(row[0]) if row else 0

    def refresh(self) -> bool:
        """Pick up what another process committed; True when the map changed.

        Appends change ``count``; compaction changes ``generation``; deleting a
        session changes neither, so every such change also bumps ``changes``.
        """
        with self._mutex:
            meta = dict(self._conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('count', 'generation', 'changes')"))
            count, gen, changes = int(meta["count"]), int(meta["generation"]), int(meta.get("changes", 0))
            if gen != self.info.generation:
                self._load_meta()
                return True
            if changes == self._changes and count == self.info.count:
                return False
            self._changes, self.info.count = changes, count
            self._deleted = {r for (r,) in self._conn.execute("SELECT row FROM keyframes WHERE deleted = 1")}
            self._sessions = {name: sid for sid, name in self._conn.execute("SELECT id, name FROM sessions")}
            return True

    def __len__(self) -> int:
        """Live keyframes (committed and not deleted)."""
        return self.info.count - len(self._deleted)

    @property
    def count(self) -> int:
        """Committed rows, deleted ones included (row indices run over this range)."""
        return self.info.count

    @property
    def codes(self) -> np.ndarray:
        return self._arrays["codes"].view(self.info.count)

    @property
    def float_descriptors(self) -> np.ndarray:
        return self._arrays["float"].view(self.info.count)

    @property
    def local_features(self) -> np.ndarray | None:
        """Stored local features (pooled/quantised as configured; see :func:`decode_local`)."""
        return self._arrays["local"].view(self.info.count) if "local" in self._arrays else None

    @property
    def rows(self) -> np.ndarray:
        """Search-time metadata per row: keyframe_id, stamp_ns, session, flags."""
        return self._arrays["rows"].view(self.info.count)

    def live_mask(self) -> np.ndarray:
        mask = np.ones(self.info.count, bool)
        if self._deleted:
            mask[np.fromiter(self._deleted, np.int64, len(self._deleted))] = False
        return mask

    def rows_of(self, keyframe_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Row indices of keyframe ids (ids are sorted by row, so this is a binary search)."""
        ids = self.rows["keyframe_id"]
        pos = np.searchsorted(ids, keyframe_ids)
        pos = np.clip(pos, 0, max(len(ids) - 1, 0))
        if len(ids) == 0 or not np.array_equal(ids[pos], np.asarray(keyframe_ids)):
            missing = sorted(set(np.asarray(keyframe_ids).tolist()) - set(ids[pos].tolist()))
            raise MapError(f"{self.path}: no keyframe with id {missing[:5]}")
        return pos

    def get(self, keyframe_id: int) -> KeyframeRecord:
        row = self._conn.execute(
            f"SELECT {self._columns} FROM keyframes k JOIN sessions s ON s.id = k.session_id WHERE k.id = ?",
            (int(keyframe_id),),
        ).fetchone()
        if row is None:
            raise MapError(f"{self.path}: no keyframe with id {keyframe_id}")
        return self._record(row)

    def records(self, rows: Sequence[int] | np.ndarray) -> list[KeyframeRecord]:
        """Metadata of several rows, in the given order."""
        rows = [int(r) for r in rows]
        if not rows:
            return []
        found = {}
        for s in range(0, len(rows), 900):
            chunk = rows[s : s + 900]
            q = (
                f"SELECT {self._columns} FROM keyframes k JOIN sessions s ON s.id = k.session_id "
                f"WHERE k.row IN ({','.join('?' * len(chunk))})"
            )
            for r in self._conn.execute(q, chunk):
                found[r[1]] = self._record(r)
        return [found[r] for r in rows]

    def iterate(self, batch: int = 1000, include_deleted: bool = False) -> Iterator[KeyframeRecord]:
        """All keyframes in row order, ``batch`` rows per query."""
        where = "" if include_deleted else "AND k.deleted = 0"
        last = -1
        while True:
            rows = self._conn.execute(
                f"SELECT {self._columns} FROM keyframes k JOIN sessions s ON s.id = k.session_id "
                f"WHERE k.row > ? AND k.row < ? {where} ORDER BY k.row LIMIT ?",
                (last, self.info.count, batch),
            ).fetchall()
            if not rows:
                return
            for r in rows:
                yield self._record(r)
            last = rows[-1][1]

    def descriptors(self, rows: Sequence[int] | np.ndarray) -> Descriptors:
        """Stored descriptors of ``rows`` as float32 (local features decoded, on the stored grid)."""
        idx = np.asarray(rows, np.int64)
        local = self.local_features
        return Descriptors(
            np.asarray(self.codes[idx]),
            np.asarray(self.float_descriptors[idx], np.float32),
            np.zeros((len(idx), 0), np.float32),
            None if local is None else decode_local(np.asarray(local[idx])),
        )

    def camera(self, camera_id: int | None) -> CameraModel | None:
        """The stored camera model of that id (cached: models never change once stored)."""
        if camera_id is None:
            return None
        if camera_id not in self._cameras:
            found = self._conn.execute("SELECT model FROM cameras WHERE id = ?", (int(camera_id),)).fetchone()
            if found is None:
                raise MapError(f"{self.path}: keyframe refers to camera {camera_id}, which the map does not hold")
            self._cameras[camera_id] = CameraModel.from_json(found[0])
        return self._cameras[camera_id]

    def keypoints(self, keyframe_ids: Sequence[int]) -> dict[int, Keypoints]:
        """Stored keypoints of these keyframes (those that have some), by keyframe id."""
        ids = [int(i) for i in keyframe_ids]
        if not ids or not self._has_geometry:
            return {}
        with self._mutex:
            found = self._conn.execute(
                f"SELECT keyframe_id, data FROM keypoints WHERE keyframe_id IN ({','.join('?' * len(ids))})", ids
            ).fetchall()
        return {int(k): Keypoints.from_bytes(bytes(b), f"{self.path}: keyframe {k}") for k, b in found}

    def _record(self, row: tuple) -> KeyframeRecord:
        (kid, r, session, stamp, frame_id, source, topic, image_ref, px, py, pz, qx, qy, qz, qw, cov, frame, cam,
         slam_id, robot_id) = row
        pose = None
        if px is not None:
            covariance = tuple(np.frombuffer(cov, "<f8").tolist()) if cov is not None else None
            pose = Pose((px, py, pz), (qx, qy, qz, qw), covariance, frame)
        return KeyframeRecord(
            stamp_ns=stamp,
            frame_id=frame_id,
            source=source,
            topic=topic,
            image_ref=image_ref,
            pose=pose,
            session=session,
            keyframe_id=kid,
            row=r,
            camera=self.camera(cam),
            slam_id=None if slam_id is None else int(slam_id),
            robot_id=int(robot_id),
        )

    def newest_keyframe(self, session: str) -> tuple[KeyframeRecord, np.ndarray] | None:
        """The live keyframe of ``session`` with the newest stamp and its float descriptor, or None.

        The one rule for resuming a session (the live node after a restart,
        ``build-map`` after an interruption): continue after this keyframe.
        """
        found = self._conn.execute("SELECT id FROM sessions WHERE name = ? AND deleted = 0", (session,)).fetchone()
        if found is None:
            return None
        sid = int(found[0])
        rows = self.rows
        mine = np.flatnonzero((rows["session"] == sid) & self.live_mask())
        if not len(mine):
            return None
        last = int(mine[np.argmax(rows["stamp_ns"][mine])])
        return self.records([last])[0], np.asarray(self.float_descriptors[last], np.float32)

    def sessions(self) -> dict[str, int]:
        """Live keyframes per session."""
        q = (
            "SELECT s.name, COUNT(k.id) FROM sessions s LEFT JOIN keyframes k ON k.session_id = s.id "
            "AND k.deleted = 0 WHERE s.deleted = 0 GROUP BY s.id ORDER BY s.id"
        )
        return dict(self._conn.execute(q).fetchall())

    def stats(self) -> dict:
        stored = self.info.stored
        row_bytes = stored.row_bytes()
        rows = self.rows
        live = self.live_mask()
        stamps = rows["stamp_ns"][live] if len(rows) else np.zeros(0, np.int64)
        return {
            "path": str(self.path),
            "model_id": self.model_id,
            "layout": self.layout.to_dict(),
            "storage": to_dict(stored.storage),
            "stored_local_grid": list(stored.local_grid) if stored.stores_local else None,
            "keyframes": len(self),
            "committed_rows": self.info.count,
            "deleted_rows": len(self._deleted),
            "sessions": self.sessions(),
            "bytes_per_entry": row_bytes,
            "bytes_per_entry_total": sum(row_bytes.values()),
            "array_bytes": {k: a.nbytes(self.info.count) for k, a in self._arrays.items()},
            "time_span_s": float((stamps.max() - stamps.min()) * 1e-9) if len(stamps) else 0.0,
            "generation": self.info.generation,
            "keypoint_bytes_per_keyframe": self._keypoint_bytes(),
        }

    def _keypoint_bytes(self) -> float:
        if not self._has_geometry:
            return 0.0
        with self._mutex:
            (avg,) = self._conn.execute("SELECT AVG(LENGTH(data)) FROM keypoints").fetchone()
        return float(avg or 0.0)
