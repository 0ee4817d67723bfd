"""Relative pose between two cameras from correspondences, with a covariance from the estimate.

Convention: the result is the pose of the *match* camera in the *query*
camera's optical frame (REP 103: x right, y down, z forward), i.e.
``X_query = R @ X_match + t``, as ``cv2.recoverPose``/``solvePnP`` return it
with the match as the first view / the object.

- depth on the match's keypoints (a registered depth image or stereo) ->
  PnP RANSAC: metric 6-DoF;
- otherwise essential matrix (USAC MAGSAC++) + cheirality: rotation and the
  unit direction of ``t``; when a homography explains the matches as well
  and the scene shows no parallax (a pure rotation), the rotation comes from
  the homography and the translation is unknown.

The covariance is ``sigma^2 (J^T J)^-1`` over the inliers' residuals (pixels),
``sigma^2`` their mean square; ROS order (x, y, z, rot x, rot y, rot z), the
rotation a perturbation about the query frame's axes. Components the
estimate cannot observe (scale, the translation of a pure rotation) get
variance :data:`UNOBSERVED_VARIANCE`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from selavpr_ros.config import check
from selavpr_ros.geometry.camera import CameraModel
from selavpr_ros.geometry.features import KeypointConfig
from selavpr_ros.types import quaternion_to_rotation

UNOBSERVED_VARIANCE = 1e6  # m^2 (or rad^2): "no information" in a covariance a back-end can still invert
_MIN_SIGMA_PX = 0.25  # residual floor: a handful of perfect inliers must not claim infinite precision


@dataclass
class VerificationConfig:
    """Geometric verification and its precision-first acceptance (``loop_closure.geometry``)."""

    matcher: Literal["keypoints", "dense"] = "keypoints"  # dense: the model's local features (SelaVPR)
    ransac_threshold_px: float = 2.0
    confidence: float = 0.999
    max_iterations: int = 2000
    min_inliers: int = 30
    min_inlier_ratio: float = 0.3  # inliers / putative matches
    min_spread: float = 0.01  # matches' second principal spread / image diagonal: rejects points on a line
    rotation_only_ratio: float = 0.8  # homography inliers >= this x essential inliers ...
    max_anisotropy: float = 0.03  # ... and its normalised form a rotation (singular values within 3 %)
    min_depth_m: float = 0.1
    max_depth_m: float = 100.0
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    required: bool = False  # reject candidates that cannot be verified (no camera model / keypoints)

    def __post_init__(self) -> None:
        check(self.matcher in ("keypoints", "dense"), "geometry.matcher must be 'keypoints' or 'dense'")
        check(0.1 <= self.ransac_threshold_px <= 50, "geometry.ransac_threshold_px must be in [0.1, 50]")
        check(0.5 < self.confidence < 1.0, "geometry.confidence must be in (0.5, 1)")
        check(self.max_iterations >= 10, "geometry.max_iterations must be >= 10")
        check(self.min_inliers >= 6, "geometry.min_inliers must be >= 6 (the minimal PnP / 5-point sets)")
        check(0.0 <= self.min_inlier_ratio <= 1.0, "geometry.min_inlier_ratio must be in [0, 1]")
        check(0.0 <= self.min_spread < 1.0, "geometry.min_spread must be in [0, 1)")
        check(0.0 < self.min_depth_m < self.max_depth_m, "geometry depth range must satisfy 0 < min < max")


@dataclass
class RelativePose:
    """Outcome of verifying one candidate; ``valid`` False means rejected, ``reason`` says why."""

    valid: bool
    reason: str
    matches: int = 0
    inliers: int = 0
    model: Literal["", "pnp", "essential", "rotation"] = ""
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    metric: bool = False  # translation in metres; else a unit direction (essential) or unknown (rotation)
    covariance: np.ndarray = field(default_factory=lambda: np.eye(6) * UNOBSERVED_VARIANCE)
    rms_px: float = float("nan")
    skipped: bool = False  # not verifiable for want of data (camera model, keypoints), as opposed to failed

    @classmethod
    def unverifiable(cls, reason: str) -> RelativePose:
        return cls(False, reason, skipped=True)

    @property
    def inlier_ratio(self) -> float:
        return self.inliers / self.matches if self.matches else 0.0

    def quaternion(self) -> tuple[float, float, float, float]:
        """Rotation as (x, y, z, w)."""
        return rotation_to_quaternion(self.rotation)


def rotation_to_quaternion(r: np.ndarray) -> tuple[float, float, float, float]:
    import cv2

    rvec = cv2.Rodrigues(np.asarray(r, np.float64))[0].ravel()
    angle = float(np.linalg.norm(rvec))
    axis = rvec / angle if angle > 1e-12 else np.zeros(3)
    s = np.sin(angle / 2)
    return float(axis[0] * s), float(axis[1] * s), float(axis[2] * s), float(np.cos(angle / 2))


# REP 103: vectors of a body-convention frame (x forward, y left, z up) in its optical frame (x right, y down,
# z forward).
BODY_TO_OPTICAL = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


def skew(v: np.ndarray) -> np.ndarray:
    """The cross-product matrix: ``skew(a) @ b == np.cross(a, b)``."""
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def planar_pose(x: float, y: float, yaw: float, z: float = 0.0) -> np.ndarray:
    """4 x 4 pose of a body-convention frame (x forward, z up) at (x, y, z) heading ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    pose = np.eye(4)
    pose[:2, :2] = [[c, -s], [s, c]]
    pose[:3, 3] = (x, y, z)
    return pose


