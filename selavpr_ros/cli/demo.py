"""``selavpr-ros demo``: the whole robot workflow on bundled real images, in a minute.

1. writes two real rosbag2 files from the bundled Nordland frames: the summer
   run (sqlite3 storage) and the winter run of the same track (mcap storage),
   each with a CameraInfo beside the images (nominal intrinsics: 60 deg
   horizontal field of view; the footage comes without calibration);
2. builds a map from the summer bag (``build-map``, keypoints stored);
3. replays the winter bag against it (``replay``): every winter frame is a
   query, as a robot relocalising after a season change; once with
   retrieval alone and once with the geometric stage;
4. prints the loop closures, precision and recall of the accepted ones with
   and without geometric verification, Recall@N of the top candidates and
   the latency of every stage.
"""

from __future__ import annotations

import argparse
import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from selavpr_ros.errors import ConfigError
from selavpr_ros.inference.base import DEVICES

MARKER = ".selavpr_demo"
T0_SUMMER = 1_690_000_000 * 10**9
T0_WINTER = 1_705_000_000 * 10**9
PERIOD_NS = 100_000_000  # 10 Hz
TOLERANCE = 2  # frames, as the Nordland benchmark counts a match
HFOV_DEG = 60.0  # nominal field of view of the demo camera (the Nordland footage has no calibration)


def demo_images() -> dict[str, list[Path]]:
    root = Path(str(resources.files("selavpr_ros") / "data" / "nordland_demo"))
    seasons = {s: sorted((root / s).glob("*.png")) for s in ("summer", "winter")}
    if not seasons["summer"] or [p.name for p in seasons["summer"]] != [p.name for p in seasons["winter"]]:
        raise ConfigError(f"bundled demo images missing or unpaired in {root}")
    return seasons


def write_demo_bags(out: Path) -> tuple[Path, Path]:
    from selavpr_ros.bags.writer import write_image_bag
    from selavpr_ros.geometry.camera import CameraModel
    from selavpr_ros.inference.preprocess import load_image

    seasons = demo_images()
    bags = []
    for season, t0, storage in (("summer", T0_SUMMER, "sqlite3"), ("winter", T0_WINTER, "mcap")):
        images = [load_image(p) for p in seasons[season]]
        stamps = [t0 + i * PERIOD_NS for i in range(len(images))]
        camera = CameraModel.nominal(images[0].shape[1], images[0].shape[0], HFOV_DEG)
        bags.append(write_image_bag(out / f"nordland_{season}", images, stamps, topic="/camera/image_raw",
                                    storage=storage, frame_id="camera_front", camera=camera))
    return bags[0], bags[1]


def run_demo(out: Path, checkpoint: str | None, device: str, quiet: bool = False, min_score: float = 0.55) -> dict:
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.loop_closure.config import KeyframeGateConfig
    from selavpr_ros.models.zoo import resolve_checkpoint
    from selavpr_ros.node.params import validate
    from selavpr_ros.node.pipeline import VPRPipeline
    from selavpr_ros.offline.build_map import build_map
    from selavpr_ros.offline.replay import ReplayWriter, replay

    if out.exists() and not (out / MARKER).is_file():
        raise ConfigError(f"{out} exists and is not a demo folder; choose another --out")
    extractor = open_extractor(resolve_checkpoint(checkpoint), device=device)  # before anything is removed
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).touch()
    summer_bag, winter_bag = write_demo_bags(out)
    build_map([summer_bag], "/camera/image_raw", out / "map", extractor, sessions=["summer"],
              gate=KeyframeGateConfig(min_interval_s=0.0), progress=not quiet)
    # The small demo model's scores are low and its errors repeat (one generic frame attracts many
    # queries), so temporal consistency does not help it: accept single strong matches instead.
    summaries = {}
    for stages in ("binary,float", "binary,float,geometric"):
        params = validate({"map_path": str(out / "map"), "mode": "localization", "device": device,
                           "checkpoint": checkpoint or "", "loop_closure.top_n": 5, "loop_closure.retrieval.k": 20,
                           "loop_closure.keyframe.min_interval_s": 0.0, "loop_closure.consistency.n": 1,
                           "loop_closure.min_score": min_score, "loop_closure.retrieval.stages": stages})
        pipeline = VPRPipeline(params, extractor=extractor)
        try:
            if "geometric" in stages:
                with ReplayWriter(pipeline, out / "candidates.json", out / "candidates.csv",
                                  out / "candidates_bag") as writer:
                    result = replay(winter_bag, "/camera/image_raw", pipeline, progress=not quiet, sinks=[writer])
            else:
                result = replay(winter_bag, "/camera/image_raw", pipeline, progress=not quiet)
        finally:
            pipeline.close()
        summaries[stages] = summarize(result, out, extractor.model_id)
    s = summaries["binary,float,geometric"]
    s["without_geometry"] = {k: summaries["binary,float"][k]
                             for k in ("accepted", "precision", "closure_recall", "closures")}
    from selavpr_ros.geometry.features import KeypointConfig
    from selavpr_ros.mapdb.database import MapDatabase

    with MapDatabase.open(out / "map") as db:
        stats, camera = db.stats(), db.records([0])[0].camera
    s["keypoints_per_frame"] = stats["keypoint_bytes_per_keyframe"] / KeypointConfig().bytes_per_keypoint()
    s["image_size"] = f"{camera.width}x{camera.height}" if camera is not None else "demo"
    return s


