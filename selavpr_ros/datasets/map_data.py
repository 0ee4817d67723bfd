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
from selavpr_ros.types import KeyframeRecord


def _posed_images(map_dir: str | Path) -> tuple[list[Path], np.ndarray]:
    images, poses, _ = _posed_records(map_dir)
    return images, poses


def _posed_records(map_dir: str | Path) -> tuple[list[Path], np.ndarray, list[KeyframeRecord]]:
    """Image paths, (x, y, yaw) and the records of the keyframes with a pose and an image."""
    with MapDatabase.open(map_dir) as db:
        records = list(db.iterate())
    images, poses, kept, skipped = [], [], [], 0
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
        kept.append(r)
        poses.append((r.pose.position[0], r.pose.position[1], r.pose.yaw()))
    if not images:
        raise DatasetError(f"{map_dir}: no keyframe has both a pose and an image file "
                           f"({skipped} without); build the map with --pose-topic and --save-images")
    return images, np.asarray(poses), kept


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
    """Queries from one map (e.g. a second bag) against another; correct within ``radius`` metres.

    The keyframes' poses and stored camera models come along, for the errors of verified relative
    poses; poses of frames named ``*optical*`` are taken as optical frames, others as body-convention
    frames of a forward-looking camera (REP 103).
    """
    db_images, db_poses, db_records = _posed_records(map_dir)
    q_images, q_poses, q_records = _posed_records(query_map_dir)
    positives = within(q_poses[:, :2], db_poses[:, :2], radius)
    records = db_records + q_records
    axes = "optical" if all("optical" in r.frame_id for r in records) else "body"
    return EvalSet(f"{Path(query_map_dir).name}->{Path(map_dir).name}", db_images, q_images, positives,
                   f"{radius:g} m", [r.pose for r in db_records], [r.pose for r in q_records],
                   [r.camera for r in db_records], [r.camera for r in q_records], axes)
