"""What each change of the built-in model's recipe bought, measured on the validation span only.

Starts from the previous recipe (two frames per place, four images per place, 32 places per batch,
no augmentation, a 6-block trunk) on the protocol's spans and adds the adopted changes one at a time,
ending at ``training/configs/nordland_demo.yaml``. Each row is one full training run (same seed,
trainer's early stopping, best epoch chosen on validation); the row reports that best epoch's
validation recall (winter queries against the summer validation span, +-2 frames), wall minutes and
checkpoint size. The test span is not touched here: it is evaluated once, for the final recipe, by
``benchmarks/train_nordland.py``.

    python benchmarks/train_ablation.py                 # all rows (about 25 minutes on 2 idle cores)
    python benchmarks/train_ablation.py --rows 0 1      # a subset
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import ROOT, save, table

from selavpr_ros.training.config import load_train_config
from selavpr_ros.training.trainer import Trainer

PREVIOUS = {"data.frames_per_place": 2, "images_per_place": 4, "places_per_batch": 32,
            "augment.enabled": False, "cache.views": 1, "model.backbone.depth": 6}

# Cumulative: each row adds its change to the row above; the last row is the shipped config.
ROWS: list[tuple[str, dict]] = [
    ("previous recipe (new spans)", PREVIOUS),
    ("+ one frame per place (summer/winter pair), 64 places x 2 images",
     {**PREVIOUS, "data.frames_per_place": 1, "images_per_place": 2, "places_per_batch": 64}),
    ("+ mild augmentation (shift .03, scale .05, grayscale .3), 4 cached views",
     {**PREVIOUS, "data.frames_per_place": 1, "images_per_place": 2, "places_per_batch": 64,
      "augment.enabled": True, "cache.views": 4}),
    ("+ trunk depth 12 (= built-in config)", {}),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "training" / "configs" / "nordland_demo.yaml"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nordland64"), help="Nordland root")
    p.add_argument("--rows", type=int, nargs="*", help="row indices to run (default: all)")
    args = p.parse_args()

    results = []
    for i, (name, overrides) in enumerate(ROWS):
        if args.rows and i not in args.rows:
            continue
        with tempfile.TemporaryDirectory(prefix="ablation_") as tmp:
            sets = {"data.root": str(Path(args.data).resolve()), "output": tmp, **overrides}
            cfg = load_train_config(args.config, sets)
            t = time.perf_counter()
            result = Trainer(cfg).fit()
            minutes = (time.perf_counter() - t) / 60
            size_mb = Path(result.checkpoint).stat().st_size / 1e6
        best = next(row for row in result.history if row["epoch"] == result.best_epoch)
        results.append({"row": i, "change": name, "overrides": overrides, "minutes": minutes,
                        "epochs": result.epochs_run, "best_epoch": result.best_epoch,
                        "val R@1": float(best["R@1"]), "val R@5": float(best["R@5"]),
                        "val codes R@1": float(best["binary_R@1"]), "checkpoint_mb": size_mb})
        print(f"row {i}: {name}: val R@1 {float(best['R@1']):.1f}, {minutes:.1f} min", flush=True)

    cfg = load_train_config(args.config, {"data.root": str(Path(args.data).resolve())})
    columns = [("change", "change", ""), ("val R@1", "val R@1", ".1f"), ("val R@5", "val R@5", ".1f"),
               ("val codes R@1", "codes R@1", ".1f"), ("minutes", "minutes", ".1f"),
               ("checkpoint_mb", "MB", ".1f")]
    print(table(results, columns))
    save("train_ablation", {"config": str(args.config), "spans": {"train": list(cfg.data.train_span),
                                                                   "validation": list(cfg.data.val_span)},
                            "threshold": f"{cfg.data.tolerance_frames} frames",
                            "queries": "winter frames of the validation span vs its summer frames",
                            "rows": results})


if __name__ == "__main__":
    main()
