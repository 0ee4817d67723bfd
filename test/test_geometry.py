"""Geometric verification on real images with known geometry: rotations, a calibrated stereo pair,
wrong pairs, degenerate input, camera models and the stored keypoint format."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import skimage.data

from selavpr_ros.errors import CameraError, MapError
from selavpr_ros.geometry.camera import CameraModel, CameraTrack
from selavpr_ros.geometry.estimation import (
    UNOBSERVED_VARIANCE,
    VerificationConfig,
    estimate_relative_pose,
    rotation_angle_deg,
)
from selavpr_ros.geometry.features import KeypointConfig, Keypoints, detect, match

# Middlebury 2014 "Motorcycle", as scikit-image ships it (4x down-sampled) with its calibration.
FOCAL, CX, CY, DOFFS, BASELINE = 994.978, 311.193, 254.877, 31.086, 0.193001


def camera_info(k=(500.0, 0, 320, 0, 500, 240, 0, 0, 1), width=640, height=480, d=(0.0,) * 5,
                model="plumb_bob", binning=(0, 0), roi=(0, 0, 0, 0)):
    return SimpleNamespace(k=np.array(k, float), width=width, height=height, d=np.array(d, float),
                           distortion_model=model, binning_x=binning[0], binning_y=binning[1],
                           roi=SimpleNamespace(x_offset=roi[0], y_offset=roi[1], width=roi[2], height=roi[3]),
                           header=SimpleNamespace(frame_id="cam_optical"))


def stereo():
    left, right, disparity = skimage.data.stereo_motorcycle()
    cam_left = CameraModel(741, 500, (FOCAL, FOCAL, CX, CY))
    cam_right = CameraModel(741, 500, (FOCAL, FOCAL, CX + DOFFS, CY))
    return left, right, BASELINE * FOCAL / (disparity + DOFFS), cam_left, cam_right


def rotated(image, rotation, hfov=60.0):
    h, w = image.shape[:2]
    cam = CameraModel.nominal(w, h, hfov)
    homography = cam.matrix @ rotation @ np.linalg.inv(cam.matrix)
    return cv2.warpPerspective(image, homography, (w, h)), cam


def verify(query, other, cam_q, cam_o, config=None, depth=None, detector="orb"):
    kp_config = KeypointConfig(detector=detector)
    kq, ko = detect(query, kp_config), detect(other, kp_config, depth)
    m = match(kq, ko)
    return estimate_relative_pose(kq.xy[m[:, 0]], ko.xy[m[:, 1]], cam_q, cam_o, config or VerificationConfig(),
                                  None if ko.depth is None else ko.depth[m[:, 1]])


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
@pytest.mark.parametrize("detector", ["orb", "sift"])
def test_pure_rotation_is_recovered_exactly(name, detector):
    image = getattr(skimage.data, name)()
    truth = cv2.Rodrigues(np.radians([3.0, -8.0, 4.0]).reshape(3, 1))[0]
    view, cam = rotated(image, truth)
    pose = verify(view, image, cam, cam, detector=detector)
    assert pose.valid, pose.reason
    assert pose.model == "rotation" and not pose.metric
    assert rotation_angle_deg(pose.rotation, truth) < 0.1  # measured: <= 0.02 deg
    assert np.allclose(pose.translation, 0)
    cov = pose.covariance
    assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > 0
    assert np.allclose(np.diag(cov)[:3], UNOBSERVED_VARIANCE)  # a rotation says nothing of translation
    assert np.sqrt(np.diag(cov)[3:]).max() < np.radians(0.1)


def test_stereo_pair_gives_translation_direction_and_metric_pnp():
    left, right, depth, cam_left, cam_right = stereo()
    # query = right camera, match = left keyframe: X_right = X_left - (baseline, 0, 0)
    pose = verify(right, left, cam_right, cam_left)
    assert pose.valid and pose.model == "essential" and not pose.metric, pose.reason
    assert rotation_angle_deg(pose.rotation, np.eye(3)) < 0.5  # measured 0.23 deg
    direction_error = np.degrees(np.arccos(abs(pose.translation @ [1.0, 0, 0])))
    assert direction_error < 2.0 and pose.translation[0] < 0  # measured 0.5 deg
    t = pose.translation / np.linalg.norm(pose.translation)
    assert t @ pose.covariance[:3, :3] @ t == pytest.approx(UNOBSERVED_VARIANCE, rel=1e-3)  # scale unknown
    metric = verify(right, left, cam_right, cam_left, depth=depth)
    assert metric.valid and metric.model == "pnp" and metric.metric, metric.reason
    assert metric.translation == pytest.approx([-BASELINE, 0, 0], abs=0.01)  # benchmark: 2.8 mm (ORB)
    assert rotation_angle_deg(metric.rotation, np.eye(3)) < 0.3
    sigma = np.sqrt(np.diag(metric.covariance))
    assert (sigma[:3] < 0.01).all() and (sigma[3:] < np.radians(0.5)).all()


def test_wrong_pairs_are_rejected_with_a_reason():
    images = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(),
              skimage.data.stereo_motorcycle()[0]]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            a, b = images[i], images[j]
            cam_a, cam_b = (CameraModel.nominal(x.shape[1], x.shape[0]) for x in (a, b))
            pose = verify(b, a, cam_b, cam_a)
            assert not pose.valid and "min_inliers" in pose.reason


def test_degenerate_and_hostile_correspondences_never_raise():
    cam = CameraModel.nominal(640, 480)
    config = VerificationConfig(min_inliers=10)
    rng = np.random.default_rng(0)
    line = np.column_stack([np.linspace(10, 600, 50), np.linspace(20, 400, 50)])
    pose = estimate_relative_pose(line, line + 3, cam, cam, config)
    assert not pose.valid and "degenerate" in pose.reason
    assert "putative matches" in estimate_relative_pose(line[:5], line[:5], cam, cam, config).reason
    for _ in range(5):  # random points: nothing consistent, never an exception
        a, b = rng.uniform(0, 480, (60, 2)), rng.uniform(0, 480, (60, 2))
        assert not estimate_relative_pose(a, b, cam, cam, config).valid
    same = rng.uniform(0, 480, (60, 2))
    identical = estimate_relative_pose(same, same, cam, cam, config)  # zero motion: a rotation by I
    assert identical.valid and rotation_angle_deg(identical.rotation, np.eye(3)) < 1e-3


def test_camera_model_from_camera_info():
    cam = CameraModel.from_camera_info(camera_info())
    assert cam.k == (500.0, 500.0, 320.0, 240.0) and (cam.width, cam.height) == (640, 480)
    assert cam.frame_id == "cam_optical"
    binned = CameraModel.from_camera_info(camera_info(binning=(2, 2)))
    assert binned.k == (250.0, 250.0, 160.0, 120.0) and (binned.width, binned.height) == (320, 240)
    roi = CameraModel.from_camera_info(camera_info(roi=(100, 50, 200, 100)))
    assert roi.k[2:] == (220.0, 190.0) and (roi.width, roi.height) == (200, 100)
    with pytest.raises(CameraError, match="all-zero K"):
        CameraModel.from_camera_info(camera_info(k=(0.0,) * 9))
    with pytest.raises(CameraError, match="unknown distortion model 'fancy'"):
        CameraModel.from_camera_info(camera_info(d=(0.1, 0, 0, 0, 0), model="fancy"))
    with pytest.raises(CameraError, match="takes"):
        CameraModel.from_camera_info(camera_info(d=(0.1, 0, 0), model="plumb_bob"))
    with pytest.raises(CameraError, match="image is 320x240 but its CameraInfo describes 640x480"):
        cam.check_image(320, 240)
    assert CameraModel.from_json(cam.to_json()) == cam


@pytest.mark.parametrize("model,d", [("plumb_bob", (-0.28, 0.07, 0.001, -0.002, 0.0)),
                                      ("equidistant", (-0.01, 0.02, -0.01, 0.003))])
def test_distorted_pixels_are_undistorted(model, d):
    cam = CameraModel.from_camera_info(camera_info(d=d, model=model))
    rng = np.random.default_rng(1)
    normalized = rng.uniform(-0.5, 0.5, (40, 2))
    points = np.column_stack([normalized, np.ones(40)]).reshape(-1, 1, 3)
    if model == "equidistant":
        pixels = cv2.fisheye.projectPoints(points, np.zeros(3), np.zeros(3), cam.matrix, np.array(d))[0]
    else:
        pixels = cv2.projectPoints(points, np.zeros(3), np.zeros(3), cam.matrix, np.array(d))[0]
    assert np.abs(pixels.reshape(-1, 2) - cam.project(normalized)).max() > 1.0  # the lens matters
    assert cam.normalize(pixels.reshape(-1, 2)) == pytest.approx(normalized, abs=1e-5)


def test_camera_track_matches_by_stamp_and_explains_misses():
    track = CameraTrack(max_age_ns=10**9)
    assert track.lookup(0) == (None, "no CameraInfo received (camera_info topic)")
    track.add(100, camera_info())
    track.add(200, camera_info(k=(0.0,) * 9))
    assert track.lookup(100)[0] is not None
    assert track.lookup(200)[0] is None and "all-zero K" in track.lookup(200)[1]
    assert track.lookup(150 + 10**8)[0] is None  # nearest is the uncalibrated one
    assert track.lookup(90)[0] is not None
    miss = track.lookup(5 * 10**9)
    assert miss[0] is None and "no CameraInfo within 1.000 s" in miss[1]
    hostile = camera_info()
    hostile.header.frame_id = "x" * 100_000  # a peer's megabyte frame id is never stored or echoed whole
    track.add(300, hostile)
    refused = track.lookup(300)
    assert refused[0] is None and "exceeds the limit of 256" in refused[1] and len(refused[1]) < 300


def test_keypoint_blob_round_trip_and_corruption():
    image = skimage.data.astronaut()
    depth = np.full(image.shape[:2], 2.5, np.float32)
    for detector, size in (("orb", 36), ("sift", 132)):
        kp = detect(image, KeypointConfig(detector=detector, max_keypoints=300), depth)
        blob = kp.to_bytes()
        assert len(blob) == 9 + len(kp) * (size + 2)
        back = Keypoints.from_bytes(blob)
        assert back.kind == detector and np.array_equal(back.descriptors, kp.descriptors)
        assert np.abs(back.xy - kp.xy).max() <= 1 / 16 and back.depth == pytest.approx(kp.depth, rel=1e-3)
        with pytest.raises(MapError, match="truncated|corrupt"):
            Keypoints.from_bytes(blob[:-5])
        with pytest.raises(MapError, match="corrupt"):
            Keypoints.from_bytes(b"XXX" + blob[3:])
    tiny = detect(np.zeros((4, 4, 3), np.uint8), KeypointConfig())
    assert len(tiny) == 0 and len(match(tiny, tiny)) == 0


def test_dense_matcher_maps_the_selavpr_grid_back_to_pixels(tmp_path):
    """matcher: dense uses the model's local features: the same image verifies as the identity rotation,
    and grid cells land on the pixels the model saw (stretch and centre-crop inputs)."""
    from conftest import tiny_config

    from selavpr_ros.inference.torch_backend import TorchExtractor
    from selavpr_ros.mapdb.database import MapDatabase
    from selavpr_ros.models.config import PreprocessConfig
    from selavpr_ros.models.vpr import build_model
    from selavpr_ros.retrieval.verification import QueryView, Verifier, grid_pixels
    from selavpr_ros.types import KeyframeRecord

    stretch = grid_pixels((2, 4), 400, 100, PreprocessConfig(height=28, width=56))
    assert stretch[:4].tolist() == [[50, 25], [150, 25], [250, 25], [350, 25]]
    crop = grid_pixels((2, 2), 400, 100, PreprocessConfig(height=28, width=28, resize="center_crop"))
    assert crop.tolist() == [[175, 25], [225, 25], [175, 75], [225, 75]]  # the centred 100 x 100 window

    extractor = TorchExtractor(build_model(tiny_config("selavpr", height=112, width=168)), device="cpu")
    image = skimage.data.coffee()
    desc = extractor.extract([image])
    cam = CameraModel.nominal(image.shape[1], image.shape[0])
    with MapDatabase.create(tmp_path / "map", extractor.layout, extractor.model_id) as db:
        db.add(desc, [KeyframeRecord(stamp_ns=1, camera=cam)])
        config = VerificationConfig(matcher="dense", min_inliers=20)
        verifier = Verifier(db, config, extractor.preprocess)
        pose = verifier.verify(QueryView(cam, None, desc.local_features[0]), [0])[0]
        assert pose.valid and pose.model == "rotation", pose.reason
        assert rotation_angle_deg(pose.rotation, np.eye(3)) < 1e-3 and pose.inliers == pose.matches
        skipped = verifier.verify(QueryView(cam, None, None), [0])[0]
        assert skipped.skipped and "no local features" in skipped.reason


def test_a_plane_seen_with_parallax_needs_depth():
    """Points on one wall seen from two places: a homography explains every match, the essential
    matrix's two motions fit equally, so without depth the stage refuses; with the wall's depth,
    PnP gives the true metric pose."""
    cam = CameraModel.nominal(640, 480, 90.0)
    rng = np.random.default_rng(1)
    wall = np.column_stack([rng.uniform(-4, 4, 80), rng.uniform(-2, 2, 80), np.full(80, 6.0)])  # match camera
    r_true = cv2.Rodrigues(np.array([0.02, 0.25, -0.01]))[0]
    t_true = np.array([-1.5, 0.1, -0.8])
    in_query = wall @ r_true.T + t_true
    query_px = cam.project(in_query[:, :2] / in_query[:, 2:3]) + rng.normal(0, 0.3, (80, 2))
    match_px = cam.project(wall[:, :2] / wall[:, 2:3]) + rng.normal(0, 0.3, (80, 2))
    flat = estimate_relative_pose(query_px, match_px, cam, cam, VerificationConfig())
    assert not flat.valid and "planar scene" in flat.reason and "ambiguous" in flat.reason
    metric = estimate_relative_pose(query_px, match_px, cam, cam, VerificationConfig(), wall[:, 2])
    assert metric.valid and metric.model == "pnp"
    assert rotation_angle_deg(metric.rotation, r_true) < 0.5 and np.linalg.norm(metric.translation - t_true) < 0.1
