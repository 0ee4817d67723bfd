"""Map building throughput: serial against Ray with 1 and 2 workers, side by side in one run.

Bags: ``--bags`` rosbag2 bags of ``--frames`` images each, cut from the 400 bundled Nordland
frames (64 x 32, summer then winter, cycled), one session per bag; built-in model, keyframe
gate off (every image is described), batch size 8, chunks of 250 images. Every build writes a
fresh map; images/s counts every image of every bag, wall clock of the whole job (Ray: worker
start-up and model loading included in the first, "cold" run, not in the second, "warm" one).

* serial: ``build_map`` in this process, ``--threads`` threads (default: all cores);
* ray: ``build-map --executor ray`` on a one-node Ray instance started for the purpose with as many
  CPUs as this machine, 1 worker x all threads and 2 workers x half the threads each. Ray runs in a
  private network namespace (loopback only, ``unshare --net``; root) so that it advertises no
  network address.

The Ray maps are compared with the serial one: same keyframes, same codes, same floats.

    python benchmarks/build_map_scale.py                 # 4 bags x 1000 images (~3 min on 2 cores)
    python benchmarks/build_map_scale.py --bags 8 --frames 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
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

T0 = 1_700_000_000 * 10**9
DEMO = ROOT / "selavpr_ros" / "data" / "nordland_demo"
TOPIC = "/camera/image_raw"
GATE = KeyframeGateConfig(min_interval_s=0.0)
KW = dict(gate=GATE, batch_size=8, chunk_images=250, progress=False, camera_info=None, keypoints=None)


def make_bags(work: Path, n_bags: int, frames: int) -> list[Path]:
    images = [np.asarray(Image.open(p).convert("RGB")) for season in ("summer", "winter")
              for p in sorted((DEMO / season).iterdir()) if p.suffix == ".png"]
    bags = []
    for b in range(n_bags):
        picks = [images[(b * 97 + i) % len(images)] for i in range(frames)]
        bags.append(write_image_bag(work / f"bag{b}", picks, [T0 + b * 10**12 + i * 10**8 for i in range(frames)]))
    return bags


def map_arrays(path: Path) -> tuple[list, np.ndarray, np.ndarray]:
    with MapDatabase.open(path) as db:
        return [(r.session, r.stamp_ns) for r in db.iterate()], np.array(db.codes), np.array(db.float_descriptors)


def ray_runs(bags: list[str], work: Path, cpus: int) -> list[dict]:
    """Inside the private network namespace: one Ray instance, builds with 1 and 2 workers, cold and warm."""
    import ray

    from selavpr_ros.offline.ray_executor import RayOptions, build_map_on_ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             object_store_memory=200 * 2**20)
    extractor = open_extractor(builtin_checkpoint(), device="cpu")
    rows = []
    for workers in (1, 2):
        threads = max(1, cpus // workers)
        for run in ("cold", "warm"):
            out = work / f"ray_w{workers}_{run}"
            t = time.perf_counter()
            reports, failed = build_map_on_ray(bags, TOPIC, out, extractor, None, "cpu",
                                               RayOptions(workers=workers, threads_per_worker=threads), **KW)
            seconds = time.perf_counter() - t
            assert not failed, failed
            rows.append({"executor": f"ray, {workers} worker{'s' if workers > 1 else ''} x {threads} threads",
                         "run": run, "workers": workers, "threads_per_worker": threads, "seconds": seconds,
                         "images": sum(r.messages for r in reports), "map": str(out)})
    ray.shutdown()
    return rows


def in_private_net(args: list[str], env: dict[str, str]) -> list[dict]:
    command = shlex.join([sys.executable, __file__, *args])
    result = subprocess.run(["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {command}"],
                            capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the Ray part failed (needs root for unshare --net):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bags", type=int, default=4)
    parser.add_argument("--frames", type=int, default=1000, help="images per bag")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads in all")
    parser.add_argument("--ray-part", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ray_part:
        work, bags = Path(args.ray_part[0]), args.ray_part[1:]
        print(json.dumps(ray_runs(bags, work, args.threads)))
        return

    from selavpr_ros.threads import set_thread_budget

    set_thread_budget(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bms"))
    try:
        bags = make_bags(work, args.bags, args.frames)
        extractor = open_extractor(builtin_checkpoint(), device="cpu")
        rows = []
        for run in ("cold", "warm"):  # the same process: nothing to warm but caches, measured alike
            out = work / f"serial_{run}"
            t = time.perf_counter()
            reports = build_map(bags, TOPIC, out, extractor, **KW)
            rows.append({"executor": f"serial, {args.threads} threads", "run": run, "workers": 0,
                         "threads_per_worker": args.threads, "seconds": time.perf_counter() - t,
                         "images": sum(r.messages for r in reports), "map": str(out)})
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": tempfile.mkdtemp(prefix="r", dir="/tmp")}
        try:
            rows += in_private_net(["--threads", str(args.threads), "--ray-part", str(work), *map(str, bags)], env)
        finally:
            shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
        reference = map_arrays(Path(rows[0]["map"]))
        for row in rows:
            keys, codes, floats = map_arrays(Path(row.pop("map")))
            row["same_map_as_serial"] = bool(keys == reference[0] and np.array_equal(codes, reference[1])
                                             and np.array_equal(floats, reference[2]))
            row["images_per_s"] = row["images"] / row["seconds"]
        serial = next(r for r in rows if r["workers"] == 0 and r["run"] == "warm")["images_per_s"]
        for row in rows:
            row["vs_serial"] = row["images_per_s"] / serial
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = save("build_map_scale", {"bags": args.bags, "frames_per_bag": args.frames, "threads": args.threads,
                                    "rows": rows})
    print(table(rows, [("executor", "executor", ""), ("run", "run", ""), ("images", "images", ","),
                       ("seconds", "s", ".1f"), ("images_per_s", "img/s", ".0f"), ("vs_serial", "vs serial", ".2f"),
                       ("same_map_as_serial", "same map", "")]))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
