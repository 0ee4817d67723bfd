"""What training and evaluation need from a dataset, whatever its layout.

* :class:`EvalSet` — database images, query images, and per query the
  database indices that count as correct (the ground truth); optionally
  each image's camera pose and calibration, for the errors of verified
  relative poses;
* :class:`PlaceSet` — training images grouped into places, sampled as P
  places x K images with places far enough apart to be true negatives;
* :class:`PoseSet` — training images with 2-D poses, for graded similarity
  (field-of-view overlap) losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selavpr_ros.errors import DatasetError
from selavpr_ros.types import CameraModel, Pose


@dataclass
class EvalSet:
    name: str
    database: list[Path]
    queries: list[Path]
    positives: list[np.ndarray]  # per query: indices into ``database`` that are correct matches
    threshold: str = ""  # how positives were decided, for reports ("25 m", "+-2 frames")
    # Camera poses in one world frame (for relative-pose errors) and calibrations, per image; None: unknown.
    database_poses: list[Pose | None] | None = None
    query_poses: list[Pose | None] | None = None
    database_cameras: list[CameraModel | None] | None = None
    query_cameras: list[CameraModel | None] | None = None
    # The poses' axes: "optical" (REP 103 camera optical frame: z forward) or "body" (x forward, y left, z up:
    # the camera link, or a base frame with a forward-looking camera on it).
    pose_axes: str = "optical"

    def __post_init__(self) -> None:
        if not self.database or not self.queries:
            raise DatasetError(f"{self.name}: needs database and query images ({len(self.database)} / "
                               f"{len(self.queries)} found)")
        if len(self.positives) != len(self.queries):
            raise DatasetError(f"{self.name}: ground truth for {len(self.positives)} of {len(self.queries)} queries")

    @property
    def queries_without_match(self) -> int:
        return int(sum(len(p) == 0 for p in self.positives))


@dataclass
class PlaceSet:
    """Images with a place label per image.

    With ``place_xy`` (a position per place id, metres or frames), places
    closer than ``min_separation`` never share a batch, so that every other
    place in a batch is a true negative.
    """

    name: str
    images: list[Path]
    labels: np.ndarray  # place id per image
    min_images: int = 2
    place_xy: dict[int, tuple[float, float]] | None = None
    min_separation: float = 0.0
    _members: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, np.int64)
        if len(self.images) != len(self.labels):
            raise DatasetError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        order = np.argsort(self.labels, kind="stable")
        ids, starts = np.unique(self.labels[order], return_index=True)
        groups = np.split(order, starts[1:])
        self._members = {int(i): g for i, g in zip(ids, groups) if len(g) >= self.min_images}
        if not self._members:
            raise DatasetError(f"{self.name}: no place has at least {self.min_images} images")

    @property
    def places(self) -> np.ndarray:
        return np.fromiter(self._members, np.int64, len(self._members))

    def members(self, place: int) -> np.ndarray:
        return self._members[place]

    def _far_from(self, place: int, chosen: list[int]) -> bool:
        if self.place_xy is None or self.min_separation <= 0:
            return True
        x, y = self.place_xy[int(place)]
        return all(np.hypot(x - self.place_xy[int(c)][0], y - self.place_xy[int(c)][1]) >= self.min_separation
                   for c in chosen)

    def batches(self, rng: np.random.Generator, places_per_batch: int, images_per_place: int):
        """Yield (image indices, labels) for one epoch: each place once, places in a batch far apart."""
        pool = list(rng.permutation(self.places))
        while len(pool) >= places_per_batch:
            chosen: list[int] = []
            skipped: list[int] = []
            i = 0
            while i < len(pool) and len(chosen) < places_per_batch:
                p = pool[i]
                if self._far_from(p, chosen):
                    chosen.append(p)
                else:
                    skipped.append(p)
                i += 1
            if len(chosen) < places_per_batch:
                return
            pool = skipped + pool[i:]
            idx, lab = [], []
            for p in chosen:
                m = self._members[int(p)]
                pick = rng.choice(m, images_per_place, replace=len(m) < images_per_place)
                idx.extend(pick.tolist())
                lab.extend([int(p)] * images_per_place)
            yield np.asarray(idx, np.int64), np.asarray(lab, np.int64)


@dataclass
class PoseSet:
    """Images with planar poses (x, y in metres, yaw in radians) in one frame."""

    name: str
    images: list[Path]
    poses: np.ndarray  # (N, 3)

    def __post_init__(self) -> None:
        self.poses = np.asarray(self.poses, np.float64).reshape(-1, 3)
        if len(self.images) != len(self.poses):
            raise DatasetError(f"{self.name}: {len(self.images)} images but {len(self.poses)} poses")
        if len(self.images) < 2:
            raise DatasetError(f"{self.name}: needs at least two posed images")
