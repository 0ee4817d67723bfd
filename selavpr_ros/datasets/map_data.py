"""Maps built from bags (``selavpr-ros build-map --save-images``) as training and evaluation data.

Every keyframe needs a pose and an image file (``image_ref``); positions are
the pose's x, y in the map frame and the heading its yaw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selavpr_ros.datasets.base import EvalSet, PlaceSet, PoseSet
from selavpr_ros.datasets.utm import within
from selavpr_ros.errors import DatasetError
from selavpr_ros.mapdb.database import MapDatabase


def _posed_images(map_dir: str | Path) -> tuple[list[Path], np.ndarray]:
    with MapDatabase.open(map_dir) as db:
        records = list(db.iterate())
    images, poses, skipped = [], [], 0
    for r in records:
        if r.pose is None or not r.image_ref:
            skipped += 1
            continue
        path = Path(r.image_ref)
        if not path.is_absolute():
            path = Path(map_dir) / path
        if not path.is_file():
            raise DatasetError(f"{map_dir}: keyframe {r.keyframe_id} refers to missing image {path}")
        images.append(path)
        poses.append((r.pose.position[0], r.pose.position[1], r.pose.yaw()))
    if not images:
        raise DatasetError(f"{map_dir}: no keyframe has both a pose and an image file "
                           f"({skipped} without); build the map with --pose-topic and --save-images")
    return images, np.asarray(poses)


def load_map_poses(map_dir: str | Path) -> PoseSet:
    images, poses = _posed_images(map_dir)
    return PoseSet(Path(map_dir).name, images, poses)


def load_map_places(map_dir: str | Path, radius: float = 10.0) -> PlaceSet:
    images, poses = _posed_images(map_dir)
    cells = np.floor(poses[:, :2] / radius).astype(np.int64)
    _, labels = np.unique(cells, axis=0, return_inverse=True)
    centres = {int(k): tuple(poses[labels == k, :2].mean(axis=0).tolist()) for k in np.unique(labels)}
    return PlaceSet(Path(map_dir).name, images, labels, min_images=2, place_xy=centres, min_separation=3 * radius)


def load_map_eval(map_dir: str | Path, query_map_dir: str | Path, radius: float = 25.0) -> EvalSet:
    """Queries from one map (e.g. a second bag) against another; correct within ``radius`` metres."""
    db_images, db_poses = _posed_images(map_dir)
    q_images, q_poses = _posed_images(query_map_dir)
    positives = within(q_poses[:, :2], db_poses[:, :2], radius)
    return EvalSet(f"{Path(query_map_dir).name}->{Path(map_dir).name}", db_images, q_images, positives,
                   f"{radius:g} m")
