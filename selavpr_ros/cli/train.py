"""``selavpr-train CONFIG.yaml``: train a model's adapters and heads, without ROS.

Multi-GPU (or multi-process CPU) training: ``torchrun --nproc_per_node N -m selavpr_ros.cli.train CONFIG.yaml``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

from selavpr_ros.cli import HelpFormatter
from selavpr_ros.errors import ConfigError, SelaVPRError

EPILOG = """\
The config is YAML with these sections (every key is validated; see
training/configs/*.yaml and the README's training section):

  data:      kind (sequence | utm | gsv_cities | map), root, folders,
             train_span, val_span, frames_per_place, tolerance_frames,
             train_split, val_split, train_radius_m, eval_radius_m,
             cities, min_images_per_place, val_root
  model:     a model config (path or mapping, as in config/models/*.yaml)
  init_checkpoint: start from this checkpoint instead of `model`
  loss:      name (auto | triplet | multi_similarity | graded_regression |
             generalized_contrastive), margin, local_weight, ms_alpha,
             ms_beta, ms_base, miner_epsilon, hash_weight, tau,
             fov_aperture_deg, fov_radius_m, pairs_per_batch
  augment:   enabled, shift, scale, brightness, contrast, grayscale
  cache:     enabled, views, dir, dtype   (trunk-output cache, SelaVPR++ only)
  places_per_batch, images_per_place, epochs, lr, weight_decay, schedule
  (onecycle | cosine | constant), warmup_fraction, patience, recall_at,
  seed, device, amp, threads, checkpoint_every_steps, max_minutes,
  tensorboard, checkpoint_half, output

A run with a state.pt in its output folder resumes from it (same config
required); --fresh starts over. Exit codes: 0 done, 1 data/checkpoint error,
2 configuration error, 130 interrupted (the state is saved every epoch and
every checkpoint_every_steps steps).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selavpr-train", description=__doc__, epilog=EPILOG,
                                formatter_class=HelpFormatter)
    p.add_argument("config", help="training config (YAML)")
    p.add_argument("--output", help="output folder (overrides the config's `output`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set epochs=5 --set loss.margin=0.2 (VALUE is YAML)")
    p.add_argument("--fresh", action="store_true",
                   help="discard the saved state and log and start over (the trunk cache is kept: it is keyed by "
                        "its inputs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return p


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from selavpr_ros.training.config import load_train_config
    from selavpr_ros.training.trainer import Trainer, distributed_cleanup

    try:
        overrides = parse_overrides(args.overrides)
        if args.output:
            overrides["output"] = str(Path(args.output).resolve())
        cfg = load_train_config(args.config, overrides)
        if args.fresh:
            (Path(cfg.output) / "state.pt").unlink(missing_ok=True)
            (Path(cfg.output) / "log.csv").unlink(missing_ok=True)
            shutil.rmtree(Path(cfg.output) / "tensorboard", ignore_errors=True)
        with distributed_cleanup():
            trainer = Trainer(cfg, progress=not args.no_progress)
            result = trainer.fit(resume=not args.fresh)
        if trainer.rank == 0:
            print(json.dumps({"stopped": result.stopped, "epochs": result.epochs_run, "best_epoch": result.best_epoch,
                              "best_recall": result.best_recall, "checkpoint": str(result.checkpoint),
                              "world_size": trainer.world}, indent=1))
        return 0
    except SelaVPRError as exc:
        print(f"selavpr-train: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("selavpr-train: interrupted (resume by running the same command again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
