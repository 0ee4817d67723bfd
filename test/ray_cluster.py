"""Ray for the tests: a local two-node cluster inside a private network namespace.

Not a test file. A test calls :func:`run_isolated` with a script (such as ``_ray_failover.py``); the script
runs in ``unshare --net`` with only the loopback interface up, so no Ray process can advertise or reach a
real network interface, and uses :func:`two_node_cluster` to start the nodes::

    # in the test
    reason = private_net_reason()
    if reason:
        pytest.skip(reason)
    report = run_isolated(HERE / "_ray_failover.py", timeout=120)

    # in the script
    with two_node_cluster() as c:
        ...  # ray is connected to c.address; c.kill_worker() crashes the worker node

Every Ray process gets :data:`RAY_ENV` (no usage stats, node deaths noticed within about 3 s) and keeps
its files in a short per-run folder under /tmp (Ray's unix socket paths must stay under 108 bytes), which
is removed afterwards. The script prints its report as one JSON object on one line, last (Ray may still
copy log lines after it; the last JSON-object line counts). Every process the script started must have
ended when it exits: :func:`run_isolated` finds them by session id, kills them and fails the run.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
SHORT_TMP = "/tmp"  # short on purpose: Ray's socket paths (<temp>/ray/session_.../sockets/plasma_store) < 108 B
MAX_SOCKET_PATH = 107
# What Ray appends to a temp dir for its longest socket path (session name: date with microseconds, pid).
_SOCKET_SUFFIX = "/ray/session_2000-01-01_00-00-00_000000_4194304/sockets/plasma_store"

#: Environment of every Ray process the tests start. The health-check values (Ray's defaults: 5000 ms,
#: 3000 ms, 10000 ms, 5) make the GCS declare a crashed node dead after about 3 s instead of about 15 s,
#: so that its tasks are retried sooner, with room for a busy 2-core machine to answer a check late.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "3",
}


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@functools.lru_cache(maxsize=1)
def private_net_reason() -> str:
    """Why Ray cannot run in a private network namespace here ("" when it can): for ``pytest.skip``."""
    if not sys.platform.startswith("linux"):
        return f"private network namespaces need Linux (this is {sys.platform})"
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"{tool} ({package}) is not installed"
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install -e '.[ray]')"
    try:
        probe = subprocess.run(
            ["unshare", "--net", "sh", "-c", "ip link set lo up && ip -o -4 addr show dev lo"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot make a private network namespace here: {exc}"
    if probe.returncode != 0:
        detail = _tail(probe.stderr, 3) or f"exit status {probe.returncode}"
        return f"cannot make a private network namespace with loopback here (unshare --net needs root): {detail}"
    if "127.0.0.1" not in probe.stdout:
        return f"loopback has no 127.0.0.1 in a private network namespace: {probe.stdout.strip()!r}"
    return ""


def _session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (zombies left out: they are dead, only not yet reaped)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session
        except OSError:  # already gone
            continue
        if int(fields[3]) == sid and fields[0] != b"Z":
            found.append(int(entry))
    return found


def _end_session(sid: int, grace: float) -> list[str]:
    """Wait up to ``grace`` s for the processes of session ``sid`` to end, SIGKILL the rest; describe those.

    Every Ray process a script starts stays in the script's session (Ray gives workers their own process
    group, not their own session), so this finds all of them however they were re-parented.
    """
    deadline = time.monotonic() + grace
    while True:
        pids = _session_members(sid)
        if not pids or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    left = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
        left.append(f"{pid} {cmdline[:150].strip()}")
    return left


def _last_json_object(stdout: str) -> dict | None:
    """The script's report: its last stdout line that is a JSON object.

    Usually the very last line, but Ray's log monitor may still copy a node's log lines to the driver's
    stdout after that (e.g. the raylet's last state dump when a node was killed).
    """
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                report = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(report, dict):
                return report
    return None


def run_isolated(script: Path | str, *args: object, timeout: float, env: dict[str, str] | None = None) -> dict:
    """Run ``python script args...`` in a private network namespace (loopback only); return its JSON report.

    The script's last stdout line must be its JSON object report. The script runs in the repository root,
    with :data:`RAY_ENV`, ``RAY_TMPDIR`` set to a fresh short folder (removed afterwards), this folder and
    the repository root on ``PYTHONPATH`` (Ray workers inherit it), then ``env``. A non-zero exit, a
    timeout, a report that is not JSON, or a Ray process outliving the script raises AssertionError.
    """
    run_dir = tempfile.mkdtemp(prefix="r", dir=SHORT_TMP if os.path.isdir(SHORT_TMP) else None)
    path = os.pathsep.join(p for p in (str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**os.environ, **RAY_ENV, "RAY_TMPDIR": run_dir, "PYTHONPATH": path, **(env or {})}
    command = shlex.join([sys.executable, str(script), *(str(a) for a in args)])
    started = time.monotonic()
    try:
        # A session of its own: everything the script starts can be found (and killed) by session id.
        proc = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {command}"],
            cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _end_session(proc.pid, grace=0.0)
            out, err = proc.communicate()
        except BaseException:  # e.g. Ctrl-C: the new session does not get the terminal's SIGINT
            _end_session(proc.pid, grace=0.0)
            proc.wait()
            raise
        leftovers = _end_session(proc.pid, grace=10.0)
        elapsed = time.monotonic() - started
        if timed_out:
            raise AssertionError(f"{command} timed out after {timeout:g} s; stderr tail:\n{_tail(err)}")
        if proc.returncode != 0:
            raise AssertionError(
                f"{command} exited with status {proc.returncode} after {elapsed:.1f} s; stderr tail:\n{_tail(err)}"
            )
        if leftovers:
            raise AssertionError(f"Ray processes outlived {command} (killed now):\n" + "\n".join(leftovers))
        report = _last_json_object(out)
        if report is None:
            raise AssertionError(
                f"{command} printed no JSON object line; stdout tail:\n{_tail(out, 10)}\nstderr tail:\n{_tail(err)}"
            )
        return report
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


class TwoNodes:
    """A running two-node cluster (see :func:`two_node_cluster`); ray is connected to it."""

    def __init__(self, cluster, head, worker, temp_dir: str) -> None:
        self.cluster = cluster  # ray.cluster_utils.Cluster
        self.head = head  # ray._private.node.Node of the head node (the driver's node)
        self.worker = worker  # ray._private.node.Node of the other node
        self.temp_dir = temp_dir  # this cluster's folder, removed on exit: room for the script's own files
        self.address = cluster.address  # "127.0.0.1:<gcs port>"
        self.worker_killed = False

    @property
    def head_id(self) -> str:
        """Node id (hex) of the head, as ``ray.get_runtime_context().get_node_id()`` gives it."""
        return self.head.node_id

    @property
    def worker_id(self) -> str:
        """Node id (hex) of the worker node, e.g. for ``NodeAffinitySchedulingStrategy``."""
        return self.worker.node_id

    def kill_worker(self) -> None:
        """Crash the worker node: SIGKILL its raylet and the rest of its processes, no graceful shutdown."""
        if not self.worker_killed:
            self.cluster.remove_node(self.worker, allow_graceful=False)
            self.worker_killed = True


def _run_on_each(ray, node_ids: list[str], timeout: float = 60.0) -> None:
    """Run a task on each node (a worker process starts on each): afterwards the head schedules onto all.

    Right after ``Cluster.wait_for_nodes`` the head's raylet may not know the other node's resources yet,
    so a first batch of tasks, even with ``scheduling_strategy="SPREAD"``, can all land on the head.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def node_id() -> str:  # nested, so that Ray ships it by value: workers need not import this module
        return ray.get_runtime_context().get_node_id()

    task = ray.remote(num_cpus=0, max_retries=0)(node_id)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
            for n in node_ids]
    ran = ray.get(refs, timeout=timeout)
    if ran != node_ids:
        raise RuntimeError(f"tasks pinned to nodes {node_ids} ran on {ran}")


