"""A planar textured world and an exact ray caster: camera frames with known poses and depth.

The world is vertical walls (segments in the ground plane, each textured
with a real photograph) standing on a textured ground plane under a plain
sky: a city block or a corridor loop. Every pixel's ray is intersected with
every wall and the ground in closed form (NumPy, no rasteriser, no GPU), so
the image, its depth and the camera pose agree exactly; a 320 x 240 frame
takes tens of milliseconds. Texture sampling is bilinear.

Pixel (u, v) is centred at (u, v), as in ROS CameraInfo and OpenCV.
Frames: world x, y on the ground, z up (REP 103 body convention); the camera
sits on a robot at height ``camera_height`` looking along the robot's x axis;
images are rendered in its optical frame (x right, y down, z forward).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from selavpr_ros.geometry.estimation import BODY_TO_OPTICAL, planar_pose
from selavpr_ros.types import CameraModel

SKY = np.array([170.0, 195.0, 225.0])
_WALLS_PER_COLUMN = 4


@dataclass
class Wall:
    """A vertical rectangle from ``a`` to ``b`` (x, y metres), ``height`` tall, textured (H, W, 3) uint8
    with ``texture_width_m`` metres of wall per texture width (the texture repeats along the wall)."""

    a: tuple[float, float]
    b: tuple[float, float]
    texture: np.ndarray
    height: float = 3.0
    texture_width_m: float = 4.0

    @property
    def length(self) -> float:
        return float(np.hypot(self.b[0] - self.a[0], self.b[1] - self.a[1]))


@dataclass
class World:
    walls: list[Wall]
    ground: np.ndarray  # (H, W, 3) uint8 tiled on the ground plane
    ground_tile_m: float = 4.0
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)  # appearance change: per-channel gain ...
    gamma: float = 1.0  # ... and gamma of the whole rendering
    walls_xy: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.walls_xy = np.array([[*w.a, *w.b] for w in self.walls], np.float64).reshape(-1, 4)

    def with_appearance(self, gain: tuple[float, float, float], gamma: float) -> World:
        """The same geometry under other light (a second session: dusk, overcast, another camera)."""
        return World(self.walls, self.ground, self.ground_tile_m, gain, gamma)

    def _walls_level(self, camera: CameraModel, pose: np.ndarray, visible: np.ndarray, d: np.ndarray,
                     best: np.ndarray, colour: np.ndarray) -> None:
        """Walls for a level camera (no pitch or roll): a pixel column shares one horizontal direction, so
        the ground-plane intersections are solved per column and only the height test is per pixel."""
        h, w = camera.height, camera.width
        origin = pose[:3, 3]
        dxy = d.reshape(h, w, 3)[0, :, :2].astype(np.float64)  # (W_px, 2): the same in every row
        a, b = self.walls_xy[visible, :2], self.walls_xy[visible, 2:]
        e = b - a
        denom = dxy[:, None, 0] * e[None, :, 1] - dxy[:, None, 1] * e[None, :, 0]
        rel = a[None, :, :] - origin[None, None, :2]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (rel[..., 0] * e[None, :, 1] - rel[..., 1] * e[None, :, 0]) / denom  # (cols, walls)
            t = (rel[..., 0] * dxy[:, None, 1] - rel[..., 1] * dxy[:, None, 0]) / denom
        s = np.where((s > 1e-6) & (t >= 0) & (t <= 1) & np.isfinite(s), s, np.inf)
        # nearest walls first, per column; a ray clears at most a few (shorter) walls before it hits one
        order = np.argsort(s, axis=1)[:, :_WALLS_PER_COLUMN]
        s_sorted = np.take_along_axis(s, order, axis=1)
        heights = np.array([self.walls[k].height for k in visible])[order]
        down = -d.reshape(h, w, 3)[:, 0, 2].astype(np.float64)  # (rows,): the optical y of each row
        with np.errstate(invalid="ignore"):  # inf * 0 on the horizon row: NaN, which fails the tests below
            z = origin[2] - s_sorted[None, :, :] * down[:, None, None]  # (rows, cols, walls)
        ok = (z >= 0) & (z <= heights[None]) & np.isfinite(s_sorted)[None]
        first = np.argmax(ok, axis=2)
        found = np.take_along_axis(ok, first[..., None], axis=2)[..., 0]
        rows, cols = np.nonzero(found)
        k_sorted = first[rows, cols]
        wall_index = order[cols, k_sorted]
        s_hit = s_sorted[cols, k_sorted]
        t_hit = t[cols, wall_index]
        z_hit = z[rows, cols, k_sorted]
        flat = rows * w + cols
        for k in np.unique(wall_index):
            sel = wall_index == k
            wall = self.walls[visible[k]]
            colour[flat[sel]] = _sample(wall.texture, t_hit[sel] * wall.length / wall.texture_width_m,
                                        1.0 - z_hit[sel] / wall.height, repeat_v=False)
        best[flat] = s_hit

    def _in_view(self, camera: CameraModel, pose: np.ndarray) -> np.ndarray:
        forward = pose[:2, 2] / max(float(np.linalg.norm(pose[:2, 2])), 1e-9)  # optical z in the ground plane
        half_fov = float(np.arctan(max(camera.k[2], camera.width - camera.k[2]) / camera.k[0]))
        if abs(pose[2, 2]) > 0.5:  # looking steeply up or down: no culling
            return np.arange(len(self.walls))
        return _in_view_walls(self.walls_xy, pose[:3, 3], forward, half_fov)

    def render(self, camera: CameraModel, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 (H, W, 3), depth float32 (H, W) in metres along the optical axis, NaN for sky) of the
        camera whose optical frame has world pose ``pose`` (4 x 4)."""
        h, w = camera.height, camera.width
        fx, fy, cx, cy = camera.k
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))  # ROS/OpenCV: centres
        rays_c = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1).reshape(-1, 3)  # z = 1
        rot, origin = pose[:3, :3], pose[:3, 3]
        d = (rays_c @ rot.T).astype(np.float32)  # world directions; the ray's parameter s is its optical depth
        n = len(d)
        best = np.full(n, np.inf)
        colour = np.tile(SKY, (n, 1))
        # walls: origin + s d = a + t (b - a), solved in the ground plane, then the height checked
        visible = self._in_view(camera, pose)
        if len(visible) and np.allclose(pose[:3, 1], (0.0, 0.0, -1.0), atol=1e-9):
            self._walls_level(camera, pose, visible, d, best, colour)
        elif len(visible):
            a, b = self.walls_xy[visible, :2].astype(np.float32), self.walls_xy[visible, 2:].astype(np.float32)
            e = b - a  # (W, 2)
            denom = d[:, None, 0] * e[None, :, 1] - d[:, None, 1] * e[None, :, 0]  # (N, W)
            rel = a[None, :, :] - origin[None, None, :2].astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                s = (rel[..., 0] * e[None, :, 1] - rel[..., 1] * e[None, :, 0]) / denom
                t = (rel[..., 0] * d[:, None, 1] - rel[..., 1] * d[:, None, 0]) / denom
            z = origin[2] + s * d[:, None, 2]
            heights = np.array([self.walls[k].height for k in visible])
            ok = (s > 1e-6) & (t >= 0) & (t <= 1) & (z >= 0) & (z <= heights[None, :]) & np.isfinite(s)
            s = np.where(ok, s, np.inf)
            hit = np.argmin(s, axis=1)
            s_hit = s[np.arange(n), hit]
            for k, index in enumerate(visible):
                wall = self.walls[index]
                sel = np.flatnonzero((hit == k) & np.isfinite(s_hit))
                if not len(sel):
                    continue
                along = t[sel, k] * wall.length / wall.texture_width_m
                up = 1.0 - z[sel, k] / wall.height
                colour[sel] = _sample(wall.texture, along, up, repeat_v=False)
                best[sel] = s_hit[sel]
        # ground: z = 0, closer than any wall
        with np.errstate(divide="ignore", invalid="ignore"):
            s_g = np.where(d[:, 2] < -1e-9, -origin[2] / d[:, 2], np.inf)
        sel = np.flatnonzero(s_g < best)
        if len(sel):
            x = origin[0] + s_g[sel] * d[sel, 0]
            y = origin[1] + s_g[sel] * d[sel, 1]
            colour[sel] = _sample(self.ground, x / self.ground_tile_m, y / self.ground_tile_m, repeat_v=True)
            best[sel] = s_g[sel]
        lit = 255.0 * (np.clip(colour * np.asarray(self.gain), 0, 255) / 255.0) ** self.gamma
        image = np.clip(lit, 0, 255).astype(np.uint8).reshape(h, w, 3)
        depth = np.where(np.isfinite(best), best, np.nan).astype(np.float32).reshape(h, w)
        return image, depth


