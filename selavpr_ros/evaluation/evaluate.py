"""One evaluation: describe a dataset, search it stage by stage, measure, and write a report.

Recall@N after each retrieval stage (binary only, + float re-rank, + local
re-rank, + geometric verification) uses the same map database, retriever and
verifier the robot uses; each stage's top-1 claims also give a
precision-recall curve, its AUC and the recall at 100 % precision (see
:mod:`~selavpr_ros.evaluation.precision_recall`); latency is per query and
per stage; bytes per entry come from the map's storage; and extraction
throughput is images per second over the whole dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from selavpr_ros.datasets.base import EvalSet
from selavpr_ros.datasets.map_data import load_map_eval
from selavpr_ros.datasets.npy import load_npy
from selavpr_ros.datasets.sequence import IMAGE_SUFFIXES, load_sequence_eval
from selavpr_ros.datasets.utm import load_utm_eval
from selavpr_ros.errors import DatasetError
from selavpr_ros.evaluation.precision_recall import pr_curve
from selavpr_ros.evaluation.recall import recall_at
from selavpr_ros.geometry.estimation import RelativePose, VerificationConfig, pose_errors, relative_from_poses
from selavpr_ros.inference.base import Extractor
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.mapdb.records import StorageConfig
from selavpr_ros.retrieval.config import STAGE_ORDER, RetrievalConfig, Stage
from selavpr_ros.retrieval.retriever import Retriever
from selavpr_ros.retrieval.verification import QueryView, Verifier, grid_pixels
from selavpr_ros.types import CameraModel, Descriptors, KeyframeRecord

LAYOUTS = ("utm", "sequence", "precomputed", "map")


def pipeline_up_to(stage: Stage) -> list[Stage]:
    """The retrieval stages that end at ``stage``: binary -> [binary], float -> [binary, float], ..."""
    return list(STAGE_ORDER[: STAGE_ORDER.index(stage) + 1])
STAGE_NAMES = {"binary": "binary", "float": "+ float re-rank", "local": "+ local re-rank",
               "geometric": "+ geometric verification"}
# What each stage's confidence is, i.e. which node parameter its threshold sets.
THRESHOLD_PARAMS = {"binary": "loop_closure.min_score (1 - 2 hamming / bits)", "float": "loop_closure.min_score",
                    "local": "loop_closure.min_local_matches", "geometric": "loop_closure.geometry.min_inliers"}


def detect_layout(root: Path) -> str:
    """Which of the supported layouts ``root`` is; a DatasetError that lists them otherwise."""
    if (root / "map.sqlite").is_file():
        return "map"
    if list(root.glob("*_gt.npy")) and list(root.glob("*_dbImages.npy")):
        return "precomputed"
    for base in (root / "images", root):
        if not base.is_dir():
            continue
        for d in [base, *(p for p in base.iterdir() if p.is_dir())]:
            if (d / "database").is_dir() and (d / "queries").is_dir():
                return "utm"
    folders = [p for p in root.iterdir() if p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir())]
    if len(folders) >= 2:
        return "sequence"
    raise DatasetError(
        f"{root}: not a dataset layout this tool reads. Expected one of: images/<split>/database + queries with "
        "@utm_e@utm_n@ names (utm); two or more traversal folders with the same file names (sequence, e.g. "
        "summer/ winter/); <name>_dbImages.npy, <name>_qImages.npy, <name>_gt.npy (precomputed, GSV-Cities "
        "validation sets); a map built by build-map --save-images (map, with --query-map)")


def load_precomputed(root: Path, name: str | None = None) -> EvalSet:
    """GSV-Cities-style validation sets: image lists and ground truth stored as .npy files."""
    gts = sorted(root.glob(f"{name or '*'}_gt.npy"))
    if not gts:
        raise DatasetError(f"{root}: no {name or '*'}_gt.npy")
    stem = gts[0].name[: -len("_gt.npy")]
    db = load_npy(root / f"{stem}_dbImages.npy")  # no pickle: files from a download are untrusted
    q = load_npy(root / f"{stem}_qImages.npy")
    gt = load_npy(gts[0])
    if len(gt) != len(q):
        raise DatasetError(f"{gts[0]}: ground truth for {len(gt)} queries, {len(q)} query images listed")
    return EvalSet(stem, [root / str(p) for p in db], [root / str(p) for p in q],
                   [np.asarray(g, np.int64) for g in gt], "precomputed")


def parse_threshold(text: str | None) -> tuple[str, float] | None:
    """``25m`` -> ("m", 25.0); ``2frames`` -> ("frames", 2.0)."""
    if not text:
        return None
    t = text.strip().lower().replace(" ", "")
    for unit in ("frames", "frame", "m"):
        if t.endswith(unit):
            try:
                return ("frames" if unit.startswith("frame") else "m", float(t[: -len(unit)]))
            except ValueError:
                break
    raise DatasetError(f"threshold '{text}': write it as e.g. 25m or 2frames")


def _gt_cache_key(root: Path, layout: str, threshold, extra: dict) -> str:
    h = hashlib.sha256(json.dumps([str(root.resolve()), layout, threshold, extra], sort_keys=True).encode())
    for path in sorted(root.rglob("*"))[:200000]:
        if path.is_file() and path.suffix.lower() in (*IMAGE_SUFFIXES, ".npy", ".sqlite"):
            st = path.stat()
            h.update(f"{path.relative_to(root)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:24]


def load_eval_set(root: str | Path, layout: str = "auto", threshold: str | None = None, split: str = "test",
                  folders: tuple[str, str] = ("summer", "winter"), query_map: str | Path | None = None,
                  cache_dir: Path | None = None, span: tuple[float, float] | None = None) -> EvalSet:
    """An evaluation set from any supported layout; ground truth is cached on disk after the first time.

    ``span`` (sequence layout only): the part of the route evaluated, as fractions of its frames, e.g.
    the held-out test span (0.85, 1.0); queries and database both come from it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    layout = detect_layout(root) if layout == "auto" else layout
    thr = parse_threshold(threshold)
    if thr and ((layout == "sequence") != (thr[0] == "frames")) and layout != "precomputed":
        raise DatasetError(f"threshold {threshold} does not fit the {layout} layout "
                           f"({'frames' if layout == 'sequence' else 'metres'} expected)")
    if span is not None and layout != "sequence":
        raise DatasetError(f"a span (--range) applies to the sequence layout only; {root} is the {layout} layout")
    span = span or (0.0, 1.0)
    cache_dir = cache_dir or Path(os.environ.get("SELAVPR_CACHE", Path.home() / ".cache" / "selavpr_ros")) / "gt"
    key = _gt_cache_key(root, layout, thr, {"split": split, "folders": folders, "query_map": str(query_map),
                                            "span": list(span)})
    cached = cache_dir / f"{key}.json"
    if cached.is_file() and layout != "map":  # maps carry poses and cameras, and are cheap to read again
        data = json.loads(cached.read_text())
        return EvalSet(data["name"], [Path(p) for p in data["database"]], [Path(p) for p in data["queries"]],
                       [np.asarray(p, np.int64) for p in data["positives"]], data["threshold"])
    if layout == "utm":
        ev = load_utm_eval(root, split, thr[1] if thr else 25.0)
    elif layout == "sequence":
        ev = load_sequence_eval(root, folders[0], folders[1], span, tolerance=int(thr[1]) if thr else 2)
    elif layout == "precomputed":
        ev = load_precomputed(root)
    elif layout == "map":
        if query_map is None:
            raise DatasetError(f"{root} is a map: give the query map with --query-map")
        ev = load_map_eval(root, query_map, thr[1] if thr else 25.0)
    else:
        raise DatasetError(f"unknown layout '{layout}' (one of: auto, {', '.join(LAYOUTS)})")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps({"name": ev.name, "database": [str(p) for p in ev.database],
                               "queries": [str(p) for p in ev.queries],
                               "positives": [p.tolist() for p in ev.positives], "threshold": ev.threshold}))
    os.replace(tmp, cached)
    return ev