def summarize(result, out: Path, model_id: str) -> dict:
    ranks = []
    accepted = correct_accepted = 0
    closures = []
    for o in result.queries:
        q = (o.result.stamp_ns - T0_WINTER) // PERIOD_NS
        frames = [(c.match_stamp_ns - T0_SUMMER) // PERIOD_NS for c in o.result.candidates]
        hits = [i for i, f in enumerate(frames) if abs(f - q) <= TOLERANCE]
        ranks.append(hits[0] if hits else 99)
        for c, f in zip(o.result.candidates, frames):
            if c.status.name == "ACCEPTED" and c.rank == 1:  # the loop closure a back-end would take
                accepted += 1
                correct_accepted += abs(f - q) <= TOLERANCE
                closures.append((int(q), int(f), c.score, abs(f - q) <= TOLERANCE))
    rank_arr = np.asarray(ranks)
    recall = {n: float(100 * np.mean(rank_arr < n)) for n in (1, 5)}
    return {"queries": len(rank_arr), "recall": recall, "accepted": accepted,
            "precision": 100.0 * correct_accepted / accepted if accepted else float("nan"),
            "closure_recall": 100.0 * correct_accepted / len(rank_arr) if len(rank_arr) else float("nan"),
            "closures": closures, "stage_ms": result.stage_ms(), "bad_frames": result.bad_frames,
            "out": str(out), "model": model_id}


def _pct(value: float) -> str:
    return "-" if value != value else f"{value:.1f} %"  # NaN: nothing accepted


def print_summary(s: dict) -> None:
    print(f"\nmodel {s['model']}; map: 200 summer keyframes; queries: {s['queries']} winter frames")
    w = s["without_geometry"]
    print("\nloop closures of retrieval alone (first 10):  winter frame -> summer keyframe  score")
    for q, f, score, ok in w["closures"][:10]:
        print(f"  {q:4d} -> {f:4d}  {score:.3f}  {'correct' if ok else 'WRONG'}")
    print(f"  retrieval alone:       {w['accepted']:3d} accepted, precision {_pct(w['precision'])}, recall "
          f"{w['closure_recall']:.1f} % of the queries (correct within +-{TOLERANCE} frames)")
    print(f"  + geometric stage:     {s['accepted']:3d} accepted, precision {_pct(s['precision'])}, recall "
          f"{s['closure_recall']:.1f} %")
    if not s["accepted"]:
        print(f"  (these {s['image_size']} frames hold ~{s['keypoints_per_frame']:.0f} keypoints each, too few to "
              "verify; the stage refuses rather than accept an unverified loop - see README, Geometric verification)")
    print(f"\nRecall@1 {s['recall'][1]:.1f} %   Recall@5 {s['recall'][5]:.1f} %   (top candidates, any status)")
    print("\nlatency per frame (median, ms):")
    for key, ms in s["stage_ms"].items():
        print(f"  {key:24s} {ms:8.2f}")
    print(f"\noutputs in {s['out']}: nordland_summer/ nordland_winter/ (bags), map/, candidates.json, "
          "candidates.csv, candidates_bag/")


def cmd_demo(args: argparse.Namespace) -> int:
    s = run_demo(Path(args.out), args.checkpoint, args.device, args.quiet, args.min_score)
    print_summary(s)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from selavpr_ros.cli import HelpFormatter

    p = sub.add_parser("demo", help="map a summer bag, relocalise a winter bag: the workflow on bundled images",
                       description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", default="selavpr_demo", help="working folder (replaced on each run)")
    p.add_argument("--checkpoint", help="model (.ckpt or .onnx); default: the built-in demo model")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--min-score", type=float, default=0.55, help="accept matches with at least this cosine")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
