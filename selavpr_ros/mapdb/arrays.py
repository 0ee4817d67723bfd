"""Append-only binary arrays of fixed-size rows, memory-mapped for reading.

The map database writes rows here *before* it commits their metadata to
SQLite, and readers never look past the committed row count. A process
killed mid-append therefore leaves at most an uncommitted tail, which the
next append overwrites and ``repair`` truncates.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from selavpr_ros.errors import DiskFullError, MapError

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class RowArray:
    """A file of rows with ``dtype`` and per-row ``shape``; rows ``[0, n)`` are committed."""

    def __init__(self, path: Path, dtype: npt.DTypeLike, shape: tuple[int, ...]) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.row_bytes = int(self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64)))
        self._map: np.memmap | None = None
        self._mapped_rows = 0

    # -- sizes ----------------------------------------------------------------
    def file_rows(self) -> int:
        """Complete rows physically in the file (committed or not)."""
        try:
            return self.path.stat().st_size // self.row_bytes
        except FileNotFoundError:
            return 0

    def check(self, committed: int) -> None:
        """Raise if the file cannot hold the committed rows (truncated or deleted)."""
        if not self.path.exists():
            if committed:
                raise MapError(f"{self.path}: array file is missing but the map has {committed} committed entries")
            return
        have = self.file_rows()
        if have < committed:
            raise MapError(
                f"{self.path}: truncated array file, it holds {have} of {committed} committed rows; the map is "
                "damaged and repair cannot invent the missing entries: restore the file from a backup"
            )

    # -- writing --------------------------------------------------------------
    def write_rows(self, start: int, rows: np.ndarray, sync: bool = True) -> None:
        """Write ``rows`` at row ``start`` (overwriting any uncommitted tail) and fsync."""
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        if data.shape[1:] != self.shape:
            raise MapError(f"{self.path.name}: rows have shape {data.shape[1:]}, the map stores {self.shape}")
        buf = data.reshape(-1).view(np.uint8).data  # a byte memoryview of the contiguous rows
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            offset = start * self.row_bytes
            while buf:
                written = os.pwrite(fd, buf, offset)
                buf = buf[written:]
                offset += written
            if sync:
                os.fsync(fd)
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise DiskFullError(f"{self.path}: disk full while writing ({exc.strerror})") from None
            raise
        finally:
            os.close(fd)

    def truncate(self, rows: int) -> int:
        """Cut the file to ``rows`` rows; returns how many bytes were dropped."""
        if not self.path.exists():
            return 0
        size = self.path.stat().st_size
        keep = rows * self.row_bytes
        if size > keep:
            self.close()
            fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW)  # never truncate through a link
            try:
                os.ftruncate(fd, keep)
            finally:
                os.close(fd)
            return size - keep
        return 0

    # -- reading --------------------------------------------------------------
    def view(self, rows: int) -> np.ndarray:
        """Read-only memory map of the first ``rows`` rows (no copy)."""
        if rows == 0:
            return np.zeros((0, *self.shape), self.dtype)
        if self._map is None or self._mapped_rows < rows:
            self._map = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(rows, *self.shape))
            self._mapped_rows = rows
        return self._map[:rows]

    def close(self) -> None:
        self._map = None
        self._mapped_rows = 0

    def nbytes(self, rows: int) -> int:
        return rows * self.row_bytes