def check_input_size(ev: EvalSet, extractor: Extractor, max_upscale: float = 4.0) -> None:
    """Refuse datasets whose images are far smaller than the model's input (upscaling invents detail)."""
    with Image.open(ev.queries[0]) as im:
        w, h = im.size
    pre = extractor.preprocess
    scale = max(pre.height / h, pre.width / w)
    if scale > max_upscale:
        raise DatasetError(f"{ev.queries[0]} is {w}x{h} but the model reads {pre.width}x{pre.height} "
                           f"({scale:.1f}x upscaling); use a model with a smaller input (export-onnx --size) "
                           f"or images of at least {pre.width / max_upscale:.0f}x{pre.height / max_upscale:.0f}")


@dataclass
class EvalReport:
    dataset: str
    threshold: str
    model_id: str
    database_images: int
    queries: int
    queries_without_match: int
    recall: dict[str, dict[int, float]] = field(default_factory=dict)
    stage_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    bytes_per_entry: dict[str, int] = field(default_factory=dict)
    extraction_images_per_s: float = 0.0
    latency_vs_map_size: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    example_query: int = -1
    precision_recall: dict[str, dict[str, Any]] = field(default_factory=dict)
    geometry: dict[str, Any] = field(default_factory=dict)


def evaluate(extractor: Extractor, ev: EvalSet, stages: Sequence[Stage], ns: tuple[int, ...] = (1, 5, 10, 20),
             batch_size: int = 32, k: int = 100, local_k: int = 20, work_dir: Path | None = None,
             progress: bool = True, geometry: VerificationConfig | None = None, geometric_k: int = 5,
             hfov_deg: float = 60.0, retrieval: RetrievalConfig | None = None,
             describe: Callable[[list, int, bool], Descriptors] | None = None,
             storage: StorageConfig | None = None) -> tuple[EvalReport, dict[str, Any]]:
    """Recall, precision-recall, latency and size figures for ``stages`` (any of binary, float,
    local, geometric, reported in that order).

    ``geometric`` verifies the best ``geometric_k`` candidates of the last
    retrieval stage with ``geometry``; image folders carry no calibration, so
    each image gets an ideal pinhole of ``hfov_deg`` horizontal field of view.
    ``retrieval`` supplies the binary index settings (``index``, ``ivf_*``); ``describe(paths,
    batch_size, progress)`` replaces ``extractor.extract`` (e.g. on a Ray cluster). ``storage`` is how the
    database is stored (a map's ``StorageConfig``: pooled or int8 local features, fp32 floats).
    """
    if ev.queries_without_match == len(ev.queries):
        raise DatasetError(f"{ev.name}: no query has a ground-truth match within {ev.threshold}; check the "
                           "threshold or the database/query split")
    layout = extractor.layout
    verify = "geometric" in stages
    stages = [s for s in stages if s != "geometric"] or ["float"]
    if "local" in stages and layout.local_dim == 0:
        raise DatasetError(f"stage 'local' needs a model with local features; {extractor.model_id} has none")
    t0 = time.perf_counter()
    describe = describe or extractor.extract
    db_desc = describe(ev.database, batch_size, progress)
    q_desc = describe(ev.queries, batch_size, progress)
    ips = (len(ev.database) + len(ev.queries)) / (time.perf_counter() - t0)
    with _scratch_dir(work_dir) as work:
        db = MapDatabase.create(work / "map", layout, extractor.model_id, durable=False, storage=storage)
        try:
            report, rankings, extras_geometry = _evaluate_on(db, extractor, ev, stages, verify, ns, k, local_k,
                                                             geometry, geometric_k, hfov_deg, progress, q_desc,
                                                             db_desc, ips, retrieval or RetrievalConfig())
        finally:
            db.close()
    return report, {"rankings": rankings, "query_desc": q_desc, "db_desc": db_desc,
                    "geometry_claims": extras_geometry if verify else []}


