"""Reference points a trained model must beat.

* raw pixels: each image resized to a common size, mean-removed, L2-normalised,
  compared by cosine (nearest neighbour in pixel space);
* the untrained model: the same architecture as the one trained, adapters at
  their initial (identity) values, trunk as loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from selavpr_ros.datasets.base import EvalSet
from selavpr_ros.evaluation.recall import rank_binary, rank_float, recall_at
from selavpr_ros.inference.preprocess import load_image
from selavpr_ros.types import Descriptors


def pixel_descriptors(paths: Sequence[str | Path], size: tuple[int, int] | None = None) -> np.ndarray:
    """(N, H*W*3) unit vectors of mean-removed RGB pixels at ``size`` (W, H; default: the first image's)."""
    out = []
    for path in paths:
        image = load_image(path)
        if size is None:
            size = (image.shape[1], image.shape[0])
        if (image.shape[1], image.shape[0]) != size:
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        x = image.astype(np.float32).ravel()
        x -= x.mean()
        out.append(x / (np.linalg.norm(x) + 1e-6))
    return np.stack(out)


def pixel_recall(eval_set: EvalSet, ns: Sequence[int] = (1, 5, 10, 20)) -> dict[int, float]:
    desc = pixel_descriptors(eval_set.database + eval_set.queries)
    n_db = len(eval_set.database)
    return recall_at(rank_float(desc[:n_db], desc[n_db:], max(ns)), eval_set.positives, ns)


def descriptor_recall(database: Descriptors, queries: Descriptors, positives: Sequence[np.ndarray],
                      ns: Sequence[int] = (1, 5, 10, 20)) -> dict[str, dict[int, float]]:
    """Recall@N of exhaustive float search and of Hamming search on the codes."""
    k = max(ns)
    return {
        "float": recall_at(rank_float(database.descriptors, queries.descriptors, k), positives, ns),
        "binary": recall_at(rank_binary(database.codes, queries.codes, k), positives, ns),
    }
