"""Two-node Ray scenario, run in a private network namespace by test_ray_cluster.py (see ray_cluster.py).

Starts a head and a worker node, spreads short tasks over both (each imports selavpr_ros), then crashes
the worker node while a long task placed there (soft node affinity) runs; the task is retried on the head.
Prints a JSON report.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

started = time.monotonic()
import ray  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402
from ray_cluster import two_node_cluster  # noqa: E402

IMPORT_S = time.monotonic() - started


@ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
def where() -> dict:
    import selavpr_ros

    time.sleep(0.3)
    return {"node": ray.get_runtime_context().get_node_id(), "package": selavpr_ros.__file__}


@ray.remote(num_cpus=1, max_retries=2)
def long_task(markers: str, slow_node: str) -> dict:
    """Leave a marker per attempt; block on ``slow_node`` (until that node is killed), return at once elsewhere."""
    node = ray.get_runtime_context().get_node_id()
    Path(markers, f"{node}-{os.getpid()}").touch()
    if node == slow_node:
        time.sleep(60)
    return {"node": node, "attempts": len(os.listdir(markers))}


def main() -> None:
    t0 = time.monotonic()
    with two_node_cluster(cpus_per_node=1, object_store_mb=150) as c:
        up_s = time.monotonic() - t0
        alive = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        spread = ray.get([where.remote() for _ in range(6)], timeout=60)

        markers = Path(c.temp_dir, "markers")
        markers.mkdir()
        t1 = time.monotonic()
        ref = long_task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(c.worker_id, soft=True)).remote(
            str(markers), c.worker_id
        )
        deadline = time.monotonic() + 30
        while not any(markers.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        first_attempt = [p.name.split("-")[0] for p in markers.iterdir()]
        t2 = time.monotonic()
        c.kill_worker()
        kill_s = time.monotonic() - t2
        result = ray.get(ref, timeout=60)
        failover_s = time.monotonic() - t1
        report = {
            "import_s": round(IMPORT_S, 2),
            "up_s": round(up_s, 2),
            "head": c.head_id,
            "worker": c.worker_id,
            "alive": alive,
            "spread_nodes": sorted({r["node"] for r in spread}),
            "spread_count": len(spread),
            "package": sorted({r["package"] for r in spread}),
            "first_attempt_nodes": first_attempt,
            "kill_s": round(kill_s, 2),
            "result": result,
            "failover_s": round(failover_s, 2),
            "alive_after": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
        }
    report["elapsed_s"] = round(time.monotonic() - started, 2)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