@contextlib.contextmanager
def _scratch_dir(work_dir: Path | None):
    """Where the database descriptors are indexed: ``work_dir`` when given (kept), else a temporary
    folder in memory (``/dev/shm`` where it exists), removed whatever happens."""
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        yield Path(work_dir)
        return
    shm = Path("/dev/shm")
    parent = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="selavpr_eval_", dir=parent) as tmp:
        yield Path(tmp)


def _evaluate_on(db: MapDatabase, extractor: Extractor, ev: EvalSet, stages: list, verify: bool,
                 ns: tuple[int, ...], k: int, local_k: int, geometry: VerificationConfig | None, geometric_k: int,
                 hfov_deg: float, progress: bool, q_desc: Descriptors, db_desc: Descriptors, ips: float,
                 retrieval: RetrievalConfig):
    """The stages of :func:`evaluate` over the database descriptors in the scratch map ``db``."""
    layout = extractor.layout
    extras_geometry: list = []
    geo = geometry or VerificationConfig()
    db_views = _views(ev.database, geo, hfov_deg, progress, ev.database_cameras) if verify else None
    db.add(db_desc, [KeyframeRecord(stamp_ns=i, image_ref=str(p), camera=db_views[i].camera if db_views else None)
                     for i, p in enumerate(ev.database)], "database",
           keypoints=[v.keypoints for v in db_views] if db_views else None)
    report = EvalReport(ev.name, ev.threshold, extractor.model_id, len(ev.database), len(ev.queries),
                        ev.queries_without_match, extraction_images_per_s=ips,
                        bytes_per_entry=db.stats()["bytes_per_entry"])
    rankings: dict[str, np.ndarray] = {}
    for stage in stages:
        cfg = dataclasses.replace(retrieval, stages=pipeline_up_to(stage), k=min(k, len(ev.database)),
                                  local_k=local_k)
        retriever = Retriever(db, cfg)
        cands = retriever.search_batch(q_desc)
        width = max(ns)
        pred = np.full((len(cands), width), -1, np.int64)
        for i, c in enumerate(cands):
            pred[i, : min(width, len(c))] = c.rows[:width]
        rankings[stage] = pred
        report.recall[STAGE_NAMES[stage]] = recall_at(pred, ev.positives, ns)
        report.stage_ms[STAGE_NAMES[stage]] = {s: float(np.median([c.timings_ms.get(s, np.nan) for c in cands]))
                                               for s in pipeline_up_to(stage)}
        report.precision_recall[STAGE_NAMES[stage]] = _claims_pr(
            [_confidence(c, stage, layout.code_bits) for c in cands], pred[:, 0], ev.positives)
    if verify:
        pred, confidence, report.geometry, ms, claims = _verify_all(db, extractor, ev, q_desc, cands, geo, geometric_k,
                                                             hfov_deg, width, progress)
        rankings["geometric"] = pred
        extras_geometry = claims
        name = STAGE_NAMES["geometric"]
        report.recall[name] = recall_at(pred, ev.positives, ns)
        report.stage_ms[name] = {**report.stage_ms[STAGE_NAMES[stages[-1]]], "geometric": ms}
        report.precision_recall[name] = _claims_pr(confidence, pred[:, 0], ev.positives)
    report.latency_vs_map_size = _latency_vs_size(db, q_desc, stages, k)
    return report, rankings, extras_geometry


