"""Offline work on a Ray cluster: maps from many bags, and image sets described for evaluation.

Maps: workers describe chunks of bags, the driver writes the map.

Why this split: the map has one writer (its lock, its crash-safe commits,
resume from the newest keyframe), and describing images is the expensive,
parallel part. Each chunk is a Ray task with its own thread budget (and a
GPU where the cluster has GPUs); a worker process keeps the model it loaded
for the next chunk. Tasks, not actors: a task lost with its node is retried
wherever the cluster has room, while a restarted actor may wait forever for
the resources of the node that died. The unit of work is a chunk of ``chunk_images`` image messages of one bag; a worker
passes the messages before its chunk through the keyframe gate only (decoded,
not described), so its decisions are those of one pass over the whole bag.
The driver commits the chunks' keyframe groups in bag and chunk order, the
very groups the serial executor commits (it flushes at the same chunk
boundaries): the map equals the serial one, row by row.

Results travel through Ray's object store, so only the bags (and a model
file other than the built-in one) must be readable by every node; the map
stays on the driver. A chunk that fails (an unreadable bag) stops that bag's
later chunks, names the bag, and leaves every other bag's work committed; a
rerun resumes each session after its newest keyframe, like the serial build.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from selavpr_ros.errors import ClusterError
from selavpr_ros.geometry.features import KeypointConfig, Keypoints
from selavpr_ros.inference.base import Extractor
from selavpr_ros.loop_closure.config import KeyframeGateConfig
from selavpr_ros.mapdb.records import StorageConfig
from selavpr_ros.offline.build_map import (
    DEFAULT_CHUNK_IMAGES,
    SessionReport,
    _Geometry,
    _MapSink,
    build_session,
    check_inputs,
    writing_map,
)
from selavpr_ros.types import Descriptors, KeyframeRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the job runs."""

    address: str | None = None  # None: a Ray instance on this machine; "auto": the running one; host:port
    workers: int = 0  # 0: the cluster's CPUs (or GPUs) divided by what each worker takes
    threads_per_worker: int = 1
    gpus_per_worker: float = -1.0  # -1: one GPU each when the cluster has GPUs, else none
    connect_timeout_s: float = 30.0


@dataclass(frozen=True)
class ChunkJob:
    """One chunk of one bag: everything a worker needs, nothing of the map but the resume point."""

    bag: str
    session: str
    chunk: int
    window: tuple[int, int | None]
    image_topic: str
    pose_topic: str | None
    base_frame: str | None
    map_frame: str | None
    gate: KeyframeGateConfig
    max_pose_gap_s: float
    commit_every: int
    camera_info: str | None
    keypoints: KeypointConfig | str | None
    depth_topic: str | None
    batch_size: int
    chunk_images: int
    newest: tuple[KeyframeRecord, Any] | None


@dataclass
class ChunkResult:
    groups: list[tuple[Descriptors, list[KeyframeRecord], list[Keypoints | None]]] = field(default_factory=list)
    report: SessionReport | None = None
    node: str = ""  # the Ray node that described it


def describe_chunk(extractor: Extractor, job: ChunkJob) -> ChunkResult:
    """A worker's work: the keyframe groups of one chunk (the serial build's code, another sink)."""
    result = ChunkResult()
    geometry = _Geometry(job.camera_info, job.keypoints, job.depth_topic)
    result.report = build_session(lambda d, r, k: result.groups.append((d, r, k)), Path(job.bag), job.session,
                                  job.image_topic, extractor, job.pose_topic, job.base_frame, job.map_frame, job.gate,
                                  job.max_pose_gap_s, job.commit_every, False, geometry, job.batch_size,
                                  newest=job.newest, chunk_images=job.chunk_images, window=job.window)
    return result


_MODELS: dict[tuple, Extractor] = {}  # per worker process: loaded once, reused by its later chunks


def _worker_model(checkpoint: str | None, device: str, threads: int, model_id: str) -> Extractor:
    """The model of this worker process (loaded on its first chunk), checked to be the driver's."""
    key = (checkpoint, device, threads)
    if key not in _MODELS:
        from selavpr_ros.inference.loader import open_extractor
        from selavpr_ros.models.zoo import resolve_checkpoint
        from selavpr_ros.threads import set_thread_budget

        set_thread_budget(threads)
        _MODELS[key] = open_extractor(resolve_checkpoint(checkpoint), device=device)
    extractor = _MODELS[key]
    if extractor.model_id != model_id:
        raise ClusterError(f"this node loaded model {extractor.model_id} from {checkpoint or 'the built-in model'}, "
                           f"the driver {model_id}: the checkpoint differs between nodes")
    return extractor


