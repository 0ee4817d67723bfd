"""How a map stores descriptors: precision, pooling of local features, per-row search metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from selavpr_ros.config import check
from selavpr_ros.types import DescriptorLayout


@dataclass
class StorageConfig:
    """How descriptors are stored: precision and, for local features, an optional coarser grid.

    ``local_pool`` k > 1 averages k x k cells (and re-normalises), e.g. 61x61 ->
    30x30 at k = 2: a quarter of the bytes and of the re-ranking time.
    ``local_dtype: int8`` stores round(127 * x) of the unit vectors.
    """

    float_dtype: Literal["float16", "float32"] = "float16"
    local_dtype: Literal["float16", "float32", "int8", "none"] = "float16"
    local_pool: int = 1

    def __post_init__(self) -> None:
        check(1 <= self.local_pool <= 8, f"local_pool must be in [1, 8], got {self.local_pool}")


@dataclass(frozen=True)
class StoredLayout:
    """A model's descriptor layout plus the map's storage choices."""

    layout: DescriptorLayout
    storage: StorageConfig = field(default_factory=StorageConfig)

    @property
    def stores_local(self) -> bool:
        return self.layout.has_local and self.storage.local_dtype != "none"

    @property
    def local_grid(self) -> tuple[int, int]:
        k = self.storage.local_pool
        h, w = self.layout.local_grid
        return (h // k, w // k)

    def row_bytes(self) -> dict[str, int]:
        """Bytes per entry in each array file."""
        float_size = np.dtype(self.storage.float_dtype).itemsize
        sizes = {
            "codes": self.layout.code_bytes,
            "float": self.layout.float_dim * float_size,
            "rows": ROW_META.itemsize,
        }
        if self.stores_local:
            h, w = self.local_grid
            sizes["local"] = h * w * self.layout.local_dim * np.dtype(_LOCAL_NUMPY[self.storage.local_dtype]).itemsize
        return sizes


# Per-row search metadata kept beside the descriptors (memory-mapped, no SQLite at query time).
ROW_META = np.dtype([("keyframe_id", "<i8"), ("stamp_ns", "<i8"), ("session", "<i4"), ("flags", "<u4")])
FLAG_HAS_POSE = 1

_LOCAL_NUMPY = {"float16": np.float16, "float32": np.float32, "int8": np.int8}


def pool_local(local: np.ndarray, k: int) -> np.ndarray:
    """Average k x k cells of (N, h, w, C) unit features and re-normalise.

    Edge rows and columns that do not fill a whole cell are dropped.
    """
    if k == 1:
        return local
    n, h, w, c = local.shape
    hh, ww = h // k, w // k
    pooled = local[:, : hh * k, : ww * k].astype(np.float32).reshape(n, hh, k, ww, k, c).mean(axis=(2, 4))
    norm = np.linalg.norm(pooled, axis=-1, keepdims=True)
    return pooled / np.maximum(norm, 1e-12)


def encode_local(local: np.ndarray, storage: StorageConfig) -> np.ndarray:
    """Local features as stored: pooled, then cast or quantised."""
    local = pool_local(local, storage.local_pool)
    if storage.local_dtype == "int8":
        return np.clip(np.rint(local * 127.0), -127, 127).astype(np.int8)
    return local.astype(_LOCAL_NUMPY[storage.local_dtype])


def decode_local(stored: np.ndarray) -> np.ndarray:
    """Stored local features back to float32 unit vectors (approximately, for int8)."""
    if stored.dtype == np.int8:
        return stored.astype(np.float32) / 127.0
    return stored.astype(np.float32)