def _in_view_walls(walls_xy: np.ndarray, origin: np.ndarray, forward: np.ndarray, half_fov: float) -> np.ndarray:
    """Indices of the walls that can appear in a camera's horizontal field of view (conservative)."""
    left = np.array([-forward[1], forward[0]])
    rel_a, rel_b = walls_xy[:, :2] - origin[:2], walls_xy[:, 2:] - origin[:2]
    fa, fb = rel_a @ forward, rel_b @ forward
    la, lb = rel_a @ left, rel_b @ left
    slope = np.tan(min(half_fov + 0.05, 1.55))
    behind = (fa <= 0) & (fb <= 0)
    too_left = (la > fa * slope) & (lb > fb * slope) & (fa > 0) & (fb > 0)
    too_right = (la < -fa * slope) & (lb < -fb * slope) & (fa > 0) & (fb > 0)
    return np.flatnonzero(~(behind | too_left | too_right))


def _sample(texture: np.ndarray, u: np.ndarray, v: np.ndarray, repeat_v: bool) -> np.ndarray:
    """Bilinear texture lookup at texture coordinates (u, v) in texture widths/heights; u repeats."""
    th, tw = texture.shape[:2]
    x = (u % 1.0) * tw - 0.5
    y = ((v % 1.0) if repeat_v else np.clip(v, 0.0, 1.0)) * th - 0.5
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, x1 = x0 % tw, (x0 + 1) % tw
    y0, y1 = np.clip(y0, 0, th - 1), np.clip(y0 + 1, 0, th - 1)
    tex = texture.astype(np.float64)
    top = tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx
    bottom = tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def camera_pose(x: float, y: float, yaw: float, height: float) -> np.ndarray:
    """World pose (4 x 4) of the optical frame of a camera at (x, y, height) looking along ``yaw``."""
    pose = planar_pose(x, y, yaw, height)
    pose[:3, :3] = pose[:3, :3] @ BODY_TO_OPTICAL.T  # optical axes expressed in the world
    return pose


