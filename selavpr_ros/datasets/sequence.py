"""Frame-aligned sequences (Nordland style): one folder per traversal, the same file
name in every folder is the same place, and frames within +-k of each other match.

    ROOT/summer/images-00010.png   ROOT/winter/images-00010.png   ...
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selavpr_ros.datasets.base import EvalSet, PlaceSet
from selavpr_ros.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def frame_names(root: str | Path, folders: tuple[str, ...]) -> list[str]:
    """File names present in every folder, in sorted (frame) order."""
    root = Path(root)
    sets = []
    for folder in folders:
        d = root / folder
        if not d.is_dir():
            raise DatasetError(f"{d}: sequence folder not found (folders present: "
                               f"{', '.join(sorted(p.name for p in root.iterdir() if p.is_dir())) or 'none'})")
        sets.append({p.name for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES})
    common = sorted(set.intersection(*sets))
    if not common:
        raise DatasetError(f"{root}: no image name is present in all of {', '.join(folders)}")
    return common


def _frames(n: int, span: tuple[float, float]) -> np.ndarray:
    lo, hi = span
    if not 0.0 <= lo < hi <= 1.0:
        raise DatasetError(f"frame span must satisfy 0 <= start < stop <= 1, got {span}")
    return np.arange(int(round(lo * n)), int(round(hi * n)))


def check_spans(n: int, spans: dict[str, tuple[float, float]], tolerance: int) -> None:
    """Refuse spans of a sequence that overlap or lie within ``tolerance`` frames of each other: a place
    near the border would be a true match across the two (training frames leaking into validation)."""
    frames = {name: _frames(n, span) for name, span in spans.items()}
    names = sorted(frames, key=lambda k: frames[k][0] if len(frames[k]) else n)
    for a, b in zip(names, names[1:]):
        if len(frames[a]) and len(frames[b]) and frames[b][0] - frames[a][-1] <= tolerance:
            raise DatasetError(
                f"{a} span {spans[a]} and {b} span {spans[b]} leave {frames[b][0] - frames[a][-1] - 1} frames between "
                f"them (of {n}); keep more than tolerance_frames {tolerance} apart so no place is in both")


def load_sequence_eval(
    root: str | Path,
    database: str = "summer",
    queries: str = "winter",
    span: tuple[float, float] = (0.0, 1.0),
    tolerance: int = 2,
) -> EvalSet:
    """Queries from one traversal against the database traversal; correct within +-``tolerance`` frames.

    A frame is a position in the folders' sorted file names: in a folder that holds every 4th frame of a
    route, +-2 frames are +-8 frames of the original route.
    """
    root = Path(root)
    names = frame_names(root, (database, queries))
    frames = _frames(len(names), span)
    positives = [np.flatnonzero(np.abs(frames - f) <= tolerance) for f in frames]
    return EvalSet(
        name=f"{root.name}:{queries}->{database}[{span[0]:.2f}:{span[1]:.2f}]",
        database=[root / database / names[f] for f in frames],
        queries=[root / queries / names[f] for f in frames],
        positives=positives,
        threshold=f"+-{tolerance} frames",  # positions in the folders' name order (see the docstring)
    )


def load_sequence_places(
    root: str | Path,
    folders: tuple[str, ...] = ("summer", "winter"),
    span: tuple[float, float] = (0.0, 0.7),
    frames_per_place: int = 2,
    tolerance: int = 2,
) -> PlaceSet:
    """Training places: ``frames_per_place`` consecutive frames in every traversal.

    Places whose frames lie within ``tolerance`` frames of each other are never
    in one batch (they would be false negatives).
    """
    root = Path(root)
    names = frame_names(root, folders)
    frames = _frames(len(names), span)
    images, labels = [], []
    for folder in folders:
        images += [root / folder / names[f] for f in frames]
        labels += [int(f) // frames_per_place for f in frames]
    centres = {lab: (lab * frames_per_place + (frames_per_place - 1) / 2, 0.0) for lab in set(labels)}
    return PlaceSet(
        name=f"{root.name}[{span[0]:.2f}:{span[1]:.2f}]",
        images=images,
        labels=np.asarray(labels),
        min_images=2,
        place_xy=centres,
        min_separation=frames_per_place + tolerance + 1,
    )
