"""Stage ``geometric``: verify retrieval candidates against the map's stored keypoints and cameras.

Correspondences come from the stored keyframe keypoints (every model), or
from the model's dense local features (``matcher: dense``, SelaVPR): mutual
nearest neighbours on the feature grid, cell centres mapped back to image
pixels through the model's resize. Either way :func:`estimate_relative_pose`
turns them into a relative pose or a reason to reject.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from selavpr_ros.geometry.camera import CameraModel
from selavpr_ros.geometry.estimation import RelativePose, VerificationConfig, estimate_relative_pose
from selavpr_ros.geometry.features import Keypoints, match
from selavpr_ros.inference.preprocess import center_crop_box
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.mapdb.records import decode_local, pool_local
from selavpr_ros.types import KeyframeRecord


@dataclass
class QueryView:
    """What verification knows of the query frame. ``skip_reason`` says why geometry cannot run."""

    camera: CameraModel | None = None
    keypoints: Keypoints | None = None
    local_features: np.ndarray | None = None  # (h, w, C) float32, the model's grid
    skip_reason: str = ""


def grid_pixels(grid: tuple[int, int], width: int, height: int, preprocess: Any = None) -> np.ndarray:
    """Pixel centre (x, y) in the original ``width x height`` image of every cell of a (h, w) feature
    grid, row-major, (h*w, 2).

    ``preprocess`` is the model's ``PreprocessConfig`` (its resize policy and input size); None: stretch.
    """
    gh, gw = grid
    x0, y0, cw, ch = 0.0, 0.0, float(width), float(height)
    if preprocess is not None and preprocess.resize == "center_crop":
        left, top, right, bottom = center_crop_box(height, width, preprocess.height, preprocess.width)
        x0, y0, cw, ch = float(left), float(top), float(right - left), float(bottom - top)
    jj, ii = np.meshgrid(np.arange(gw), np.arange(gh))
    return np.column_stack([x0 + (jj.ravel() + 0.5) * cw / gw, y0 + (ii.ravel() + 0.5) * ch / gh])


def dense_matches(query: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Mutual nearest neighbours (M, 2) between two (h*w, C) unit-feature sets."""
    sim = query @ other.T
    fwd, bwd = sim.argmax(axis=1), sim.argmax(axis=0)
    i = np.flatnonzero(bwd[fwd] == np.arange(len(query)))
    return np.column_stack([i, fwd[i]]).astype(np.int64)


class Verifier:
    """Verifies candidates (map rows) of one query; one instance per map."""

    def __init__(self, database: MapDatabase, config: VerificationConfig, preprocess: Any = None) -> None:
        """``preprocess``: the model's ``PreprocessConfig``, needed by the dense matcher only."""
        self.db = database
        self.config = config
        self.ratio = config.keypoints.ratio
        self.preprocess = preprocess
        if config.matcher == "dense" and preprocess is None:
            raise ValueError("the dense matcher needs the model's preprocessing (input size and resize policy)")
        if config.matcher == "dense" and not database.info.stored.stores_local:
            from selavpr_ros.errors import ConfigError

            raise ConfigError(f"geometry.matcher 'dense' needs local features, but map {database.path} stores none "
                              "(use matcher 'keypoints', or a SelaVPR model)")

    def verify(self, view: QueryView, rows: Sequence[int],
               records: Sequence[KeyframeRecord] | None = None) -> list[RelativePose]:
        """One :class:`RelativePose` per row, in order (``valid`` False with the reason when rejected).

        ``records``: the rows' keyframe records when the caller has read them already.
        """
        rows = [int(r) for r in rows]
        if not rows:
            return []
        if view.skip_reason or view.camera is None:
            return [RelativePose.unverifiable(view.skip_reason or "the query has no camera model") for _ in rows]
        records = self.db.records(rows) if records is None else records
        stored = self.db.keypoints([r.keyframe_id for r in records]) if self.config.matcher == "keypoints" else {}
        out = []
        for row, record in zip(rows, records):
            if record.camera is None:
                out.append(RelativePose.unverifiable(f"keyframe {record.keyframe_id} has no camera model"))
            elif self.config.matcher == "dense":
                out.append(self._dense(view, row, record.camera))
            else:
                kp = stored.get(record.keyframe_id)
                if kp is None or view.keypoints is None:
                    why = "the query has no keypoints" if view.keypoints is None else \
                        f"keyframe {record.keyframe_id} has no stored keypoints"
                    out.append(RelativePose.unverifiable(why))
                    continue
                out.append(self._keypoints(view, kp, record.camera))
        return out

    def _keypoints(self, view: QueryView, kp: Keypoints, camera: CameraModel) -> RelativePose:
        assert view.keypoints is not None and view.camera is not None
        if kp.kind != view.keypoints.kind:
            return RelativePose.unverifiable(f"keyframe keypoints are {kp.kind}, the query's {view.keypoints.kind}")
        m = match(view.keypoints, kp, self.ratio)
        depth = None if kp.depth is None else kp.depth[m[:, 1]]
        return estimate_relative_pose(view.keypoints.xy[m[:, 0]], kp.xy[m[:, 1]], view.camera, camera,
                                      self.config, depth)

    def _dense(self, view: QueryView, row: int, camera: CameraModel) -> RelativePose:
        assert view.camera is not None
        if view.local_features is None:
            return RelativePose.unverifiable("the query has no local features for dense matching")
        stored = self.db.local_features
        assert stored is not None  # __init__ refuses dense matching on maps without local features
        other = decode_local(np.asarray(stored[row]))
        query = pool_local(view.local_features[None], self.db.info.stored.storage.local_pool)[0]
        grid = other.shape[:2]
        m = dense_matches(query.reshape(-1, query.shape[-1]), other.reshape(-1, other.shape[-1]))
        q_px = grid_pixels(grid, view.camera.width, view.camera.height, self.preprocess)[m[:, 0]]
        m_px = grid_pixels(grid, camera.width, camera.height, self.preprocess)[m[:, 1]]
        cell = max(view.camera.width / grid[1], view.camera.height / grid[0])
        config = self.config
        if config.ransac_threshold_px < 0.5 * cell:  # the grid quantises positions to a cell
            from dataclasses import replace

            config = replace(config, ransac_threshold_px=min(0.5 * cell, 50.0))
        return estimate_relative_pose(q_px, m_px, view.camera, camera, config)
