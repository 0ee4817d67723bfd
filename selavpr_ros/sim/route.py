"""Robot routes through a simulated world, and wheel odometry that drifts as real odometry does.

A route is a sequence of planar poses (x, y, yaw) sampled at a fixed
distance. Odometry integrates the route's increments with noise on each
increment (a fraction of the distance travelled in translation, and in
heading per metre plus per radian turned), so its error grows with distance
like a real robot's, and the noise is reproducible from a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OdometryNoise:
    """Standard deviations of the noise on each increment."""

    translation_fraction: float = 0.02  # of the distance travelled
    heading_per_m: float = float(np.radians(0.3))  # rad per metre travelled
    heading_per_rad: float = 0.02  # rad per radian turned

    def covariance(self, step: float, turn: float) -> np.ndarray:
        """3 x 3 covariance of one increment (forward, lateral, heading)."""
        st = self.translation_fraction * max(step, 1e-3)
        sh = self.heading_per_m * step + self.heading_per_rad * abs(turn) + 1e-4
        return np.diag([st**2, st**2, sh**2])


def loop_route(width: float, depth: float, offset: float = -3.0, laps: float = 2.0, step: float = 0.5,
               lateral_shift: float = 0.0, heading_wobble_deg: float = 0.0, seed: int = 0) -> np.ndarray:
    """(N, 3) poses driving counter-clockwise around the rectangle ``[0, width] x [0, depth]`` at
    distance ``-offset`` outside it (the street around a block), ``laps`` times. ``lateral_shift``
    moves the path sideways (a revisit from another lane) and ``heading_wobble_deg`` turns the
    camera by a slowly varying angle (a revisit with another heading)."""
    o = offset - lateral_shift
    corners = np.array([(o, o), (width - o, o), (width - o, depth - o), (o, depth - o)], np.float64)
    perimeter = 2 * (width + depth - 4 * o)
    n = int(round(laps * perimeter / step))
    dist = np.arange(n) * step
    poses = np.zeros((n, 3))
    sides = np.roll(corners, -1, axis=0) - corners
    lengths = np.linalg.norm(sides, axis=1)
    cumulative = np.concatenate([[0], np.cumsum(lengths)])
    for i, s in enumerate(dist % perimeter):
        k = int(np.searchsorted(cumulative, s, side="right") - 1)
        frac = (s - cumulative[k]) / lengths[k]
        poses[i, :2] = corners[k] + frac * sides[k]
        poses[i, 2] = np.arctan2(sides[k][1], sides[k][0])
    if heading_wobble_deg:
        phase = np.random.default_rng(seed).uniform(0, 2 * np.pi)
        poses[:, 2] += np.radians(heading_wobble_deg) * np.sin(dist / 7.0 + phase)
    poses[:, 2] = np.unwrap(poses[:, 2])
    return poses


def increments(poses: np.ndarray) -> np.ndarray:
    """(N-1, 3) body-frame increments (forward, lateral, heading change) between consecutive poses."""
    d = np.diff(poses[:, :2], axis=0)
    yaw = poses[:-1, 2]
    c, s = np.cos(yaw), np.sin(yaw)
    return np.column_stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], np.diff(poses[:, 2])])


def drifting_odometry(poses: np.ndarray, noise: OdometryNoise, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Odometry poses (N, 3) starting at the true first pose, and each increment's covariance (N-1, 3, 3)."""
    rng = np.random.default_rng(seed)
    inc = increments(poses)
    out = np.zeros_like(poses)
    out[0] = poses[0]
    covs = np.zeros((len(inc), 3, 3))
    for i, (dx, dy, dth) in enumerate(inc):
        cov = noise.covariance(float(np.hypot(dx, dy)), float(dth))
        covs[i] = cov
        ndx, ndy, ndth = np.array([dx, dy, dth]) + rng.normal(0, np.sqrt(np.diag(cov)))
        x, y, th = out[i]
        out[i + 1] = (x + np.cos(th) * ndx - np.sin(th) * ndy, y + np.sin(th) * ndx + np.cos(th) * ndy, th + ndth)
    return out, covs
