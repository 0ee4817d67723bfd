"""``selavpr-ros eval``: Recall@N after each retrieval stage, latency, memory, and a report with pictures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selavpr_ros.cli import add_storage_arguments, storage_from_args
from selavpr_ros.errors import ConfigError
from selavpr_ros.inference.base import DEVICES

DESCRIPTION = """\
Evaluate a model on a VPR dataset: Recall@1/5/10/20 after each retrieval stage
(binary codes only, + float re-rank, + local re-rank for SelaVPR models),
per-stage latency, bytes per map entry and extraction throughput. Writes
report.json, report.md and PNG figures to --out.

Layouts (detected): images/<split>/{database,queries} with @utm_e@utm_n@
names (threshold in metres, default 25m); traversal folders with the same file
names, e.g. summer/ winter/ (threshold in frames, default 2frames: positions
in the sorted names, so on a folder holding every 4th frame of a route +-2 is
+-8 of the route; --range picks a span of the route, e.g. a test span);
<name>_{dbImages,qImages,gt}.npy (precomputed, GSV-Cities validation sets); a
map built by `build-map --save-images --pose-topic` with --query-map
(metres). Ground truth is cached in ~/.cache/selavpr_ros/gt.
"""


def parse_range(text: str) -> tuple[float, float]:
    """``0.85:1.0`` -> (0.85, 1.0): a part of a sequence, as fractions of its frames."""
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise ConfigError(f"--range takes START:STOP as fractions of the route, e.g. 0.85:1.0, got {text!r}") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ConfigError(f"--range {text}: need 0 <= START < STOP <= 1")
    return lo, hi


def cmd_eval(args: argparse.Namespace) -> int:
    from selavpr_ros.evaluation.evaluate import check_input_size, evaluate, load_eval_set, write_report
    from selavpr_ros.geometry.estimation import VerificationConfig
    from selavpr_ros.geometry.features import KeypointConfig
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.models.zoo import resolve_checkpoint
    from selavpr_ros.retrieval.config import parse_stages

    stages = parse_stages(args.stages, "--stages", pipeline=False)
    folders = tuple(args.folders.split(","))
    if len(folders) != 2:
        raise ConfigError("--folders takes DATABASE,QUERIES (two folder names)")
    ev = load_eval_set(args.dataset, args.layout, args.threshold, args.split, folders, args.query_map,
                       span=parse_range(args.range) if args.range else None)
    if args.max_queries:
        import numpy as np

        keep = np.linspace(0, len(ev.queries) - 1, min(args.max_queries, len(ev.queries))).round().astype(int)
        ev.queries = [ev.queries[i] for i in keep]
        ev.positives = [ev.positives[i] for i in keep]
    extractor = open_extractor(resolve_checkpoint(args.checkpoint), device=args.device)
    check_input_size(ev, extractor)
    geometry = VerificationConfig(matcher=args.matcher, min_inliers=args.min_inliers,
                                  min_inlier_ratio=args.min_inlier_ratio,
                                  keypoints=KeypointConfig(detector=args.detector, max_keypoints=args.max_keypoints))
    from selavpr_ros.retrieval.config import RetrievalConfig

    retrieval = RetrievalConfig(index=args.index, ivf_nprobe=args.ivf_nprobe)
    describe = None
    if args.executor == "ray":
        from selavpr_ros.offline.ray_executor import RayOptions, describe_images_on_ray

        options = RayOptions(address=args.address, workers=args.workers, threads_per_worker=args.worker_threads)

        def describe(paths, batch_size, progress):
            return describe_images_on_ray(paths, extractor, args.checkpoint, args.device, batch_size, options,
                                          progress)

    report, extras = evaluate(extractor, ev, stages, batch_size=args.batch_size, k=args.k, local_k=args.local_k,
                              progress=not args.quiet, geometry=geometry, geometric_k=args.geometric_k,
                              hfov_deg=args.hfov, retrieval=retrieval, describe=describe,
                              storage=storage_from_args(args))
    json_path, md_path = write_report(report, extras, ev, Path(args.out), args.query)
    print(md_path.read_text().split("\n## ")[0])
    if args.target_precision is not None:
        print_thresholds(report, args.target_precision)
    print(json.dumps({"report": str(md_path), "json": str(json_path)}))
    return 0


def print_thresholds(report, target: float) -> None:
    """The node parameter values that reach ``target`` precision on this data, per stage."""
    import numpy as np

    from selavpr_ros.evaluation.evaluate import STAGE_NAMES, THRESHOLD_PARAMS
    from selavpr_ros.evaluation.precision_recall import PRCurve

    print(f"\nthresholds for precision >= {100 * target:.1f} % on {report.dataset}:")
    for stage, pr in report.precision_recall.items():
        key = next(k for k, v in STAGE_NAMES.items() if v == stage)
        curve = PRCurve(np.asarray(pr["thresholds"]), np.asarray(pr["precision"]), np.asarray(pr["recall"]),
                        pr["positives"])
        found = curve.threshold_for_precision(target)
        param = THRESHOLD_PARAMS[key].split(" ")[0]
        if found is None:
            print(f"  {stage:28s} no threshold reaches it")
        else:
            thr, precision, recall = found
            value = int(np.ceil(thr)) if key in ("local", "geometric") else round(thr + 5e-5, 4)
            print(f"  {stage:28s} {param}:={value}  (precision {100 * precision:.1f} %, recall {100 * recall:.1f} %)")


def register(sub: argparse._SubParsersAction) -> None:
    from selavpr_ros.cli import HelpFormatter

    p = sub.add_parser("eval", help="recall, latency and memory on a VPR dataset, with a report",
                       description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset folder (see the layouts above)")
    p.add_argument("--checkpoint", help="model (.ckpt or .onnx); default: the built-in demo model")
    p.add_argument("--stages", default="binary,float", help="stages to report: binary,float[,local][,geometric]")
    p.add_argument("--target-precision", type=float, metavar="P",
                   help="print, per stage, the node threshold that reaches precision P (e.g. 1.0) on this data")
    g = p.add_argument_group("geometric stage (--stages ...,geometric)")
    g.add_argument("--hfov", type=float, default=60.0,
                   help="horizontal field of view (deg) of the nominal pinhole given to uncalibrated images")
    g.add_argument("--geometric-k", type=int, default=5, help="candidates verified per query")
    g.add_argument("--matcher", default="keypoints", choices=("keypoints", "dense"))
    g.add_argument("--detector", default="orb", choices=("orb", "sift"))
    g.add_argument("--max-keypoints", type=int, default=1000)
    g.add_argument("--min-inliers", type=int, default=30, help="inliers of a verified candidate")
    g.add_argument("--min-inlier-ratio", type=float, default=0.3, help="inliers / putative matches")
    p.add_argument("--threshold", help="correct-match threshold, e.g. 25m or 2frames (layout default)")
    p.add_argument("--layout", default="auto", choices=("auto", "utm", "sequence", "precomputed", "map"))
    p.add_argument("--split", default="test", help="utm layout: images/<split>/")
    p.add_argument("--folders", default="summer,winter", help="sequence layout: DATABASE,QUERIES folders")
    p.add_argument("--range", metavar="START:STOP", help="sequence layout: evaluate this part of the route only, "
                   "as fractions of its frames (e.g. 0.85:1.0, a held-out test span); default the whole route")
    p.add_argument("--query-map", help="map layout: the query map")
    p.add_argument("--out", default="eval_report", help="report folder")
    p.add_argument("--k", type=int, default=100, help="candidates from the binary stage")
    p.add_argument("--local-k", type=int, default=20, help="candidates re-ranked with local features")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-queries", type=int, default=0, help="evaluate an evenly spaced subset of queries")
    p.add_argument("--query", type=int, help="query index for the top-5 figure (default: the first found)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--index", default="flat", choices=("flat", "ivf"),
                   help="binary stage: exhaustive, or the IVF of huge maps (its recall cost shows in the report)")
    p.add_argument("--ivf-nprobe", type=int, default=0, help="IVF lists scanned per query (0: a quarter of them)")
    g = p.add_argument_group("map storage (as build-map would store the database; the report shows what "
                             "pooled or int8 local features cost in recall)")
    add_storage_arguments(g)
    g = p.add_argument_group("distributed (--executor ray; pip install 'selavpr_ros[ray]')")
    g.add_argument("--executor", default="serial", choices=("serial", "ray"),
                   help="ray: describe database and queries on a Ray cluster (images on storage every node "
                        "reads); same descriptors, same recall")
    g.add_argument("--address", help="Ray cluster head host:port, or 'auto' (default: start Ray here)")
    g.add_argument("--workers", type=int, default=0, help="workers (0: the cluster's CPUs / --worker-threads)")
    g.add_argument("--worker-threads", type=int, default=1, help="CPU threads per worker")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)
