"""Graded similarity from poses: overlap of two cameras' fields of view in the plane.

A camera at (x, y) with heading ``yaw`` sees the circular sector of radius
``radius`` metres and opening ``aperture`` (radians) centred on its heading.
The similarity of two cameras is

    psi = area(S1 & S2) / area(S1)

(both sectors have the same area, so psi is symmetric): 1 for identical
poses, 0 for disjoint views. Areas are integrated numerically on a polar grid
of equal-area cells over S1 (``rings x rays`` samples, exact to ~1/rings).
"""

from __future__ import annotations

import numpy as np


def _sample(aperture: float, radius: float, rings: int, rays: int) -> np.ndarray:
    """Equal-area sample points of a sector pointing along +x at the origin: (rings * rays, 2)."""
    r = radius * np.sqrt((np.arange(rings) + 0.5) / rings)
    a = (np.arange(rays) + 0.5) / rays * aperture - aperture / 2
    rr, aa = np.meshgrid(r, a, indexing="ij")
    return np.stack([rr * np.cos(aa), rr * np.sin(aa)], axis=-1).reshape(-1, 2)


def fov_overlap(
    pose_a: np.ndarray,
    pose_b: np.ndarray,
    aperture: float = np.radians(90.0),
    radius: float = 50.0,
    rings: int = 48,
    rays: int = 48,
) -> np.ndarray:
    """psi for pairs of poses (..., 3) = (x, y, yaw); returns (...,) in [0, 1]."""
    pose_a = np.asarray(pose_a, np.float64)
    pose_b = np.asarray(pose_b, np.float64)
    shape = np.broadcast_shapes(pose_a.shape, pose_b.shape)[:-1]
    a = np.broadcast_to(pose_a, (*shape, 3)).reshape(-1, 3)
    b = np.broadcast_to(pose_b, (*shape, 3)).reshape(-1, 3)
    pts = _sample(aperture, radius, rings, rays)  # (S, 2)
    ca, sa = np.cos(a[:, 2])[:, None], np.sin(a[:, 2])[:, None]
    wx = a[:, 0:1] + ca * pts[None, :, 0] - sa * pts[None, :, 1]
    wy = a[:, 1:2] + sa * pts[None, :, 0] + ca * pts[None, :, 1]
    dx, dy = wx - b[:, 0:1], wy - b[:, 1:2]
    inside_r = dx * dx + dy * dy <= radius * radius
    if aperture >= 2 * np.pi:
        inside = inside_r
    else:
        ang = np.angle(np.exp(1j * (np.arctan2(dy, dx) - b[:, 2:3])))
        inside = inside_r & (np.abs(ang) <= aperture / 2)
    return inside.mean(axis=1).reshape(shape)


def pair_bins(psi: np.ndarray) -> np.ndarray:
    """0: psi >= 0.5, 1: 0 < psi < 0.5, 2: psi == 0 (the sampling bins of graded training)."""
    return np.where(psi >= 0.5, 0, np.where(psi > 0, 1, 2))
