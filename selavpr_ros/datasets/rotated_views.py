"""Known-geometry evaluation data: real photographs seen again by a rotated camera.

A camera that only rotates by R sees every scene point where the homography
``K R K^-1`` maps it, whatever the scene's depth, so a photograph warped that
way is an exact second view with a known relative rotation. Each place is a
tile of a real photograph (scikit-image's bundled images); its query is the
view of a camera turned by a random rotation, with an exposure and colour
change. Tiles of held-out photographs are queries without any true match:
the false loop closures a detector must refuse. Tiles of one photograph are
separated by a gap wider than the views' shift, so a query overlaps only its
own place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selavpr_ros.datasets.base import EvalSet
from selavpr_ros.errors import DatasetError
from selavpr_ros.geometry.estimation import rotation_to_quaternion
from selavpr_ros.types import CameraModel, Pose

# Bundled with scikit-image (no download): natural photographs and real textures.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera", "brick", "grass",
          "gravel", "coins", "moon", "page", "text", "horse")
STEREO = "motorcycle"  # the left image of the Middlebury pair


@dataclass
class RotatedViews:
    """An EvalSet and, per query, the true rotation of the match camera in the query frame (None: no match)."""

    eval_set: EvalSet
    rotations: list[np.ndarray | None]
    camera: CameraModel


def _photo(name: str) -> np.ndarray:
    import skimage.data

    image = skimage.data.stereo_motorcycle()[0] if name == STEREO else getattr(skimage.data, name)()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype != np.uint8:
        image = (255 * (image.astype(np.float64) / max(float(image.max()), 1e-9))).astype(np.uint8)
    return np.ascontiguousarray(image[:, :, :3])


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    import cv2

    angles = np.radians(rng.uniform(-max_deg, max_deg, 3)) * np.array([0.5, 1.0, 0.5])  # pitch, yaw, roll
    return cv2.Rodrigues(angles.reshape(3, 1))[0]


def rotated_view(photo: np.ndarray, origin: tuple[int, int], camera: CameraModel, rotation: np.ndarray
                 ) -> np.ndarray:
    """The view of ``camera`` turned by ``rotation`` from its pose looking at the tile at ``origin`` (x, y)."""
    import cv2

    k = camera.matrix
    to_tile = np.array([[1, 0, -origin[0]], [0, 1, -origin[1]], [0, 0, 1]], np.float64)
    h = k @ rotation @ np.linalg.inv(k) @ to_tile
    return cv2.warpPerspective(photo, h, (camera.width, camera.height), flags=cv2.INTER_LINEAR)


def _exposure(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gamma = rng.uniform(0.7, 1.4)
    gains = rng.uniform(0.8, 1.2, 3)
    out = 255.0 * (image / 255.0) ** gamma * gains
    return np.clip(out, 0, 255).astype(np.uint8)


def write_rotated_views(out: str | Path, tile: tuple[int, int] = (224, 168), gap: int = 56, max_deg: float = 8.0,
                        hfov_deg: float = 60.0, held_out: int = 4, seed: int = 0) -> RotatedViews:
    """Write ``database/`` and ``queries/`` PNGs under ``out``; the last ``held_out`` photographs give
    only queries (no true match)."""
    from PIL import Image

    out = Path(out)
    (out / "database").mkdir(parents=True, exist_ok=True)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = tile
    camera = CameraModel.nominal(w, h, hfov_deg)
    names = (*PHOTOS, STEREO)
    if not 0 <= held_out < len(names):
        raise DatasetError(f"held_out must be in [0, {len(names) - 1}]")
    database: list[Path] = []
    queries: list[Path] = []
    positives: list[np.ndarray] = []
    rotations: list[np.ndarray | None] = []
    for p, name in enumerate(names):
        photo = _photo(name)
        ph, pw = photo.shape[:2]
        mapped = p < len(names) - held_out
        for y in range(gap // 2, ph - h - gap // 2 + 1, h + gap):
            for x in range(gap // 2, pw - w - gap // 2 + 1, w + gap):
                tile_image = photo[y: y + h, x: x + w]
                if tile_image.std() < 12:  # blank (a dark sky, a page margin): no place to recognise
                    continue
                rotation = random_rotation(rng, max_deg)
                query = _exposure(rotated_view(photo, (x, y), camera, rotation), rng)
                stem = f"{name}_{x:04d}_{y:04d}"
                if mapped:
                    database.append(out / "database" / f"{stem}.png")
                    Image.fromarray(tile_image).save(database[-1])
                queries.append(out / "queries" / f"{stem}.png")
                Image.fromarray(query).save(queries[-1])
                positives.append(np.array([len(database) - 1] if mapped else [], np.int64))
                rotations.append(rotation if mapped else None)
    # Camera poses: every mapped tile seen from the origin looking along z; a query camera turned by R
    # (X_query = R X_tile) has orientation R^T in that frame.
    database_poses: list[Pose | None] = [Pose((0.0, 0.0, 0.0)) for _ in database]
    query_poses: list[Pose | None] = [None if r is None else Pose((0.0, 0.0, 0.0), rotation_to_quaternion(r.T))
                                      for r in rotations]
    ev = EvalSet("rotated-views", database, queries, positives, "same tile (known rotation)", database_poses,
                 query_poses, [camera] * len(database), [camera] * len(queries), "optical")
    return RotatedViews(ev, rotations, camera)