def relative_from_poses(query: Any, match: Any, axes: str = "optical") -> tuple[np.ndarray, np.ndarray]:
    """True ``(R, t)`` of the match camera in the query camera's optical frame (``X_q = R X_m + t``)
    from two :class:`~selavpr_ros.types.Pose` in one world frame; ``axes`` says whether the poses are
    of optical frames or of body-convention frames (converted with :data:`BODY_TO_OPTICAL`)."""
    r_q, r_m = quaternion_to_rotation(query.orientation), quaternion_to_rotation(match.orientation)
    r = r_q.T @ r_m
    t = r_q.T @ (np.asarray(match.position, np.float64) - np.asarray(query.position, np.float64))
    if axes == "body":
        r, t = BODY_TO_OPTICAL @ r @ BODY_TO_OPTICAL.T, BODY_TO_OPTICAL @ t
    return r, t


def pose_errors(estimate: RelativePose, rotation: np.ndarray, translation: np.ndarray) -> dict[str, float | None]:
    """Rotation error (deg); translation direction error (deg) and, for metric estimates, translation
    error (m). Translations are not compared for the rotation model, nor directions of a zero motion."""
    out: dict[str, float | None] = {"rotation_deg": rotation_angle_deg(estimate.rotation, rotation),
                                    "direction_deg": None, "translation_m": None}
    norm = float(np.linalg.norm(translation))
    if estimate.model != "rotation" and norm > 1e-9:
        cos = float(estimate.translation @ translation) / max(float(np.linalg.norm(estimate.translation)) * norm, 1e-12)
        out["direction_deg"] = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    if estimate.metric:
        out["translation_m"] = float(np.linalg.norm(estimate.translation - translation))
    return out


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle of the rotation between two rotation matrices, degrees."""
    c = (np.trace(np.asarray(a).T @ np.asarray(b)) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def _rodrigues(w: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.Rodrigues(np.asarray(w, np.float64).reshape(3, 1))[0]


def _covariance(residual, x0: np.ndarray, n_res: int) -> np.ndarray | None:
    """sigma^2 (J^T J)^-1 by central differences of ``residual`` (pixels) at ``x0``; None if singular."""
    jac = _jacobian(residual, x0, n_res)
    r0 = residual(x0)
    dof = max(n_res - len(x0), 1)
    sigma2 = max(float(r0 @ r0) / dof, _MIN_SIGMA_PX**2)
    info = jac.T @ jac
    if not np.isfinite(info).all() or np.linalg.cond(info) > 1e12:
        return None
    return sigma2 * np.linalg.inv(info)


def _sym_pd(cov: np.ndarray) -> np.ndarray:
    """Symmetric, strictly positive definite (what a pose-graph optimiser may invert)."""
    cov = 0.5 * (cov + cov.T)
    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 1e-12, UNOBSERVED_VARIANCE)
    return (vecs * vals) @ vecs.T


def _spread(pixels: np.ndarray, cam: CameraModel) -> float:
    """Second singular value of the centred points over the image diagonal (0: all on a line)."""
    centred = pixels - pixels.mean(axis=0)
    s = np.linalg.svd(centred / np.sqrt(len(pixels)), compute_uv=False)
    return float(s[-1] / np.hypot(cam.width, cam.height))


def estimate_relative_pose(
    query_px: np.ndarray,
    match_px: np.ndarray,
    query_cam: CameraModel,
    match_cam: CameraModel,
    config: VerificationConfig,
    match_depth: np.ndarray | None = None,
) -> RelativePose:
    """Verify putative correspondences (pixel arrays of equal length) and estimate the relative pose.

    Never raises on degenerate input: too few, collinear or inconsistent
    matches give ``valid=False`` with the reason.
    """
    import cv2

    q = np.asarray(query_px, np.float64).reshape(-1, 2)
    m = np.asarray(match_px, np.float64).reshape(-1, 2)
    n = len(q)
    cfg = config
    if n < cfg.min_inliers:
        return RelativePose(False, f"{n} putative matches < min_inliers {cfg.min_inliers}", matches=n)
    if _spread(q, query_cam) < cfg.min_spread or _spread(m, match_cam) < cfg.min_spread:
        return RelativePose(False, "matches are degenerate (nearly on one line)", matches=n)
    qn, mn = query_cam.normalize(q), match_cam.normalize(m)
    if match_depth is not None:
        z = np.asarray(match_depth, np.float64)
        good = np.isfinite(z) & (z >= cfg.min_depth_m) & (z <= cfg.max_depth_m)
        if good.sum() >= cfg.min_inliers:
            return _pnp(qn[good], mn[good], z[good], query_cam, cfg, n)
    thr = cfg.ransac_threshold_px / query_cam.focal
    e, mask_e = cv2.findEssentialMat(mn, qn, np.eye(3), cv2.USAC_MAGSAC, cfg.confidence, thr,
                                     maxIters=cfg.max_iterations)
    if e is None or e.shape != (3, 3) or mask_e is None:
        return RelativePose(False, "no essential matrix fits the matches", matches=n)
    n_e = int(mask_e.sum())
    f = query_cam.focal  # the homography is fitted in (ideal) pixels: tiny normalised thresholds upset USAC
    h, mask_h = cv2.findHomography(mn * f, qn * f, cv2.USAC_MAGSAC, cfg.ransac_threshold_px,
                                   maxIters=cfg.max_iterations, confidence=cfg.confidence)
    n_h = int(mask_h.sum()) if mask_h is not None else 0
    if h is not None:
        h = np.diag([1 / f, 1 / f, 1.0]) @ h @ np.diag([f, f, 1.0])
    if h is not None and n_h >= cfg.rotation_only_ratio * n_e:
        rotation = _rotation_from_homography(h, mn, qn, mask_h.ravel() > 0, query_cam, cfg)
        if rotation is not None:
            return _accept(rotation, n, cfg)
    _, r, t, mask_pose = cv2.recoverPose(e, mn, qn, np.eye(3), mask=mask_e.copy())
    inliers = mask_pose.ravel() > 0
    essential_inliers = mask_e.ravel() > 0
    if essential_inliers.sum() >= cfg.min_inliers:
        # Without parallax t, and with it E's rotation, is undetermined: when a rotation alone explains
        # (nearly) all of E's inliers, it is the model (the simpler of two that fit).
        rotation = _rotation_model(r, mn[essential_inliers], qn[essential_inliers], query_cam, cfg)
        if rotation.valid and rotation.inliers >= cfg.rotation_only_ratio * essential_inliers.sum():
            return _accept(rotation, n, cfg)
    if h is not None and n_h >= cfg.rotation_only_ratio * n_e:
        # A plane seen with parallax: two motions explain its matches equally well, so the essential
        # matrix's rotation and direction are a guess between them (seen: 83 deg off, every match an inlier).
        return RelativePose(False, f"planar scene: a homography explains {n_h} of the essential matrix's {n_e} "
                            "inliers, so the relative pose is ambiguous without depth", matches=n, inliers=n_e,
                            model="essential")
    return _accept(_essential(r, t.ravel(), qn[inliers], mn[inliers], query_cam), n, cfg)


def _accept(pose: RelativePose, n: int, cfg: VerificationConfig) -> RelativePose:
    pose.matches = n
    if pose.inliers < cfg.min_inliers:
        pose.valid, pose.reason = False, f"{pose.inliers} inliers < min_inliers {cfg.min_inliers} ({pose.model})"
    elif pose.inlier_ratio < cfg.min_inlier_ratio:
        pose.valid = False
        pose.reason = f"inlier ratio {pose.inlier_ratio:.2f} < min_inlier_ratio {cfg.min_inlier_ratio} ({pose.model})"
    else:
        pose.valid = True
        pose.reason = f"{pose.model}: {pose.inliers}/{n} inliers, rms {pose.rms_px:.2f} px"
    return pose


def _rotation_from_homography(h, mn, qn, mask, cam, cfg) -> RelativePose | None:
    """A pure rotation when the normalised homography is (close to) a rotation matrix.

    A homography ``R + t n^T / d`` of a plane seen with translation has unequal
    singular values; a rotation's are equal.
    """
    u, s, vt = np.linalg.svd(h)
    if s[0] / s[2] > 1.0 + cfg.max_anisotropy:
        return None  # the scene shows parallax (a plane seen while translating): not a rotation
    return _rotation_model(u @ np.diag([1, 1, np.linalg.det(u @ vt)]) @ vt, mn[mask], qn[mask], cam, cfg)


def _rotation_model(r: np.ndarray, mi: np.ndarray, qi: np.ndarray, cam: CameraModel,
                    cfg: VerificationConfig) -> RelativePose:
    """The rotation that best maps the match rays onto the query rays (translation unknown)."""

    def residual_at(base: np.ndarray, m: np.ndarray, q: np.ndarray):
        def residual(w: np.ndarray) -> np.ndarray:
            p = (_rodrigues(w) @ base @ np.column_stack([m, np.ones(len(m))]).T).T
            return ((p[:, :2] / p[:, 2:3] - q) * cam.focal).ravel()
        return residual

    def errors(base: np.ndarray) -> np.ndarray:
        return np.linalg.norm(residual_at(base, mi, qi)(np.zeros(3)).reshape(-1, 2), axis=1)

    keep = np.ones(len(mi), bool)
    for _ in range(2):  # Gauss-Newton on the transfer errors, then again on the points it explains
        for _ in range(3):
            residual = residual_at(r, mi[keep], qi[keep])
            r0 = residual(np.zeros(3))
            step = np.linalg.lstsq(_jacobian(residual, np.zeros(3), len(r0)), -r0, rcond=None)[0]
            r = _rodrigues(step) @ r
        keep = errors(r) <= cfg.ransac_threshold_px
        if keep.sum() < 3:
            return RelativePose(False, "no rotation explains the matches", model="rotation")
    err = errors(r)[keep]
    cov3 = _covariance(residual_at(r, mi[keep], qi[keep]), np.zeros(3), 2 * int(keep.sum()))
    cov = np.eye(6) * UNOBSERVED_VARIANCE
    if cov3 is not None:
        cov[3:, 3:] = cov3
    return RelativePose(True, "", inliers=int(keep.sum()), model="rotation", rotation=r, translation=np.zeros(3),
                        metric=False, covariance=_sym_pd(cov), rms_px=float(np.sqrt(np.mean(err**2))))


def _jacobian(residual, x0: np.ndarray, n_res: int) -> np.ndarray:
    eps = 1e-6
    jac = np.empty((n_res, len(x0)))
    for i in range(len(x0)):
        d = np.zeros_like(x0)
        d[i] = eps
        jac[:, i] = (residual(x0 + d) - residual(x0 - d)) / (2 * eps)
    return jac


def _essential(r: np.ndarray, t: np.ndarray, qn: np.ndarray, mn: np.ndarray, cam: CameraModel) -> RelativePose:
    t = t / max(np.linalg.norm(t), 1e-12)
    if len(qn) >= 6:  # Gauss-Newton on the inliers' Sampson errors refines the RANSAC model
        for _ in range(5):
            residual, apply = _essential_residual(r, t, qn, mn, cam)
            r0 = residual(np.zeros(5))
            step = np.linalg.lstsq(_jacobian(residual, np.zeros(5), len(qn)), -r0, rcond=None)[0]
            r_new, t_new = apply(step)
            if float(residual(step) @ residual(step)) >= float(r0 @ r0):
                break
            r, t = r_new, t_new
    residual, _ = _essential_residual(r, t, qn, mn, cam)
    cov = np.eye(6) * UNOBSERVED_VARIANCE
    res = residual(np.zeros(5))
    b1, b2 = _tangent(t)
    if len(qn) >= 6:
        cov5 = _covariance(residual, np.zeros(5), len(qn))
        if cov5 is not None:
            basis = np.column_stack([b1, b2])
            cov[:3, :3] = basis @ cov5[3:, 3:] @ basis.T + UNOBSERVED_VARIANCE * np.outer(t, t)
            cov[3:, 3:] = cov5[:3, :3]
            cov[:3, 3:] = basis @ cov5[3:, :3]
            cov[3:, :3] = cov[:3, 3:].T
    return RelativePose(True, "", inliers=len(qn), model="essential", rotation=r, translation=t, metric=False,
                        covariance=_sym_pd(cov), rms_px=float(np.sqrt(np.mean(res**2))) if len(res) else 0.0)


def _tangent(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal basis of the plane normal to the unit vector ``t``."""
    b1 = np.cross(t, [1.0, 0, 0] if abs(t[0]) < 0.9 else [0, 1.0, 0])
    b1 /= np.linalg.norm(b1)
    return b1, np.cross(t, b1)