def _confidence(c, stage: str, code_bits: int) -> float:
    """The confidence of a retrieval stage's top-1 claim (what its loop-closure threshold compares)."""
    if not len(c):
        return float("nan")
    if stage == "local":
        return float(c.local_matches[0])
    if stage == "binary":
        return 1.0 - 2.0 * float(c.hamming[0]) / code_bits
    return float(c.similarity[0])


def _claims_pr(confidence: Sequence[float], claims: np.ndarray, positives: Sequence[np.ndarray]) -> dict[str, Any]:
    correct = np.array([int(r) in p for r, p in zip(claims, positives)], bool)
    has_match = np.array([len(p) > 0 for p in positives], bool)
    return pr_curve(np.asarray(confidence, np.float64), correct, has_match).to_dict()


def _views(paths: Sequence[Path], config: VerificationConfig, hfov_deg: float, progress: bool,
           cameras: Sequence[CameraModel | None] | None = None) -> list[QueryView]:
    """Camera (the dataset's, else a nominal pinhole) and keypoints of each image (the geometric stage's input)."""
    from tqdm import tqdm

    from selavpr_ros.geometry.features import detect
    from selavpr_ros.inference.preprocess import load_image

    views = []
    for i, path in enumerate(tqdm(paths, desc="keypoints", unit="img", disable=not progress)):
        rgb = load_image(path)
        camera = cameras[i] if cameras is not None and cameras[i] is not None else None
        camera = camera or CameraModel.nominal(rgb.shape[1], rgb.shape[0], hfov_deg)
        views.append(QueryView(camera, detect(rgb, config.keypoints)))
    return views


