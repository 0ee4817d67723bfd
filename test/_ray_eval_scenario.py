"""Ray evaluation scenario, run in a private network namespace by test_ray_build.py (see ray_cluster.py).

``selavpr-ros eval`` on DATASET twice in this process, serially and with ``--executor ray`` on a two-node
cluster; prints both reports' recall and precision-recall figures as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ray_cluster import two_node_cluster

from selavpr_ros.cli import main as cli


def run(dataset: str, out: Path, extra: list[str]) -> dict:
    code = cli(["eval", "--dataset", dataset, "--out", str(out), "--batch-size", "4", "--max-queries", "60",
                "--quiet", "--device", "cpu", *extra])
    report = json.loads((out / "report.json").read_text())
    return {"code": code, "recall": report["recall"], "pr": report["precision_recall"]}


def main() -> None:
    dataset, work = sys.argv[1], Path(sys.argv[2])
    serial = run(dataset, work / "serial", [])
    with two_node_cluster(cpus_per_node=1):
        import ray

        on_ray = run(dataset, work / "ray", ["--executor", "ray", "--address", "auto"])
        nodes = len([n for n in ray.nodes() if n["Alive"]])
    print(json.dumps({"serial": serial, "ray": on_ray, "nodes": nodes}), flush=True)


if __name__ == "__main__":
    main()
