"""Offline work on bags: build-map throughput by batch size, replay memory by bag length.

build-map: the 400 bundled Nordland frames (200 summer then 200 winter, 64 x 32, re-encoded as
sensor_msgs/Image in one rosbag2) into a fresh map with the built-in model, keyframe gate off,
for batch sizes 1, 8 and 32, each run twice in this process (the faster kept); images/s counts
every image of the bag. The maps are compared: same keyframes, same codes.

replay: bags of 200, 800 and 1600 generated 160 x 120 frames replayed against a 200-entry map by
``selavpr-ros replay`` in a fresh process each; its peak resident memory (``ru_maxrss``). A replay
that kept messages or outcomes would grow with the bag.

    python benchmarks/offline.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ROOT, save, table
from PIL import Image

from selavpr_ros.bags.writer import write_image_bag
from selavpr_ros.inference.loader import open_extractor
from selavpr_ros.loop_closure.config import KeyframeGateConfig
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.models.zoo import builtin_checkpoint
from selavpr_ros.offline.build_map import build_map
from selavpr_ros.threads import set_thread_budget

T0 = 1_700_000_000 * 10**9
DEMO = ROOT / "selavpr_ros" / "data" / "nordland_demo"
RSS_SCRIPT = """
import resource, sys
from selavpr_ros.cli import main
code = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def build_rows(work: Path) -> list[dict]:
    frames = [np.asarray(Image.open(p).convert("RGB")) for season in ("summer", "winter")
              for p in sorted((DEMO / season).iterdir()) if p.suffix == ".png"]
    bag = write_image_bag(work / "demo_bag", frames, [T0 + i * 10**8 for i in range(len(frames))])
    extractor = open_extractor(builtin_checkpoint(), device="cpu")
    gate = KeyframeGateConfig(min_interval_s=0.0)
    rows, codes = [], {}
    for batch in (1, 8, 32):
        best = float("inf")
        for attempt in range(2):
            out = work / f"map_b{batch}_{attempt}"
            t = time.perf_counter()
            build_map([bag], "/camera/image_raw", out, extractor, gate=gate, batch_size=batch, progress=False,
                      camera_info=None)
            best = min(best, time.perf_counter() - t)
        with MapDatabase.open(out) as db:
            codes[batch] = np.array(db.codes)
        rows.append({"batch": batch, "images": len(frames), "seconds": best, "images_per_s": len(frames) / best})
    for r in rows:
        r["x_batch_1"] = r["images_per_s"] / rows[0]["images_per_s"]
        r["code_bits_differing"] = int(np.unpackbits(codes[r["batch"]] ^ codes[1]).sum())
    return rows


def replay_rows(work: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    base = [rng.integers(0, 255, (120, 160, 3), np.uint8) for _ in range(50)]
    map_bag = write_image_bag(work / "map_bag", base * 4, [T0 + i * 10**9 for i in range(200)])
    run = [sys.executable, "-c", RSS_SCRIPT]
    subprocess.run([*run, "build-map", str(map_bag), "--image-topic", "/camera/image_raw", "--out",
                    str(work / "replay_map"), "--quiet", "--device", "cpu", "--camera-info", "none"], check=True,
                   capture_output=True)
    rows = []
    for n in (200, 800, 1600):
        frames = [np.clip(base[i % 50].astype(np.int16) + rng.integers(-8, 8, (120, 160, 3)), 0, 255).astype(np.uint8)
                  for i in range(n)]
        bag = write_image_bag(work / f"replay_{n}", frames, [T0 + 10**12 + i * 10**8 for i in range(n)])
        del frames
        t = time.perf_counter()
        p = subprocess.run([*run, "replay", str(bag), "--map", str(work / "replay_map"), "--image-topic",
                            "/camera/image_raw", "--out", str(work / f"out_{n}"), "--quiet", "--device", "cpu",
                            "--camera-info", "none"], capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - t
        rss_kb = int(next(line.split()[1] for line in p.stdout.splitlines() if line.startswith("MAXRSS_KB")))
        summary = json.loads(p.stdout[: p.stdout.index("MAXRSS_KB")])
        rows.append({"frames": n, "queries": summary["queries"], "peak_rss_mib": rss_kb / 1024,
                     "seconds": seconds, "bag_mib": sum(f.stat().st_size for f in bag.rglob("*") if f.is_file())
                     / 2**20})
    return rows


def main() -> None:
    threads = set_thread_budget()
    with tempfile.TemporaryDirectory(prefix="offline_bench_") as tmp:
        work = Path(tmp)
        build = build_rows(work)
        replay = replay_rows(work)
    print("build-map, 400 bundled Nordland frames, built-in model:")
    print(table(build, [("batch", "batch", ""), ("images_per_s", "images/s", ".1f"), ("x_batch_1", "x batch 1", ".2f"),
                        ("code_bits_differing", "code bits != batch 1", "")]))
    print("\nreplay against a 200-entry map, 160 x 120 frames:")
    print(table(replay, [("frames", "frames", ""), ("bag_mib", "bag MiB", ".1f"),
                         ("peak_rss_mib", "peak RSS MiB", ".0f"), ("seconds", "seconds", ".1f")]))
    print(f"saved {save('offline', {'threads': threads, 'build_map': build, 'replay': replay})}")


if __name__ == "__main__":
    main()
