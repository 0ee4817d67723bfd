"""Training memory and time per step: SelaVPR in-block adapters vs SelaVPR++ side adapters vs side + trunk cache.

Same trunk (random weights), input size and batch for all three. Each variant
runs in a fresh process so that its peak resident memory is its own; the
"overhead" column is the peak minus the resident size right after the model
and batch were built (what a training step adds).

    python benchmarks/train.py                       # ViT-S/14, 224 x 224, batch 8
    python benchmarks/train.py --arch vitb14 --batch 16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import save, table

VARIANTS = ("selavpr", "selavpr++", "selavpr++ cached")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(variant: str, arch: str, size: int, batch: int, steps: int, threads: int | None) -> dict:
    import torch

    from selavpr_ros.models.config import ModelConfig
    from selavpr_ros.models.heads import binarize
    from selavpr_ros.models.vpr import build_model
    from selavpr_ros.training import losses as L

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    method = "selavpr" if variant == "selavpr" else "selavpr++"
    model = build_model(ModelConfig.from_dict({"method": method, "backbone": {"arch": arch},
                                               "preprocess": {"height": size, "width": size}}))
    model.train()
    model.backbone.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    images = torch.randn(batch, 3, size, size)
    labels = torch.arange(batch) // 4
    cache_bytes, path, grid, trunk_shape = 0, None, None, ()
    if variant == "selavpr++ cached":  # the first epoch's work: trunk outputs to an fp16 file
        seed, taps, grid = model.trunk(images)
        block = torch.stack([seed, *taps], dim=1).half().numpy()
        cache_bytes, trunk_shape = block[0].nbytes, block.shape[2:]
        path = Path(tempfile.mkdtemp()) / "trunk.bin"
        block.tofile(path)
        del block, seed, taps
    base_rss = _rss_mib()

    def step() -> None:
        if variant == "selavpr":
            desc, _, local = model.encode(images)
            loss = L.triplet_loss(desc, labels, 0.1)
            a, p, n = L.hardest_triplets(desc, labels)
            loss = loss + L.mnn_local_loss(local, a, p, n)
        else:
            if variant == "selavpr++ cached":
                stored = np.memmap(path, np.float16, mode="r").reshape(batch, -1, *trunk_shape)
                block = torch.from_numpy(np.ascontiguousarray(stored)).float()
                desc, z, _ = model.side(block[:, 0], list(block[:, 1:].unbind(1)), grid)
            else:
                desc, z, _ = model.side(*model.trunk(images))
            loss = L.multi_similarity_loss(desc, labels, L.multi_similarity_miner(desc, labels))
            codes = binarize(z)
            pairs = L.multi_similarity_miner(codes, labels)
            loss = loss + L.multi_similarity_loss(codes, labels, pairs) + 0.1 * L.hash_similarity_loss(z, codes, pairs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "trainable_params": sum(p.numel() for p in params), "step_ms": statistics.median(times),
            "peak_rss_mib": peak, "overhead_mib": peak - base_rss, "cache_bytes_per_image": cache_bytes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vits14")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8, help="images per step (places of 4 images)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.arch, args.size, args.batch, args.steps, args.threads)))
        return
    rows = []
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--child", variant, "--arch", args.arch, "--size", str(args.size),
               "--batch", str(args.batch), "--steps", str(args.steps)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{variant}: {rows[-1]['step_ms']:.0f} ms/step", flush=True)
    ref = rows[0]
    for r in rows:
        r["time_vs_selavpr"] = r["step_ms"] / ref["step_ms"]
        r["overhead_vs_selavpr"] = r["overhead_mib"] / ref["overhead_mib"]
    print(f"\n{args.arch}, {args.size}x{args.size}, batch {args.batch}, median of {args.steps} steps")
    print(table(rows, [("variant", "variant", ""), ("trainable_params", "trainable", ","),
                       ("step_ms", "ms/step", ".0f"), ("time_vs_selavpr", "time ratio", ".2f"),
                       ("peak_rss_mib", "peak RSS MiB", ".0f"), ("overhead_mib", "step overhead MiB", ".0f"),
                       ("overhead_vs_selavpr", "overhead ratio", ".2f")]))
    save("train", {"arch": args.arch, "size": args.size, "batch": args.batch, "steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
