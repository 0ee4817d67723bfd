"""The built-in model's recipe, measured by the protocol: train, select on validation, test once.

Trains ``training/configs/nordland_demo.yaml`` on the Nordland route's train span (summer and winter),
selects the best epoch on the validation span (the trainer's early stopping and ``best.ckpt``), and
only then evaluates the test span, once: winter queries against the whole summer test span, correct
within +-2 frames. The three spans are disjoint with gaps (the config says which; the trainer refuses
spans that touch). Rows: raw-pixel nearest neighbour, the untrained model (same architecture, adapters
at their initial values) and the trained model (float descriptors and 512-bit codes).

It also checks the model on an environment it never saw: the simulated city block (real photographs,
another camera, another world), session B's queries against session A's keyframes, correct within
5 m, against raw pixels on the same images.

    python benchmarks/train_nordland.py                      # train (minutes on 2 cores) + evaluate
    python benchmarks/train_nordland.py --checkpoint selavpr_ros/data/nordland_demo.ckpt   # evaluate only

A result for another model never silently replaces the tracked ``results/train_nordland.json``: it is
saved beside it under the model's id unless ``--update`` is given.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _common import RESULTS, ROOT, save, table
from _sim import posed_map, record

from selavpr_ros.datasets.map_data import load_map_eval
from selavpr_ros.datasets.sequence import load_sequence_eval
from selavpr_ros.evaluation.baselines import descriptor_recall, pixel_recall
from selavpr_ros.inference.loader import open_extractor
from selavpr_ros.inference.torch_backend import TorchExtractor
from selavpr_ros.models.weights import create_model
from selavpr_ros.training.config import load_train_config
from selavpr_ros.training.trainer import Trainer

NS = (1, 5, 10, 20)
UNSEEN_TOLERANCE_M = 5.0


def recall_row(name: str, extractor, eval_set) -> dict:
    t = time.perf_counter()
    db = extractor.extract(eval_set.database, batch_size=128)
    q = extractor.extract(eval_set.queries, batch_size=128)
    ms = (time.perf_counter() - t) * 1000 / (len(eval_set.database) + len(eval_set.queries))
    r = descriptor_recall(db, q, eval_set.positives, NS)
    return {"model": name, **{f"R@{n}": r["float"][n] for n in NS},
            **{f"binary R@{n}": r["binary"][n] for n in NS}, "ms_per_image": ms}


def pixel_row(eval_set) -> dict:
    return {"model": "raw pixels (NN)", **{f"R@{n}": v for n, v in pixel_recall(eval_set, NS).items()}}


def unseen_environment(extractor) -> dict:
    """The simulated block (one lap each): pixels and the model, B's queries against A within 5 m."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sim = record(work / "sim", laps=1.0)
        a, b = posed_map(sim / "session_a", work / "a"), posed_map(sim / "session_b", work / "b")
        ev = load_map_eval(a, b, UNSEEN_TOLERANCE_M)
        rows = [pixel_row(ev), recall_row("trained", extractor, ev)]
    return {"eval_set": "simulated block: session B (other lane, other light) -> session A, one lap each",
            "threshold": f"{UNSEEN_TOLERANCE_M:g} m", "database": len(ev.database), "queries": len(ev.queries),
            "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "training" / "configs" / "nordland_demo.yaml"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nordland64"), help="Nordland root")
    p.add_argument("--checkpoint", help="evaluate this checkpoint instead of training one")
    p.add_argument("--output", help="training output folder (default: a temporary folder)")
    p.add_argument("--update", action="store_true", help="replace the tracked result even for another model")
    args = p.parse_args()

    out = Path(args.output or tempfile.mkdtemp(prefix="nordland_demo_"))
    cfg = load_train_config(args.config, {"data.root": str(Path(args.data).resolve()), "output": str(out)})
    if cfg.data.test_span is None:
        raise SystemExit(f"{args.config}: data.test_span is not set; the protocol needs a held-out test span")
    spans = {"train": list(cfg.data.train_span), "validation": list(cfg.data.val_span),
             "test": list(cfg.data.test_span)}

    train_info: dict = {}
    checkpoint = args.checkpoint
    if checkpoint is None:
        t = time.perf_counter()
        result = Trainer(cfg).fit()
        train_info = {"minutes": (time.perf_counter() - t) / 60, "epochs": result.epochs_run,
                      "best_epoch": result.best_epoch, "stopped": result.stopped, "output": str(out),
                      "validation_recall": result.best_recall}
        checkpoint = str(result.checkpoint)
    trained = open_extractor(checkpoint, device="cpu")

    # the test span, evaluated once, after every choice was made on validation
    test = load_sequence_eval(cfg.data.root, cfg.data.folders[0], cfg.data.folders[1],
                              tuple(cfg.data.test_span), cfg.data.tolerance_frames)
    rows = [pixel_row(test)]
    torch.manual_seed(cfg.seed)  # the trainer's starting point
    rows.append(recall_row("untrained (same architecture)", TorchExtractor(create_model(cfg.model_config()),
                                                                            device="cpu"), test))
    rows.append(recall_row("trained", trained, test))
    unseen = unseen_environment(trained)

    print(f"Nordland test span {test.name}: {len(test.queries)} winter queries, {len(test.database)} summer "
          f"images, correct within {test.threshold}")
    columns = [("model", "model", ""), ("R@1", "R@1", ".1f"), ("R@5", "R@5", ".1f"), ("R@10", "R@10", ".1f"),
               ("binary R@1", "codes R@1", ".1f"), ("binary R@5", "codes R@5", ".1f")]
    print(table(rows, columns))
    print(f"\n{unseen['eval_set']}, within {unseen['threshold']}:\n" + table(unseen["rows"], columns))
    if train_info:
        print(f"training: {train_info['minutes']:.1f} min, best epoch {train_info['best_epoch']} "
              f"of {train_info['epochs']} ({train_info['stopped']})")
    payload = {"config": str(args.config), "checkpoint": checkpoint, "model_id": trained.model_id,
               "spans": spans, "eval_set": test.name, "threshold": test.threshold, "database": len(test.database),
               "queries": len(test.queries), "training": train_info, "rows": rows, "unseen_environment": unseen}
    tracked = RESULTS / "train_nordland.json"
    name = "train_nordland"
    if tracked.is_file() and not args.update:
        previous = json.loads(tracked.read_text()).get("model_id")
        if previous != trained.model_id:
            name = f"train_nordland.{trained.model_id.replace(':', '_')}"
            print(f"note: {tracked} holds model {previous}; this result (model {trained.model_id}) is saved as "
                  f"{name}.json (--update replaces the tracked one)")
    print(f"saved {save(name, payload)}")


if __name__ == "__main__":
    main()
