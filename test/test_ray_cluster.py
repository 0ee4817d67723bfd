"""The Ray test harness (ray_cluster.py): a two-node cluster in a private network namespace survives a node crash."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray_cluster import private_net_reason, run_isolated

SCENARIO = Path(__file__).with_name("_ray_failover.py")


@pytest.mark.slow
def test_two_node_cluster_spreads_tasks_and_retries_on_a_crashed_node():
    reason = private_net_reason()
    if reason:
        pytest.skip(reason)
    report = run_isolated(SCENARIO, timeout=120)

    head, worker = report["head"], report["worker"]
    assert head != worker and report["alive"] == sorted([head, worker])
    # Short tasks ran on both nodes, and Ray's workers import the installed package.
    assert report["spread_count"] == 6 and report["spread_nodes"] == sorted([head, worker])
    assert len(report["package"]) == 1 and report["package"][0].endswith("selavpr_ros/__init__.py")
    # The long task started on the worker node, which then crashed; Ray retried it on the head.
    assert report["first_attempt_nodes"] == [worker]
    assert report["result"] == {"node": head, "attempts": 2}
    assert report["alive_after"] == [head]
