"""On-disk cache of the frozen trunk's outputs for side-adapter training.

The trunk is frozen and (for side-adapter methods) never back-propagated
through, so its outputs for an image depend only on the pixels. Storing them
once lets every later epoch run only the small side network: this is what
makes CPU training practical.

Layout of a cache folder::

    meta.json     what was cached (trunk fingerprint, preprocessing, images,
                  augmentation): a different key empties the cache
    trunk.bin     (images, views, 1 + taps, tokens, width) float16/32, memory-mapped
    filled.npy    (images, views) bool: which entries are complete

``filled.npy`` is replaced atomically after the data it marks has been
flushed, so a run killed while filling resumes with the entries it had.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

if TYPE_CHECKING:
    from selavpr_ros.models.vpr import VPRModel

TrunkFn = Callable[[Tensor], tuple[Tensor, list[Tensor], tuple[int, int]]]


def cache_key(**parts: Any) -> str:
    """A stable hash of everything the cached values depend on."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def trunk_fingerprint(model: VPRModel) -> str:
    """Hash of the trunk weights (the part whose outputs are cached)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class TrunkCache:
    """Trunk outputs (seed + taps) of ``views`` versions of ``n_images`` images."""

    def __init__(self, directory: str | os.PathLike, key: str, n_images: int, views: int,
                 entry_shape: tuple[int, int, int], grid: tuple[int, int], dtype: str = "float16") -> None:
        self.dir = Path(directory)
        self.key = key
        self.shape = (n_images, views, *entry_shape)
        self.grid = (grid[0], grid[1])
        self.dtype = np.dtype(dtype)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {"key": key, "shape": list(self.shape), "grid": list(self.grid), "dtype": self.dtype.name}
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file() or json.loads(meta_path.read_text()) != meta:
            for name in ("trunk.bin", "filled.npy", "meta.json"):
                (self.dir / name).unlink(missing_ok=True)
            self._replace("filled.npy", lambda f: np.save(f, np.zeros(self.shape[:2], bool)))
            self._replace("meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
        nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        data_path = self.dir / "trunk.bin"
        with open(data_path, "ab") as f:
            if f.tell() < nbytes:
                f.truncate(nbytes)
        self.data = np.memmap(data_path, self.dtype, mode="r+", shape=self.shape)
        self.filled = np.load(self.dir / "filled.npy")

    def _replace(self, name: str, write: Callable) -> None:
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)

    @property
    def complete(self) -> bool:
        return bool(self.filled.all())

    @property
    def bytes_per_entry(self) -> int:
        return int(np.prod(self.shape[2:])) * self.dtype.itemsize

    def fill(self, trunk: TrunkFn, load: Callable[[np.ndarray, np.ndarray], np.ndarray], batch_size: int = 64,
             device: torch.device | str = "cpu", progress: bool = True, desc: str = "caching trunk") -> int:
        """Compute the missing entries; ``load(images, views)`` gives preprocessed (B, 3, H, W) arrays.

        Returns the number of entries computed. Progress is saved after every batch.
        """
        todo = np.argwhere(~self.filled)
        for start in tqdm(range(0, len(todo), batch_size), desc=desc, unit="batch", disable=not progress):
            chunk = todo[start : start + batch_size]
            x = torch.from_numpy(load(chunk[:, 0], chunk[:, 1])).to(device)
            seed, taps, grid = trunk(x)
            if tuple(grid) != self.grid:
                raise RuntimeError(f"trunk grid {grid} differs from the cache's {self.grid}")
            stacked = torch.stack([seed, *taps], dim=1).float().cpu().numpy().astype(self.dtype)
            self.data[chunk[:, 0], chunk[:, 1]] = stacked
            self.data.flush()
            self.filled[chunk[:, 0], chunk[:, 1]] = True
            self._replace("filled.npy", lambda f: np.save(f, self.filled))
        return len(todo)

    def read(self, images: np.ndarray, views: np.ndarray, device: torch.device | str = "cpu"
             ) -> tuple[Tensor, list[Tensor], tuple[int, int]]:
        """(seed, taps, grid) for a batch, as :meth:`SelaVPRPlusPlus.trunk` returns them."""
        if not self.filled[images, views].all():
            raise RuntimeError("reading trunk cache entries that were never filled")
        block = torch.from_numpy(np.ascontiguousarray(self.data[images, views])).to(device, torch.float32)
        return block[:, 0], list(block[:, 1:].unbind(1)), self.grid