def _describe_task(checkpoint: str | None, device: str, threads: int, model_id: str, job: ChunkJob) -> ChunkResult:
    """The Ray task of a map build: describe one chunk of a bag."""
    import ray

    result = describe_chunk(_worker_model(checkpoint, device, threads, model_id), job)
    result.node = ray.get_runtime_context().get_node_id()
    return result


# Ray's connection timeouts, read once when ray is imported: a driver told an address fails within seconds
# when what answers there is not a Ray cluster (by default it retries for about a quarter of an hour).
_CONNECT_ENV = {"RAY_gcs_rpc_server_connect_timeout_s": "2", "RAY_py_gcs_connect_timeout_s": "5",
                "RAY_NUM_REDIS_GET_RETRIES": "2"}


def connect(options: RayOptions) -> Any:
    """``ray`` connected to the cluster; one clear error when it is not installed or does not answer."""
    import sys

    if options.address and "ray" not in sys.modules:
        for key, value in _CONNECT_ENV.items():
            os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise ClusterError('--executor ray needs Ray: pip install "selavpr_ros[ray]"') from None
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if options.address:
        _check_reachable(options.address, options.connect_timeout_s)
        kwargs["address"] = options.address
    try:
        ray.init(**kwargs)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError or its own types
        where = options.address or "a local Ray instance"
        detail = str(exc).strip().splitlines()
        raise ClusterError(f"cannot use the Ray cluster at {where}: "
                           f"{detail[0] if detail else type(exc).__name__}") from None
    return ray


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail within ``timeout_s`` when nothing answers at ``host:port`` (Ray itself may wait minutes)."""
    import socket

    if address in ("auto", "local") or address.startswith(("ray://", "anyscale://")):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not host:port (or 'auto')")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(f"no Ray cluster answers at {address}: {exc.strerror or exc}") from None


def plan_chunks(total: int, chunk_images: int, splittable: bool) -> list[tuple[int, int | None]]:
    """Message windows of a bag of ``total`` images: ``chunk_images`` each (one window when the gate
    reads appearance)."""
    if not splittable or total <= chunk_images:
        return [(0, None)]
    n = math.ceil(total / chunk_images)
    return [(i * chunk_images, (i + 1) * chunk_images if i < n - 1 else None) for i in range(n)]


def build_map_on_ray(
    bags: list[str | Path],
    image_topic: str,
    out: str | Path,
    extractor: Extractor,
    checkpoint: str | None,
    device: str = "auto",
    options: RayOptions | None = None,
    pose_topic: str | None = None,
    base_frame: str | None = None,
    map_frame: str | None = None,
    sessions: list[str] | None = None,
    gate: KeyframeGateConfig | None = None,
    storage: StorageConfig | None = None,
    max_pose_gap_s: float = 0.5,
    commit_every: int = 32,
    progress: bool = True,
    camera_info: str | None = "",
    keypoints: KeypointConfig | str | None = "auto",
    depth_topic: str | None = None,
    batch_size: int = 8,
    chunk_images: int = DEFAULT_CHUNK_IMAGES,
    on_chunk: Callable[[ChunkJob, ChunkResult], None] | None = None,
) -> tuple[list[SessionReport], dict[str, str]]:
    """:func:`~selavpr_ros.offline.build_map.build_map` on a Ray cluster; returns the per-bag reports
    and ``{bag: error}`` for bags that failed (their earlier chunks stay committed).
    ``on_chunk`` is called after each chunk is committed."""
    options = options or RayOptions()
    gate = gate or KeyframeGateConfig()
    names, counts = check_inputs(bags, image_topic, sessions, pose_topic, base_frame, map_frame, batch_size,
                                 chunk_images)
    ray = connect(options)  # before the map: an unreachable cluster leaves nothing behind
    task, workers = _task(ray, options, checkpoint, device, extractor.model_id)
    reports: dict[str, SessionReport] = {}
    failed: dict[str, str] = {}
    with writing_map(out, extractor, storage) as db:
        jobs = []
        for bag, name, total in zip(bags, names, counts):
            reports[str(bag)] = SessionReport(name, str(bag))
            newest = db.newest_keyframe(name)
            windows = plan_chunks(total, chunk_images, gate.max_similarity >= 1.0)
            jobs += [ChunkJob(str(bag), name, i, w, image_topic, pose_topic, base_frame, map_frame, gate,
                              max_pose_gap_s, commit_every, camera_info, keypoints, depth_topic, batch_size,
                              chunk_images, newest) for i, w in enumerate(windows)]
        bar = tqdm(total=sum(counts), desc="build-map (ray)", unit="img", disable=not progress)
        for job, outcome in _run_in_order(ray, task, workers, jobs):
            if job.bag in failed:
                continue
            if isinstance(outcome, BaseException):
                failed[job.bag] = f"chunk {job.chunk}: {_first_line(outcome)}"
                log.error("%s: %s", job.bag, failed[job.bag])
                continue
            sink = _MapSink(db, job.session)
            for desc, records, kps in outcome.groups:
                sink(desc, records, kps)
            _accumulate(reports[job.bag], outcome.report)
            bar.update(outcome.report.messages if outcome.report else 0)
            bar.set_postfix(keyframes=db.count)
            if on_chunk is not None:
                on_chunk(job, outcome)
        bar.close()
    return list(reports.values()), failed


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # RayTaskError wraps the worker's exception
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


def _accumulate(total: SessionReport, part: SessionReport | None) -> None:
    if part is None:
        return
    for f in fields(SessionReport):
        value = getattr(part, f.name)
        if isinstance(value, int):  # the counters
            setattr(total, f.name, getattr(total, f.name) + value)
    total.camera_problem = total.camera_problem or part.camera_problem
    total.errors += part.errors[: max(0, 10 - len(total.errors))]


def _images_task(checkpoint: str | None, device: str, threads: int, model_id: str, paths: list[str],
                 batch_size: int) -> Descriptors:
    """The Ray task of an evaluation: describe image files (read from storage every node sees)."""
    return _worker_model(checkpoint, device, threads, model_id).extract(paths, batch_size)


def describe_images_on_ray(paths: list[str | Path], extractor: Extractor, checkpoint: str | None,
                           device: str = "auto", batch_size: int = 32, options: RayOptions | None = None,
                           progress: bool = True, chunk_batches: int = 8) -> Descriptors:
    """``extractor.extract(paths, batch_size)``, spread over a Ray cluster in chunks of whole batches.

    The chunks hold ``chunk_batches`` batches each, so every batch is the one the serial run describes:
    the result is the same, bit for bit on alike nodes.
    """
    options = options or RayOptions()
    ray = connect(options)
    task, workers = _task(ray, options, checkpoint, device, extractor.model_id, _images_task)
    size = batch_size * chunk_batches
    chunks = [[str(p) for p in paths[i : i + size]] for i in range(0, len(paths), size)]
    parts = []
    bar = tqdm(total=len(paths), desc="describing (ray)", unit="img", disable=not progress)
    for chunk, outcome in _run_in_order(ray, lambda c: task(c, batch_size), workers, chunks):
        if isinstance(outcome, BaseException):
            raise ClusterError(f"describing {chunk[0]} and the {len(chunk) - 1} images after it failed: "
                               f"{_first_line(outcome)}")
        parts.append(outcome)
        bar.update(len(chunk))
    bar.close()
    return Descriptors.concat(parts) if parts else Descriptors.empty(extractor.layout)


def _task(ray: Any, options: RayOptions, checkpoint: str | None, device: str, model_id: str,
          body: Callable[..., Any] = _describe_task) -> tuple[Callable[..., Any], int]:
    """``body`` as a Ray task with its resources (a call takes the job's arguments), and how many run at once."""
    resources = ray.cluster_resources()
    gpus = options.gpus_per_worker if options.gpus_per_worker >= 0 else (1.0 if resources.get("GPU") else 0.0)
    threads = max(1, options.threads_per_worker)
    if options.workers:
        workers = options.workers
    elif gpus:
        workers = max(1, int(resources.get("GPU", 0) / gpus))
    else:
        workers = max(1, int(resources.get("CPU", 1) // threads))
    remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=5, scheduling_strategy="SPREAD")(body)

    def task(*job: Any) -> Any:
        return remote.remote(checkpoint, device, threads, model_id, *job)

    return task, workers


def _run_in_order(ray: Any, task: Callable[[Any], Any], workers: int, jobs: list):
    """Yield ``(job, result or exception)`` in job order, with two chunks per worker in flight."""
    queue = deque(jobs)
    futures: deque = deque()
    while queue or futures:
        while queue and len(futures) < 2 * workers:
            job = queue.popleft()
            futures.append((job, task(job)))
        job, ref = futures.popleft()
        try:
            outcome: Any = ray.get(ref)
        except Exception as exc:  # the worker's error, wrapped by Ray; other bags go on
            outcome = exc
        yield job, outcome
