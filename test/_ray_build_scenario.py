"""Ray map-building scenario, run in a private network namespace by test_ray_build.py (see ray_cluster.py).

On a two-node cluster: build a map from BAGS with the worker node crashed after --kill-after chunks are
committed; then, on what is left, build a second map from --failing bags, the second of which vanishes
from storage once the job has started (its chunks fail on the workers). Prints a JSON report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

from ray_cluster import two_node_cluster

from selavpr_ros.inference.loader import open_extractor
from selavpr_ros.loop_closure.config import KeyframeGateConfig
from selavpr_ros.models.zoo import builtin_checkpoint
from selavpr_ros.offline.ray_executor import build_map_on_ray

GATE = KeyframeGateConfig(min_interval_s=0.0, min_translation_m=1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bags", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--kill-after", type=int, default=2)
    parser.add_argument("--failing", nargs="+", help="bags for the second build (one unreadable)")
    parser.add_argument("--failing-out")
    args = parser.parse_args()
    extractor = open_extractor(builtin_checkpoint(), device="cpu")
    kw = dict(pose_topic="/odom", gate=GATE, batch_size=3, commit_every=4, chunk_images=7, progress=False)
    report: dict = {}
    t0 = time.monotonic()
    with two_node_cluster(cpus_per_node=1) as cluster:
        report["up_s"] = round(time.monotonic() - t0, 2)
        nodes: list[str] = []

        def on_chunk(job, result) -> None:
            nodes.append(result.node)
            if len(nodes) == args.kill_after and not cluster.worker_killed:
                cluster.kill_worker()  # chunks queued on the worker node are lost with it

        t1 = time.monotonic()
        reports, failed = build_map_on_ray(args.bags, "/camera/image_raw", args.out, extractor, None, "cpu",
                                           on_chunk=on_chunk, **kw)
        report.update(build_s=round(time.monotonic() - t1, 2), failed=failed, killed=cluster.worker_killed,
                      nodes_used=len(set(nodes)), chunks=len(nodes),
                      added=[r.added for r in reports], bad_frames=[r.bad_frames for r in reports])
        if args.failing:
            def vanish(job, result) -> None:
                shutil.rmtree(args.failing[1], ignore_errors=True)  # checked by the driver, gone for the workers

            reports, failed = build_map_on_ray(args.failing, "/camera/image_raw", args.failing_out, extractor, None,
                                               "cpu", on_chunk=vanish, **kw)
            report["second"] = {"failed": failed, "added": [r.added for r in reports]}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