def _essential_residual(r, t, qn, mn, cam):
    """Sampson errors (pixels) as a function of 5 parameters: rotation (3) and translation direction (2)."""
    b1, b2 = _tangent(t)
    xq = np.column_stack([qn, np.ones(len(qn))])
    xm = np.column_stack([mn, np.ones(len(mn))])

    def apply(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tt = t + p[3] * b1 + p[4] * b2
        return _rodrigues(p[:3]) @ r, tt / np.linalg.norm(tt)

    def residual(p: np.ndarray) -> np.ndarray:
        rr, tt = apply(p)
        e = skew(tt) @ rr
        ex, etx = xm @ e.T, xq @ e
        num = np.einsum("ij,ij->i", xq, ex)
        den = ex[:, 0] ** 2 + ex[:, 1] ** 2 + etx[:, 0] ** 2 + etx[:, 1] ** 2
        return num / np.sqrt(np.maximum(den, 1e-18)) * cam.focal

    return residual, apply


def _pnp(qn: np.ndarray, mn: np.ndarray, z: np.ndarray, cam: CameraModel, cfg: VerificationConfig,
         n: int) -> RelativePose:
    import cv2

    obj = np.column_stack([mn * z[:, None], z])  # match-camera coordinates of the keypoints
    ok, rvec, tvec, idx = cv2.solvePnPRansac(
        obj, qn, np.eye(3), None, iterationsCount=cfg.max_iterations,
        reprojectionError=cfg.ransac_threshold_px / cam.focal, confidence=cfg.confidence,
        flags=cv2.SOLVEPNP_SQPNP)
    if not ok or idx is None or len(idx) < 6:
        return _accept(RelativePose(False, "", model="pnp"), n, cfg)
    idx = idx.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(obj[idx], qn[idx], np.eye(3), None, rvec, tvec)
    r0, t0 = cv2.Rodrigues(rvec)[0], tvec.ravel()
    oi, qi = obj[idx], qn[idx]

    def residual(p: np.ndarray) -> np.ndarray:
        x = (_rodrigues(p[3:]) @ r0 @ oi.T).T + (t0 + p[:3])  # left perturbation: t' = t + dt, R' = exp(w) R
        return ((x[:, :2] / x[:, 2:3] - qi) * cam.focal).ravel()

    cov = _covariance(residual, np.zeros(6), 2 * len(idx))
    res = residual(np.zeros(6))
    pose = RelativePose(True, "", inliers=len(idx), model="pnp", rotation=r0, translation=t0, metric=True,
                        covariance=_sym_pd(cov if cov is not None else np.eye(6) * UNOBSERVED_VARIANCE),
                        rms_px=float(np.sqrt(np.mean(res**2))))
    return _accept(pose, n, cfg)