def _verify_all(db: MapDatabase, extractor: Extractor, ev: EvalSet, q_desc: Descriptors, cands: list,
                config: VerificationConfig, geometric_k: int, hfov_deg: float, width: int, progress: bool):
    """Verify each query's best ``geometric_k`` candidates; the verified one with most inliers is the claim.

    Returns the re-ranked predictions (verified by inliers first, then the
    rest in retrieval order), the claims' inlier counts (NaN: no verified
    candidate), a summary, the median verification time per query (ms) and
    each query's claim (map row and relative pose; None without one).
    """
    verifier = Verifier(db, config, extractor.preprocess)
    t0 = time.perf_counter()
    views = _views(ev.queries, config, hfov_deg, progress, ev.query_cameras)
    keypoint_ms = (time.perf_counter() - t0) * 1000 / max(len(views), 1)
    pred = np.full((len(cands), width), -1, np.int64)
    confidence = np.full(len(cands), np.nan)
    times: list[float] = []
    claims: list[tuple[int, RelativePose] | None] = []
    reasons: dict[str, int] = {}
    verified = 0
    for q, (c, view) in enumerate(zip(cands, views)):
        if q_desc.local_features is not None:
            view.local_features = q_desc.local_features[q]
        rows = [int(r) for r in c.rows[:geometric_k]]
        t = time.perf_counter()
        poses = verifier.verify(view, rows)
        times.append((time.perf_counter() - t) * 1000)
        inliers = np.array([p.inliers if p.valid else -1 for p in poses])
        order = np.lexsort((np.arange(len(rows)), -inliers))
        ranked = [rows[i] for i in order] + [int(r) for r in c.rows[geometric_k:]]
        pred[q, : min(width, len(ranked))] = ranked[:width]
        claims.append(None)
        if len(inliers) and inliers.max() >= 0:
            confidence[q] = float(inliers.max())
            verified += 1
            claims[-1] = (rows[int(order[0])], poses[int(order[0])])
        for p in poses:
            if not p.valid:
                key = p.reason.split(" ", 1)[1] if p.reason[:1].isdigit() else p.reason
                reasons[key[:60]] = reasons.get(key[:60], 0) + 1
    stats = db.stats()
    summary = {"matcher": config.matcher, "detector": config.keypoints.detector,
               "max_keypoints": config.keypoints.max_keypoints, "candidates_per_query": geometric_k,
               "min_inliers": config.min_inliers, "min_inlier_ratio": config.min_inlier_ratio,
               "hfov_deg": hfov_deg, "queries_with_a_verified_candidate": verified,
               "ms_per_query": float(np.median(times)) if times else 0.0,
               "ms_per_candidate": float(np.median(times)) / max(geometric_k, 1) if times else 0.0,
               "keypoint_ms_per_image": keypoint_ms,
               "keypoint_bytes_per_keyframe": stats["keypoint_bytes_per_keyframe"],
               "rejections": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:8]),
               "pose_errors": _pose_errors(ev, claims)}
    return pred, confidence, summary, summary["ms_per_query"], claims


