"""The node under load: a 30 Hz camera stream over DDS with inference slower than the stream.

Starts ``selavpr-ros node`` with a ViT-S/14 model at 224 x 224 (random
weights; slower than 33 ms per frame on 2 cores), publishes real Nordland
frames (upscaled to a camera-sized payload) at 30 Hz with accurate pacing for
``--seconds``, one frame in 100 corrupt, samples the node's resident memory
twice a second, and reads its final statistics. Frames must be dropped, not
queued: the memory slope after warm-up should be ~0 and the latency bounded.

    python benchmarks/node_load.py                  # 60 s, 640x480 frames
    python benchmarks/node_load.py --seconds 120 --size 1280x720
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=30.0, help="frames per second")
    p.add_argument("--size", default="640x480", help="published frame size WxH (frames are upscaled)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nordland64"))
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))

    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.topic import Topic

    from selavpr_ros.node.dds_node import sensor_qos
    from selavpr_ros.transport.image_decoding import encode_image
    from selavpr_ros.transport.msgtypes import dds_type, message, to_dds

    work = Path(tempfile.mkdtemp(prefix="node_load_"))
    ckpt, model_ms = make_checkpoint(work)
    names = sorted((Path(args.data) / "summer").iterdir())[::10][:200]
    frames = [np.asarray(Image.open(n).convert("RGB").resize((w, h), Image.Resampling.BILINEAR)) for n in names]
    domain = random.randint(100, 200)
    node = subprocess.Popen(
        [sys.executable, "-m", "selavpr_ros", "node", "--domain-id", str(domain), "-r", "image:=/camera/image",
         "-p", f"checkpoint:={ckpt}", "-p", f"map_path:={work / 'map'}", "-p", "device:=cpu",
         "-p", "loop_closure.keyframe.min_interval_s:=0.0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dp = DomainParticipant(domain)
    writer = DataWriter(dp, Topic(dp, "rt/camera/image", dds_type("sensor_msgs/msg/Image")), sensor_qos())
    deadline = time.monotonic() + 120
    while not writer.get_matched_subscriptions():
        if node.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"node did not start: {node.stderr.read()[-2000:]}")
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
    time.sleep(1.0)
    stop.set()
    node.send_signal(signal.SIGINT)
    out, err = node.communicate(timeout=120)
    stats = json.loads(out.strip().splitlines()[-1])
    t = np.array([s[0] for s in samples])
    r = np.array([s[1] for s in samples])
    warm = t > 10
    slope = float(np.polyfit(t[warm], r[warm], 1)[0] * 60) if warm.sum() > 2 else float("nan")
    summary = {
        "seconds": args.seconds, "rate_hz": args.rate, "frame_size": args.size, "model_ms_per_frame": model_ms,
        "sent": sent, "corrupt_sent": corrupt, "received": stats["received"], "processed": stats["processed"],
        "dropped": stats["dropped"], "bad_frames": stats["bad_frames"],
        "drop_ratio": stats["dropped"] / max(stats["received"], 1),
        "processing_hz": stats["processed"] / args.seconds, "latency_p50_ms": stats["latency_p50_ms"],
        "latency_p95_ms": stats["latency_p95_ms"], "publish_late_p95_ms": float(np.percentile(late, 95)),
        "rss_at_10s_mib": float(r[np.argmin(np.abs(t - 10))]) if len(r) else float("nan"),
        "rss_last_10s_median_mib": float(np.median(r[t > t.max() - 10])) if len(r) else float("nan"),
        "rss_max_mib": float(r.max()) if len(r) else float("nan"), "rss_slope_mib_per_min": slope,
        "node_alive_throughout": alive, "node_exit_code": node.returncode, "map_size": stats["map_size"],
    }
    rows = [{"measure": k, "value": v} for k, v in summary.items()]
    print(table(rows, [("measure", "measure", ""), ("value", "value", "")]))
    checks = {"frames dropped, not queued": summary["dropped"] > 0 and summary["latency_p95_ms"] < 5000,
              "memory flat (|slope| < 5 MiB/min)": abs(slope) < 5,
              "node survived every corrupt frame": alive and node.returncode == 0 and summary["bad_frames"] >= 1}
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print("note: corrupt frames that were dropped before decoding are counted as dropped, not bad")
    save("node_load", {"summary": summary, "checks": checks, "rss_samples": samples})


if __name__ == "__main__":
    main()
