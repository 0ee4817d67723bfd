"""Real learning signal on Nordland: train the demo model, then compare it with the baselines.

Trains ``training/configs/nordland_demo.yaml`` (first 70 % of the route,
summer and winter) and evaluates on the held-out 30 %: winter queries
against the summer map, correct within +-2 frames. Rows: raw-pixel nearest
neighbour, the untrained model (same architecture, adapters at their
initial values), and the trained model (float descriptors and 512-bit codes).

    python benchmarks/train_nordland.py                      # train (~3 min on 2 cores) + evaluate
    python benchmarks/train_nordland.py --checkpoint selavpr_ros/data/nordland_demo.ckpt   # evaluate only
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, save, table

from selavpr_ros.datasets.sequence import load_sequence_eval
from selavpr_ros.evaluation.baselines import descriptor_recall, pixel_recall
from selavpr_ros.inference.loader import open_extractor
from selavpr_ros.inference.torch_backend import TorchExtractor
from selavpr_ros.models.weights import create_model
from selavpr_ros.training.config import load_train_config
from selavpr_ros.training.trainer import Trainer

NS = (1, 5, 10, 20)


def recall_row(name: str, extractor, eval_set) -> dict:
    t = time.perf_counter()
    db = extractor.extract(eval_set.database, batch_size=128)
    q = extractor.extract(eval_set.queries, batch_size=128)
    ms = (time.perf_counter() - t) * 1000 / (len(eval_set.database) + len(eval_set.queries))
    r = descriptor_recall(db, q, eval_set.positives, NS)
    return {"model": name, **{f"R@{n}": r["float"][n] for n in NS},
            **{f"binary R@{n}": r["binary"][n] for n in NS}, "ms_per_image": ms}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "training" / "configs" / "nordland_demo.yaml"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nordland64"), help="Nordland root")
    p.add_argument("--checkpoint", help="evaluate this checkpoint instead of training one")
    p.add_argument("--output", help="training output folder (default: a temporary folder)")
    args = p.parse_args()

    overrides = {"data.root": str(Path(args.data).resolve())}
    out = Path(args.output or tempfile.mkdtemp(prefix="nordland_demo_"))
    overrides["output"] = str(out)
    cfg = load_train_config(args.config, overrides)
    eval_set = load_sequence_eval(cfg.data.root, cfg.data.folders[0], cfg.data.folders[1], tuple(cfg.data.val_span),
                                  cfg.data.tolerance_frames)

    train_info = {}
    checkpoint = args.checkpoint
    if checkpoint is None:
        t = time.perf_counter()
        result = Trainer(cfg).fit()
        train_info = {"minutes": (time.perf_counter() - t) / 60, "epochs": result.epochs_run,
                      "best_epoch": result.best_epoch, "stopped": result.stopped, "output": str(out)}
        checkpoint = str(result.checkpoint)

    rows = [{"model": "raw pixels (NN)", **{f"R@{n}": v for n, v in pixel_recall(eval_set, NS).items()}}]
    torch.manual_seed(cfg.seed)  # the trainer's starting point
    untrained = TorchExtractor(create_model(cfg.model_config()), device="cpu")
    rows.append(recall_row("untrained (same architecture)", untrained, eval_set))
    rows.append(recall_row("trained", open_extractor(checkpoint, device="cpu"), eval_set))

    print(f"Nordland {eval_set.name}: {len(eval_set.queries)} winter queries, {len(eval_set.database)} summer "
          f"images, correct within {eval_set.threshold}")
    print(table(rows, [("model", "model", ""), ("R@1", "R@1", ".1f"), ("R@5", "R@5", ".1f"),
                       ("R@10", "R@10", ".1f"), ("binary R@1", "codes R@1", ".1f"),
                       ("binary R@5", "codes R@5", ".1f")]))
    if train_info:
        print(f"training: {train_info['minutes']:.1f} min, best epoch {train_info['best_epoch']} "
              f"of {train_info['epochs']} ({train_info['stopped']})")
    save("train_nordland", {"config": str(args.config), "checkpoint": checkpoint,
                            "eval_set": eval_set.name, "threshold": eval_set.threshold, "training": train_info,
                            "rows": rows})


if __name__ == "__main__":
    main()