def _pose_errors(ev: EvalSet, claims: list[tuple[int, RelativePose] | None]) -> dict[str, Any]:
    """Errors of the verified relative poses of correct claims against the dataset's camera poses."""
    if ev.query_poses is None or ev.database_poses is None:
        return {}
    found: dict[str, list[float]] = {"rotation_deg": [], "direction_deg": [], "translation_m": []}
    for q, claim in enumerate(claims):
        if claim is None or claim[0] not in ev.positives[q]:
            continue
        query, match = ev.query_poses[q], ev.database_poses[claim[0]]
        if query is None or match is None:
            continue
        rotation, translation = relative_from_poses(query, match, ev.pose_axes)
        for key, value in pose_errors(claim[1], rotation, translation).items():
            if value is not None:
                found[key].append(value)
    return {key: {"n": len(v), "median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
                  "max": float(np.max(v))} for key, v in found.items() if v}


def _latency_vs_size(db: MapDatabase, queries: Descriptors, stages: Sequence[Stage], k: int) -> list[dict[str, Any]]:
    """Per-query latency of each stage on growing prefixes of the map (a quarter, a half, all): each
    of up to 50 queries timed alone after one warm-up query; median with the 10th-90th percentiles."""
    rows = []
    n = db.count
    sample = min(len(queries), 50)
    for frac in (0.25, 0.5, 1.0):
        size = max(1, int(n * frac))
        allowed = np.zeros(n, bool)
        allowed[:size] = True
        for stage in stages:
            retriever = Retriever(db, RetrievalConfig(stages=pipeline_up_to(stage), k=min(k, size)))
            retriever.search(queries[0], allowed)  # warm-up: first-call allocations are not a query's cost
            times = []
            for q in range(sample):
                t = time.perf_counter()
                retriever.search(queries[q], allowed)
                times.append((time.perf_counter() - t) * 1000)
            p10, median, p90 = np.percentile(times, [10, 50, 90])
            rows.append({"map_size": size, "stage": STAGE_NAMES[stage], "ms": float(median),
                         "p10_ms": float(p10), "p90_ms": float(p90), "queries": sample})
    return rows


def write_report(report: EvalReport, extras: dict[str, Any], ev: EvalSet, out: Path, query: int | None = None
                 ) -> tuple[Path, Path]:
    """``report.json``, ``report.md`` and the figures in ``out``."""
    from selavpr_ros.evaluation.plots import (
        plot_latency_vs_map_size,
        plot_local_matches,
        plot_pr_curves,
        plot_recall_curves,
        plot_top_matches,
    )

    out.mkdir(parents=True, exist_ok=True)
    figs = report.figures
    figs["recall"] = str(plot_recall_curves(report.recall, out / "recall.png", report.dataset).name)
    figs["latency"] = str(plot_latency_vs_map_size(report.latency_vs_map_size, out / "latency.png").name)
    figs["pr"] = str(plot_pr_curves(report.precision_recall, out / "pr.png", report.dataset).name)
    last = list(extras["rankings"])[-1]
    pred = extras["rankings"][last]
    if query is None:  # a well-textured query the last stage gets right (not a tunnel or a blank frame)
        hits = [i for i, p in enumerate(ev.positives) if len(p) and pred[i, 0] in p][:200]
        hits = hits or [next(i for i, p in enumerate(ev.positives) if len(p))]
        query = max(hits, key=lambda i: np.asarray(Image.open(ev.queries[i]).convert("L"), np.float32).std())
    report.example_query = int(query)
    top = [int(r) for r in pred[query, :5] if r >= 0]
    figs["top5"] = str(plot_top_matches(ev.queries[query], [ev.database[r] for r in top],
                                        [r in ev.positives[query] for r in top], out / "top5.png",
                                        title=f"query {query}: {ev.queries[query].name}").name)
    q_local, d_local = extras["query_desc"].local_features, extras["db_desc"].local_features
    if q_local is not None and top:
        from selavpr_ros.retrieval.local_matching import mutual_nn_pairs

        qi, di = mutual_nn_pairs(q_local[query], d_local[top[0]])
        grid = q_local.shape[1:3]
        with Image.open(ev.queries[query]) as qa, Image.open(ev.database[top[0]]) as da:
            pa = grid_pixels(grid, qa.width, qa.height)[qi]
            pb = grid_pixels(grid, da.width, da.height)[di]
        figs["local_matches"] = str(plot_local_matches(ev.queries[query], ev.database[top[0]], pa, pb,
                                                       out / "local_matches.png").name)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(asdict(report), indent=1, default=float))
    md_path = out / "report.md"
    md_path.write_text(markdown(report))
    return json_path, md_path