@contextlib.contextmanager
def two_node_cluster(cpus_per_node: int = 1, object_store_mb: int = 150) -> Iterator[TwoNodes]:
    """Start a head and a worker node on 127.0.0.1 and connect ray to the head; shut all down on exit.

    Meant for a script run by :func:`run_isolated`. Each node has ``cpus_per_node`` CPUs and an object
    store of ``object_store_mb`` MB, no dashboard and no autoscaler monitor. Ray's files go to a fresh
    folder under ``$RAY_TMPDIR`` (else /tmp), which is removed on exit.
    """
    import ray
    from ray.cluster_utils import Cluster

    base = os.environ.get("RAY_TMPDIR") or SHORT_TMP
    folder = tempfile.mkdtemp(prefix="c", dir=base)
    if len(folder) + len(_SOCKET_SUFFIX) > MAX_SOCKET_PATH:
        shutil.rmtree(folder, ignore_errors=True)
        raise ValueError(f"temp folder {folder} is too long for Ray's unix socket paths (at most "
                         f"{MAX_SOCKET_PATH - len(_SOCKET_SUFFIX)} characters)")
    temp_dir = os.path.join(folder, "ray")
    saved_tmpdir = os.environ.get("RAY_TMPDIR")
    # Cluster writes <default temp dir>/ray_current_cluster, the default being $RAY_TMPDIR/ray: keep it in here.
    os.environ["RAY_TMPDIR"] = folder
    node_args = {
        "num_cpus": cpus_per_node,
        "object_store_memory": object_store_mb * 1024 * 1024,
        "node_ip_address": "127.0.0.1",
        "temp_dir": temp_dir,
    }
    cluster = None
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={**node_args, "include_dashboard": False, "no_monitor": True},
        )
        # Connect before the second node exists: both nodes are on 127.0.0.1, and a driver may attach to
        # either node there (Ray 2.40 picks the newer one); attached to the worker node, it could not kill it.
        ray.init(address=cluster.address, include_dashboard=False, _temp_dir=temp_dir, _node_ip_address="127.0.0.1")
        worker = cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        driver_node = ray.get_runtime_context().get_node_id()
        if driver_node != cluster.head_node.node_id:
            raise RuntimeError(f"the driver attached to node {driver_node}, not to the head")
        _run_on_each(ray, [cluster.head_node.node_id, worker.node_id])
        yield TwoNodes(cluster, cluster.head_node, worker, folder)
    finally:
        try:
            ray.shutdown()
        finally:
            try:
                if cluster is not None:
                    cluster.shutdown()
            finally:
                if saved_tmpdir is None:
                    os.environ.pop("RAY_TMPDIR", None)
                else:
                    os.environ["RAY_TMPDIR"] = saved_tmpdir
                shutil.rmtree(folder, ignore_errors=True)
