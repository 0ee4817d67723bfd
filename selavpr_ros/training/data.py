"""Training and validation data from a :class:`DataConfig`, and image loading for training.

Images are decoded, jittered (training only) and preprocessed here, so that
the trunk cache and the uncached path see exactly the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selavpr_ros.datasets.base import EvalSet, PlaceSet, PoseSet
from selavpr_ros.datasets.gsv_cities import load_gsv_cities
from selavpr_ros.datasets.map_data import load_map_eval, load_map_places, load_map_poses
from selavpr_ros.datasets.sequence import check_spans, frame_names, load_sequence_eval, load_sequence_places
from selavpr_ros.datasets.utm import load_utm_eval, load_utm_places
from selavpr_ros.errors import DatasetError, ImageError
from selavpr_ros.inference.preprocess import load_image, preprocess
from selavpr_ros.models.config import PreprocessConfig
from selavpr_ros.training.augment import augment
from selavpr_ros.training.config import AugmentConfig, DataConfig


def check_roots(cfg: DataConfig) -> None:
    """Name a missing data folder before any loader trips over it."""
    for key, root in (("data.root", cfg.root), ("data.val_root", cfg.val_root)):
        if root and not Path(root).exists():
            raise DatasetError(f"{key} {root} does not exist (relative paths in the config file resolve against "
                               "its folder, those given with --set against the working directory)")


def load_train_places(cfg: DataConfig) -> PlaceSet:
    """Places for metric-learning losses (triplet, multi-similarity)."""
    check_roots(cfg)
    if cfg.kind == "sequence":
        spans = {"train": (cfg.train_span[0], cfg.train_span[1]), "validation": (cfg.val_span[0], cfg.val_span[1])}
        if cfg.test_span is not None:
            spans["test"] = (cfg.test_span[0], cfg.test_span[1])
        check_spans(len(frame_names(cfg.root, tuple(cfg.folders))), spans, cfg.tolerance_frames)
        return load_sequence_places(cfg.root, tuple(cfg.folders), (cfg.train_span[0], cfg.train_span[1]),
                                    cfg.frames_per_place, cfg.tolerance_frames)
    if cfg.kind == "utm":
        return load_utm_places(cfg.root, cfg.train_split, cfg.train_radius_m)
    if cfg.kind == "gsv_cities":
        return load_gsv_cities(cfg.root, cfg.cities or None, cfg.min_images_per_place)
    return load_map_places(cfg.root, cfg.train_radius_m)


def load_train_poses(cfg: DataConfig) -> PoseSet:
    """Posed images for graded-similarity losses (maps built from bags only)."""
    check_roots(cfg)
    if cfg.kind != "map":
        raise DatasetError(f"graded-similarity losses need posed images: data.kind must be 'map', not '{cfg.kind}'")
    return load_map_poses(cfg.root)


def load_validation(cfg: DataConfig) -> EvalSet:
    if cfg.kind == "sequence":
        return load_sequence_eval(cfg.root, cfg.folders[0], cfg.folders[1], (cfg.val_span[0], cfg.val_span[1]),
                                  cfg.tolerance_frames)
    if cfg.kind == "utm":
        return load_utm_eval(cfg.val_root or cfg.root, cfg.val_split, cfg.eval_radius_m)
    if not cfg.val_root:
        raise DatasetError(f"data.kind '{cfg.kind}' needs data.val_root for validation")
    if cfg.kind == "gsv_cities":
        return load_utm_eval(cfg.val_root, cfg.val_split, cfg.eval_radius_m)
    return load_map_eval(cfg.val_root, cfg.root, cfg.eval_radius_m)


def view_rng(seed: int, image: int, view: int) -> np.random.Generator:
    """The generator of one augmented view: the same pixels in every run and every cache fill."""
    return np.random.default_rng([seed, image, view])


class ImageSource:
    """Decoded training images by index, with optional memory caching for small datasets."""

    def __init__(self, paths: list[Path], preprocess_cfg: PreprocessConfig, augment_cfg: AugmentConfig,
                 seed: int = 0, keep_in_memory: bool | None = None) -> None:
        self.paths = paths
        self.preprocess_cfg = preprocess_cfg
        self.augment_cfg = augment_cfg
        self.seed = seed
        # Small datasets (e.g. Nordland thumbnails) are decoded once.
        self.keep = keep_in_memory if keep_in_memory is not None else len(paths) <= 20000
        self._memory: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def rgb(self, index: int) -> np.ndarray:
        cached = self._memory.get(index)
        if cached is not None:
            return cached
        try:
            image = load_image(self.paths[index])
        except ImageError as exc:
            raise DatasetError(f"training image {exc}") from None
        if self.keep:
            self._memory[index] = image
        return image

    def view(self, index: int, view: int) -> np.ndarray:
        """Preprocessed (3, H, W) float32 of augmented view ``view`` (0 = the image as is)."""
        image = self.rgb(index)
        if view > 0:
            image = augment(image, self.augment_cfg, view_rng(self.seed, index, view))
        return preprocess(image, self.preprocess_cfg, name=str(self.paths[index]))

    def batch(self, indices: np.ndarray, views: np.ndarray) -> np.ndarray:
        return np.stack([self.view(int(i), int(v)) for i, v in zip(indices, views)])
