"""The node under load: a 30 Hz camera stream over DDS with inference slower than the stream.

Starts the node with a ViT-S/14 model at 224 x 224 (random weights; slower
than 33 ms per frame on 2 cores): ``selavpr-ros node`` (CycloneDDS, no ROS),
then the rclpy node of a colcon build of this package (rmw_cyclonedds_cpp),
each under the same load. The load is real Nordland frames (upscaled to a
camera-sized payload) published at 30 Hz with accurate pacing for
``--seconds``, one frame in 100 corrupt; the node's resident memory is sampled
twice a second and its counters and latencies are read from its last
/diagnostics message. Frames must be dropped, not queued: the memory slope
after warm-up should be ~0 and the latency bounded. DDS stays on loopback.

    python benchmarks/node_load.py                          # both nodes, 60 s each, 640x480 frames
    python benchmarks/node_load.py --transport dds --seconds 120 --size 1280x720
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import ROOT, save, table
from PIL import Image

WARM_UP_S = 30.0  # RSS before this (model load, allocator arenas reaching their size) is not in the slope


def make_checkpoint(folder: Path) -> tuple[Path, float]:
    import torch

    from selavpr_ros.models.checkpoint import save_checkpoint
    from selavpr_ros.models.config import ModelConfig
    from selavpr_ros.models.vpr import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict({"method": "selavpr++", "backbone": {"arch": "vits14"},
                                               "preprocess": {"height": 224, "width": 224}})).eval()
    path = save_checkpoint(model, folder / "vits14.ckpt").path
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        model(x)
        t = time.perf_counter()
        for _ in range(3):
            model(x)
    return path, (time.perf_counter() - t) / 3 * 1000


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_node(transport: str, ckpt: Path, work: Path, domain: int) -> tuple[subprocess.Popen, dict[str, str]]:
    """The node under test: ``selavpr-ros node`` (CycloneDDS) or the rclpy node of a colcon build."""
    params = {"checkpoint": str(ckpt), "map_path": str(work / f"map_{transport}"), "device": "cpu",
              "loop_closure.keyframe.min_interval_s": 0.0, "diagnostics_period_s": 0.5}
    if transport == "dds":
        cmd = [sys.executable, "-m", "selavpr_ros", "node", "--domain-id", str(domain), "-r", "image:=/camera/image"]
        cmd += [a for k, v in params.items() for a in ("-p", f"{k}:={v}")]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), dict(os.environ)
    sys.path.insert(0, str(ROOT / "test" / "ros2"))
    from workspace import build_workspace, find_ros

    setup = find_ros()
    if setup is None:
        raise SystemExit("--transport rclpy needs a ROS 2 install (source setup.bash or install under /opt/ros)")
    env = build_workspace(work / "ros_ws", setup, testing=False)
    env["ROS_DOMAIN_ID"] = str(domain)
    exe = Path(env["WS"]) / "install" / "lib" / "selavpr_ros" / "vpr_node"
    cmd = [sys.executable, str(exe), "--ros-args", "-r", "image:=/camera/image"]
    cmd += [a for k, v in params.items() for a in ("-p", f"{k}:={v}")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env), env


def run_load(transport: str, args, frames: list[np.ndarray], ckpt: Path, work: Path) -> dict:
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    from selavpr_ros.node.dds_node import reliable_qos, sensor_qos
    from selavpr_ros.transport.image_decoding import encode_image
    from selavpr_ros.transport.msgtypes import dds_type, message, to_dds

    domain = random.randint(100, 200)
    node, _ = start_node(transport, ckpt, work, domain)
    dp = DomainParticipant(domain)
    writer = DataWriter(dp, Topic(dp, "rt/camera/image", dds_type("sensor_msgs/msg/Image")), sensor_qos())
    diagnostics = DataReader(dp, Topic(dp, "rt/diagnostics", dds_type("diagnostic_msgs/msg/DiagnosticArray")),
                             reliable_qos(50))
    deadline = time.monotonic() + 180
    while not writer.get_matched_subscriptions():
        if node.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{transport} node did not start: {node.stderr.read()[-2000:]}")
        time.sleep(0.05)
    time.sleep(1.0)

    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    start = time.monotonic()

    def sample() -> None:
        while not stop.wait(0.5):
            if node.poll() is None:
                samples.append((time.monotonic() - start, rss_mib(node.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    payloads = [encode_image(f) for f in frames]
    sent = corrupt = 0
    period = 1.0 / args.rate
    late = []
    while True:
        due = start + sent * period
        now = time.monotonic()
        if due - start > args.seconds:
            break
        if due > now:
            time.sleep(due - now)
        late.append(max(0.0, time.monotonic() - due) * 1000)
        fields = dict(payloads[sent % len(payloads)])
        if sent % 100 == 50:
            fields["data"] = fields["data"][:100]  # truncated payload
            corrupt += 1
        stamp = int(time.time() * 1e9)
        msg = message("sensor_msgs/msg/Image", header={"stamp": {"sec": stamp // 10**9, "nanosec": stamp % 10**9},
                                                       "frame_id": "camera"}, **fields)
        writer.write(to_dds(msg, "sensor_msgs/msg/Image"))
        sent += 1
    alive = node.poll() is None
    time.sleep(2.0)  # let the frame in progress finish and the last diagnostics arrive
    stop.set()
    last = diagnostics.take(N=1000)[-1].status[0]
    stats = {kv.key: kv.value for kv in last.values}
    node.send_signal(signal.SIGINT)
    node.communicate(timeout=120)
    t = np.array([s[0] for s in samples])
    r = np.array([s[1] for s in samples])
    warm = t > WARM_UP_S
    slope = float(np.polyfit(t[warm], r[warm], 1)[0] * 60) if warm.sum() > 2 else float("nan")
    received, processed, dropped = (int(stats[k]) for k in ("received", "processed", "dropped"))
    return {
        "transport": transport, "seconds": args.seconds, "rate_hz": args.rate, "frame_size": args.size,
        "sent": sent, "corrupt_sent": corrupt, "received": received, "processed": processed, "dropped": dropped,
        "bad_frames": int(stats["bad_frames"]), "drop_ratio": dropped / max(received, 1),
        "processing_hz": processed / args.seconds, "latency_p50_ms": float(stats["latency_p50_ms"]),
        "latency_p95_ms": float(stats["latency_p95_ms"]), "publish_late_p95_ms": float(np.percentile(late, 95)),
        "rss_at_10s_mib": float(r[np.argmin(np.abs(t - 10))]) if len(r) else float("nan"),
        "rss_last_10s_median_mib": float(np.median(r[t > t.max() - 10])) if len(r) else float("nan"),
        "rss_max_mib": float(r.max()) if len(r) else float("nan"), "rss_slope_mib_per_min": slope,
        "node_alive_throughout": alive, "node_exit_code": node.returncode, "map_size": int(stats["map_size"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=30.0, help="frames per second")
    p.add_argument("--size", default="640x480", help="published frame size WxH (frames are upscaled)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nordland64"),
                   help="Nordland folder (falls back to the bundled demo frames)")
    p.add_argument("--transport", choices=("dds", "rclpy", "both"), default="both",
                   help="the ROS-less DDS node, the rclpy node (needs a ROS 2 install), or both, one after the other")
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="node_load_"))
    ckpt, model_ms = make_checkpoint(work)
    folder = Path(args.data) / "summer"
    if not folder.is_dir():
        folder = ROOT / "selavpr_ros" / "data" / "nordland_demo" / "summer"
    names = sorted(folder.iterdir())[::10][:200]
    frames = [np.asarray(Image.open(n).convert("RGB").resize((w, h), Image.Resampling.BILINEAR)) for n in names]
    transports = ["dds", "rclpy"] if args.transport == "both" else [args.transport]
    runs = [{**run_load(t, args, frames, ckpt, work), "model_ms_per_frame": model_ms} for t in transports]
    keys = [k for k in runs[0] if k != "transport"]
    rows = [{"measure": k, **{r["transport"]: r[k] for r in runs}} for k in keys]
    print(table(rows, [("measure", "measure", "")] + [(t, t, "") for t in transports]))
    checks = {}
    for r in runs:
        t = r["transport"]
        checks[f"{t}: frames dropped, not queued"] = r["dropped"] > 0 and r["latency_p95_ms"] < 5000
        checks[f"{t}: memory flat (|slope| < 5 MiB/min)"] = abs(r["rss_slope_mib_per_min"]) < 5
        checks[f"{t}: node survived every corrupt frame"] = (r["node_alive_throughout"] and r["node_exit_code"] == 0
                                                             and r["bad_frames"] >= 1)
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print("note: corrupt frames that were dropped before decoding are counted as dropped, not bad")
    save("node_load", {"summary": runs[0], "runs": runs, "checks": checks})


if __name__ == "__main__":
    main()
