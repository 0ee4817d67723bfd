"""Loop-closure decisions with and without the geometric stage, on every dataset with geometry here.

For each dataset, every query's top-1 claim is accepted above a threshold
(score for retrieval, inlier count for the geometric stage); the table gives
AUC-PR and recall at 100 % precision per stage, the cost of verification per
candidate and the bytes of keypoints it adds per keyframe:

- Nordland demo (bundled, 200 winter queries against 200 summer frames,
  64 x 32 px, correct within +-2 frames) and, when ``../shared`` has it, the
  full Nordland 64 x 32 set (3576 / 3576);
- rotated views: tiles of real photographs against views of a turned camera
  (exact known rotation, exposure and colour change), plus views of unmapped
  photographs that have no true match; also the rotation error of every
  accepted closure;
- the Middlebury "Motorcycle" stereo pair with its calibration: translation
  direction and rotation error (essential matrix), metric translation error
  with the disparity-derived depth (PnP), and the time of each.

All with the built-in demo model, ORB (default) and SIFT keypoints, 5
candidates verified per query. Writes benchmarks/results/verification.json.

    python benchmarks/verification.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ROOT, save, table

from selavpr_ros.datasets.rotated_views import write_rotated_views
from selavpr_ros.evaluation.evaluate import STAGE_NAMES, evaluate, load_eval_set
from selavpr_ros.geometry.estimation import VerificationConfig, rotation_angle_deg
from selavpr_ros.geometry.features import KeypointConfig
from selavpr_ros.inference.loader import open_extractor
from selavpr_ros.models.zoo import builtin_checkpoint

STAGES = ["binary", "float", "geometric"]
SHARED_NORDLAND = ROOT.parent / "shared" / "data" / "nordland64"


def rows_of(name: str, report, detector: str) -> list[dict]:
    rows = []
    for stage in STAGES:
        pr = report.precision_recall[STAGE_NAMES[stage]]
        rows.append({"dataset": name, "detector": detector if stage == "geometric" else "",
                     "stage": STAGE_NAMES[stage], "auc_pr": pr["auc_pr"],
                     "recall_at_100p": 100 * pr["recall_at_100_precision"],
                     "threshold_at_100p": pr["threshold_at_100_precision"],
                     "R@1": report.recall[STAGE_NAMES[stage]][1],
                     "ms_per_candidate": report.geometry["ms_per_candidate"] if stage == "geometric" else None,
                     "keypoint_bytes": report.geometry["keypoint_bytes_per_keyframe"] if stage == "geometric" else None,
                     "keypoint_ms": report.geometry["keypoint_ms_per_image"] if stage == "geometric" else None,
                     "queries": report.queries, "without_match": report.queries_without_match,
                     "database": report.database_images})
    return rows


def run_eval(extractor, ev, detector: str, work: Path):
    config = VerificationConfig(keypoints=KeypointConfig(detector=detector))
    return evaluate(extractor, ev, STAGES, progress=False, geometry=config, geometric_k=5, work_dir=work)


def stereo() -> dict:
    import skimage.data

    from selavpr_ros.geometry.camera import CameraModel
    from selavpr_ros.geometry.estimation import estimate_relative_pose
    from selavpr_ros.geometry.features import detect, match

    focal, cx, cy, doffs, baseline = 994.978, 311.193, 254.877, 31.086, 0.193001
    left, right, disparity = skimage.data.stereo_motorcycle()
    cam_l, cam_r = CameraModel(741, 500, (focal, focal, cx, cy)), CameraModel(741, 500, (focal, focal, cx + doffs, cy))
    depth = baseline * focal / (disparity + doffs)
    out = {}
    for detector in ("orb", "sift"):
        cfg = KeypointConfig(detector=detector)
        kl, kr = detect(left, cfg, depth), detect(right, cfg)
        m = match(kr, kl)
        for model, d in (("essential", None), ("pnp", kl.depth[m[:, 1]])):
            times = []
            for _ in range(5):
                t = time.perf_counter()
                pose = estimate_relative_pose(kr.xy[m[:, 0]], kl.xy[m[:, 1]], cam_r, cam_l, VerificationConfig(), d)
                times.append((time.perf_counter() - t) * 1000)
            row = {"valid": pose.valid, "inliers": pose.inliers, "matches": pose.matches,
                   "rotation_error_deg": rotation_angle_deg(pose.rotation, np.eye(3)),
                   "estimate_ms": float(np.median(times)),
                   "sigma_rot_deg": np.degrees(np.sqrt(np.diag(pose.covariance)[3:])).tolist()}
            if model == "pnp":
                row["translation_error_mm"] = 1000 * float(np.linalg.norm(pose.translation - [-baseline, 0, 0]))
                row["sigma_t_mm"] = (1000 * np.sqrt(np.diag(pose.covariance)[:3])).tolist()
            else:
                row["direction_error_deg"] = float(np.degrees(np.arccos(min(1.0, abs(pose.translation[0])))))
            out[f"{detector}_{model}"] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-shared", action="store_true", help="skip the full Nordland set even when present")
    args = p.parse_args()
    extractor = open_extractor(builtin_checkpoint(), device="cpu")
    rows: list[dict] = []
    rotation_errors = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sets = [("nordland demo", load_eval_set(ROOT / "selavpr_ros" / "data" / "nordland_demo",
                                                cache_dir=tmp_path / "gt"))]
        if SHARED_NORDLAND.is_dir() and not args.no_shared:
            sets.append(("nordland 64x32 (shared)", load_eval_set(SHARED_NORDLAND, cache_dir=tmp_path / "gt")))
        views = write_rotated_views(tmp_path / "views")
        for name, ev in sets:
            report, _ = run_eval(extractor, ev, "orb", tmp_path / name.replace(" ", "_"))
            rows += rows_of(name, report, "orb")
            print(table(rows[-3:], COLUMNS), flush=True)
        for detector in ("orb", "sift"):
            report, extras = run_eval(extractor, views.eval_set, detector, tmp_path / f"views_{detector}")
            new = rows_of("rotated views", report, detector)
            rows += new if detector == "orb" else new[2:]  # the retrieval stages do not depend on keypoints
            false = sum(1 for q, claim in enumerate(extras["geometry_claims"])
                        if claim is not None and claim[0] not in views.eval_set.positives[q])
            errors = report.geometry["pose_errors"]["rotation_deg"]
            rotation_errors[detector] = {"accepted_correct": errors["n"], "accepted_false": false,
                                         "median_deg": errors["median"], "max_deg": errors["max"]}
            print(table(rows[-3:], COLUMNS), rotation_errors[detector], flush=True)
    result = {"rows": rows, "rotated_views_rotation_error": rotation_errors, "stereo": stereo(),
              "model": extractor.model_id, "candidates_per_query": 5,
              "defaults": {"min_inliers": 30, "min_inlier_ratio": 0.3, "ransac_threshold_px": 2.0,
                           "max_keypoints": 1000}}
    print(result["stereo"])
    print(f"saved {save('verification', result)}")


COLUMNS = [("dataset", "data", ""), ("stage", "stage", ""), ("detector", "keypoints", ""),
           ("auc_pr", "AUC-PR", ".3f"), ("recall_at_100p", "recall @ 100 % precision", ".1f"),
           ("R@1", "R@1", ".1f"), ("ms_per_candidate", "ms / candidate", ".1f"),
           ("keypoint_bytes", "keypoint B / keyframe", ",.0f")]

if __name__ == "__main__":
    main()