def markdown(r: EvalReport) -> str:
    ns = sorted({n for v in r.recall.values() for n in v})
    lines = [f"# Evaluation: {r.dataset}", "",
             f"Model `{r.model_id}`; {r.database_images} database images, {r.queries} queries "
             f"({r.queries_without_match} without a true match, left out); correct within {r.threshold}.", "",
             "| stage | " + " | ".join(f"R@{n}" for n in ns) + " | ms / query |",
             "|---|" + "---|" * (len(ns) + 1)]
    for stage, rec in r.recall.items():
        ms = sum(v for v in r.stage_ms[stage].values() if np.isfinite(v))
        lines.append(f"| {stage} | " + " | ".join(f"{rec[n]:.1f}" for n in ns) + f" | {ms:.3f} |")
    lines += ["", "Loop-closure decisions (each query's top-1 claim, accepted above a threshold):", "",
              "| stage | AUC-PR | recall at 100 % precision | threshold for it | parameter |", "|---|---|---|---|---|"]
    for stage, pr in r.precision_recall.items():
        key = next(k for k, v in STAGE_NAMES.items() if v == stage)
        thr = pr["threshold_at_100_precision"]
        lines.append(f"| {stage} | {pr['auc_pr']:.3f} | {100 * pr['recall_at_100_precision']:.1f} % | "
                     f"{'-' if thr is None else f'{thr:.4g}'} | {THRESHOLD_PARAMS[key]} |")
    if r.geometry:
        g = r.geometry
        lines += ["", f"Geometric stage: {g['detector']} keypoints ({g['keypoint_bytes_per_keyframe']:.0f} B per "
                  f"keyframe, {g['keypoint_ms_per_image']:.1f} ms per image), {g['candidates_per_query']} candidates "
                  f"per query verified in {g['ms_per_query']:.1f} ms ({g['ms_per_candidate']:.1f} ms each); "
                  f"{g['queries_with_a_verified_candidate']} of {r.queries} queries have a verified candidate."]
        names = {"rotation_deg": "rotation error (deg)", "direction_deg": "translation direction error (deg)",
                 "translation_m": "translation error (m)"}
        for key, e in g.get("pose_errors", {}).items():
            lines.append(f"Correct verified closures ({e['n']}), {names[key]}: median {e['median']:.3g}, "
                         f"90 % {e['p90']:.3g}, max {e['max']:.3g}.")
    lines += ["", f"Extraction: {r.extraction_images_per_s:.1f} images/s. Bytes per map entry: "
              + ", ".join(f"{k} {v}" for k, v in r.bytes_per_entry.items())
              + f" (total {sum(r.bytes_per_entry.values())}).", ""]
    for key, title in (("recall", "Recall@N per stage"), ("pr", "Precision-recall of top-1 claims"),
                       ("latency", "Latency against map size"),
                       ("top5", f"Top 5 for query {r.example_query} (green: correct)"),
                       ("local_matches", "Mutual nearest neighbours, query vs best match")):
        if key in r.figures:
            lines += [f"## {title}", "", f"![{title}]({r.figures[key]})", ""]
    return "\n".join(lines)
