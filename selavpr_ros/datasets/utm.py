"""The common benchmark layout: ``images/{split}/{database,queries}/@utm_e@utm_n@...@.jpg``.

Positions come from the file names (UTM easting and northing in metres).
Evaluation counts a database image within ``radius`` (25 m) as correct;
training groups images into places of nearby images (10 m).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selavpr_ros.datasets.base import EvalSet, PlaceSet
from selavpr_ros.datasets.sequence import IMAGE_SUFFIXES
from selavpr_ros.errors import DatasetError


def parse_utm(path: str | Path) -> tuple[float, float]:
    """(easting, northing) from ``.../@easting@northing@...``."""
    parts = Path(path).name.split("@")
    try:
        return float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise DatasetError(f"{path}: file name does not follow @utm_easting@utm_northing@...@.jpg") from None


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found (expected images/<split>/database and .../queries)")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"{folder}: no images")
    return paths


def split_dir(root: str | Path, split: str) -> Path:
    root = Path(root)
    for candidate in (root / "images" / split, root / split, root):
        if (candidate / "database").is_dir() and (candidate / "queries").is_dir():
            return candidate
    raise DatasetError(f"{root}: no images/{split}/database and images/{split}/queries folders")


def within(a: np.ndarray, b: np.ndarray, radius: float) -> list[np.ndarray]:
    """For each row of ``a``, indices of rows of ``b`` within ``radius`` (blocked, exact)."""
    out = []
    for s in range(0, len(a), 1024):
        d2 = ((a[s : s + 1024, None, :] - b[None, :, :]) ** 2).sum(-1)
        out += [np.flatnonzero(row <= radius * radius) for row in d2]
    return out


def load_utm_eval(root: str | Path, split: str = "test", radius: float = 25.0) -> EvalSet:
    base = split_dir(root, split)
    database, queries = _images(base / "database"), _images(base / "queries")
    db_xy = np.array([parse_utm(p) for p in database])
    q_xy = np.array([parse_utm(p) for p in queries])
    return EvalSet(f"{Path(root).name}/{split}", database, queries, within(q_xy, db_xy, radius), f"{radius:g} m")


def load_utm_places(root: str | Path, split: str = "train", radius: float = 10.0) -> PlaceSet:
    """Places from a grid of ``radius``-metre cells over all images of the split."""
    base = split_dir(root, split)
    images = _images(base / "database") + _images(base / "queries")
    xy = np.array([parse_utm(p) for p in images])
    cells = np.floor(xy / radius).astype(np.int64)
    _, labels = np.unique(cells, axis=0, return_inverse=True)
    centres = {}
    for lab in np.unique(labels):
        c = xy[labels == lab].mean(axis=0)
        centres[int(lab)] = (float(c[0]), float(c[1]))
    return PlaceSet(f"{Path(root).name}/{split}", images, labels, min_images=2, place_xy=centres,
                    min_separation=3 * radius)