def block_world(width: float = 40.0, depth: float = 30.0, street: float = 6.0, wall_length: float = 5.0,
                seed: int = 0) -> World:
    """A city block: a rectangular street loop ``street`` metres wide around an inner block, both sides
    lined with walls of ``wall_length`` metres, each a different real photograph (varied per wall)."""
    from selavpr_ros.datasets.rotated_views import PHOTOS, _photo

    rng = np.random.default_rng(seed)
    photos = [_photo(name) for name in PHOTOS]
    walls: list[Wall] = []

    def side(p0, p1) -> None:
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        n = max(1, int(round(np.linalg.norm(p1 - p0) / wall_length)))
        for i in range(n):
            a, b = p0 + (p1 - p0) * i / n, p0 + (p1 - p0) * (i + 1) / n
            photo = photos[rng.integers(len(photos))]
            ph, pw = photo.shape[:2]
            ch, cw = int(ph * rng.uniform(0.5, 0.9)), int(pw * rng.uniform(0.5, 0.9))
            y0, x0 = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
            tex = photo[y0 : y0 + ch, x0 : x0 + cw]
            if rng.random() < 0.5:
                tex = tex[:, ::-1]
            tex = np.clip(tex * rng.uniform(0.75, 1.25, 3), 0, 255).astype(np.uint8)  # procedural tint
            walls.append(Wall(tuple(a), tuple(b), np.ascontiguousarray(tex), float(rng.uniform(2.5, 4.0)),
                              texture_width_m=float(np.linalg.norm(b - a))))

    outer = [(-street, -street), (width + street, -street), (width + street, depth + street), (-street, depth + street)]
    inner = [(0.0, 0.0), (width, 0.0), (width, depth), (0.0, depth)]
    for ring in (outer, inner):
        for i in range(4):
            side(ring[i], ring[(i + 1) % 4])
    ground = _photo("gravel")
    return World(walls, ground, ground_tile_m=3.0)
