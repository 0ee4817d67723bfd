"""Latency on a shared robot CPU: idle, and next to a competing load, with wide and bounded threads.

A robot's computer also runs SLAM, drivers and planners. Each workload runs in a fresh process (thread
pools are per process), with every pool as wide as the machine (what the libraries do by default) and
with the node's default budget (``threads: 0``: half the cores, at least one; and ``threads: 1`` where
that differs), once on an idle machine and once next to a competing load (one busy process per core,
started before and stopped after). Medians of repeated runs after warm-up, side by side in one run; the
slowdown is loaded / idle.

Workloads: the node's per-frame work (decode, describe with the built-in model, search a 200-keyframe
map, judge), a binary top-100 search in a 200-entry and a 100,000-entry map, and a ViT-S/14 frame at
224 x 224 through PyTorch (random weights: compute does not depend on values).

    python benchmarks/cpu_share.py           # about 4 minutes on 2 cores
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

from _common import ROOT, save, table

WORKER = r"""
import json, sys, time, statistics
import numpy as np
from selavpr_ros.threads import node_threads, set_thread_budget
set_thread_budget(node_threads(int(sys.argv[1])))  # as the node does at start-up (0: its default)

def median_ms(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)

out = {}
# the node's per-frame work on the built-in model against a 200-keyframe map
import tempfile
from pathlib import Path
from PIL import Image
from selavpr_ros.inference.loader import open_extractor
from selavpr_ros.models.zoo import builtin_checkpoint
from selavpr_ros.node.params import validate
from selavpr_ros.node.pipeline import Frame, VPRPipeline
from selavpr_ros.transport.image_decoding import encode_image
from selavpr_ros.transport.msgtypes import message
demo = Path(__import__("selavpr_ros").__file__).parent / "data" / "nordland_demo"
summer = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((demo / "summer").glob("*.png"))]
winter = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((demo / "winter").glob("*.png"))]
ex = open_extractor(builtin_checkpoint(), device="cpu")
with tempfile.TemporaryDirectory() as tmp:
    p = VPRPipeline(validate({"map_path": tmp + "/map", "device": "cpu", "loop_closure.keyframe.min_interval_s": 0.0,
                              "loop_closure.exclusion.recent_s": 0.0}), extractor=ex)
    for i, rgb in enumerate(summer):
        p.process(Frame(message("sensor_msgs/msg/Image", **encode_image(rgb)), i * 10**9, "cam"))
    state = {"i": 0}
    def frame():
        i = state["i"] = state["i"] + 1
        rgb = winter[i % len(winter)]
        p.process(Frame(message("sensor_msgs/msg/Image", **encode_image(rgb)), (300 + i) * 10**9, "cam"))
    out["node frame (built-in model, 200-keyframe map)"] = median_ms(frame, 40)
    p.close()
# binary top-100 over small and large maps
from selavpr_ros.retrieval.hamming import HammingIndex
rng = np.random.default_rng(0)
for n in (200, 100_000):
    index = HammingIndex(512)
    index.add(rng.integers(0, 256, (n, 64), dtype=np.uint8))
    q = rng.integers(0, 256, (1, 64), dtype=np.uint8)
    out[f"binary top-100, {n:,} codes"] = median_ms(lambda: index.search(q, min(100, n)), 200)
# a ViT-S/14 frame through PyTorch
import torch
from selavpr_ros.inference.torch_backend import TorchExtractor
from selavpr_ros.models.config import ModelConfig
from selavpr_ros.models.vpr import build_model
cfg = ModelConfig.load(Path(sys.argv[2]) / "config" / "models" / "dinov2_gem_vits14.yaml")
vit = TorchExtractor(build_model(cfg), device="cpu")
x = np.zeros((1, 3, 224, 224), np.float32)
out["ViT-S/14 frame, 224 x 224 (PyTorch)"] = median_ms(lambda: vit.run(x), 10)
out["torch_threads"] = torch.get_num_threads()
print(json.dumps(out))
"""


def _spin() -> None:
    while True:
        pass


def run(threads: int, loaded: bool) -> dict:
    load = [mp.Process(target=_spin, daemon=True) for _ in range(os.cpu_count() or 1)] if loaded else []
    for p in load:
        p.start()
    time.sleep(1.0 if loaded else 0.0)
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENCV_FOR_THREADS_NUM"):
            env.pop(name, None)  # defaults mean the libraries' own defaults
        proc = subprocess.run([sys.executable, "-c", WORKER, str(threads), str(ROOT)], capture_output=True,
                              text=True, env=env, timeout=1800)
    finally:
        for p in load:
            p.terminate()
            p.join()
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    cores = os.cpu_count() or 1
    settings = {f"every pool as wide as the machine (threads: {cores})": cores,
                f"node default (threads: 0 = half the cores, {max(1, cores // 2)} here)": 0}
    if cores // 2 > 1:
        settings["threads: 1"] = 1
    results = {}
    for label, threads in settings.items():
        for loaded in (False, True):
            results[(label, loaded)] = run(threads, loaded)
            print(label, "loaded" if loaded else "idle", results[(label, loaded)], flush=True)
    rows = []
    workloads = [k for k in results[(next(iter(settings)), False)] if k != "torch_threads"]
    for label in settings:
        idle, loaded = results[(label, False)], results[(label, True)]
        for w in workloads:
            rows.append({"setting": label, "workload": w, "idle_ms": idle[w], "loaded_ms": loaded[w],
                         "slowdown": loaded[w] / idle[w], "torch_threads": idle["torch_threads"]})
    print(table(rows, [("setting", "threads", ""), ("workload", "workload", ""), ("idle_ms", "idle ms", ".2f"),
                       ("loaded_ms", "loaded ms", ".2f"), ("slowdown", "loaded / idle", ".2f")]))
    payload = {"rows": rows, "load": f"{os.cpu_count()} busy processes (one per core)"}
    print(f"saved {save('cpu_share', payload)}")


if __name__ == "__main__":
    main()
