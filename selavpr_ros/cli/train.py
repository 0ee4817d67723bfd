"""``selavpr-train CONFIG.yaml``: train a model's adapters and heads, without ROS.

Multi-GPU (or multi-process CPU) training: ``torchrun --nproc_per_node N -m selavpr_ros.cli.train CONFIG.yaml``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

from selavpr_ros.cli import OPTIONAL_MODULES, HelpFormatter, json_text
from selavpr_ros.errors import ConfigError, SelaVPRError

EPILOG_END = """\
A run with a state.pt in its output folder resumes from it (same config
required); --fresh starts over. With deterministic: true two runs of one
config give bit-identical weights and metrics on one machine (one CPU
thread, deterministic kernels); otherwise runs agree only up to the order
of multi-threaded float sums, which can move a metric by a few points.
Exit codes: 0 done, 1 data/checkpoint error, 2 configuration error, 130
interrupted (the state is saved every epoch and every
checkpoint_every_steps steps).
"""


def config_keys() -> str:
    """Every key of the training config, generated from its dataclasses (so --help never drifts)."""
    import dataclasses
    import textwrap
    import typing

    from selavpr_ros.training.config import TrainConfig

    def describe(f: dataclasses.Field, hints: dict) -> str:
        args = typing.get_args(hints[f.name])
        choices = [a for a in args if isinstance(a, str)]
        return f"{f.name} ({' | '.join(choices)})" if choices and typing.get_origin(hints[f.name]) is typing.Literal \
            else f.name

    lines, scalars = [], []
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            inner = typing.get_type_hints(kind)
            keys = ", ".join(describe(g, inner) for g in dataclasses.fields(kind))
            lines += textwrap.wrap(keys, 64, initial_indent=f"  {f.name + ':':10s} ", subsequent_indent=" " * 13)
        else:
            scalars.append(describe(f, hints))
    lines += textwrap.wrap(", ".join(scalars), 66, initial_indent="  ", subsequent_indent="  ")
    return ("The config is YAML with these sections (every key is validated; see\n"
            "training/configs/*.yaml and the README's training section; model: a model\n"
            "config, path or mapping, as in config/models/*.yaml):\n\n" + "\n".join(lines) + "\n\n" + EPILOG_END)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selavpr-train", description=__doc__, epilog=config_keys(),
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
    try:
        from selavpr_ros.training.config import load_train_config
        from selavpr_ros.training.trainer import Trainer, distributed_cleanup
    except ModuleNotFoundError as exc:
        if exc.name not in OPTIONAL_MODULES:
            raise
        print(f"selavpr-train: error: training needs {exc.name}, which is not installed "
              f"(pip install 'selavpr_ros[train]')", file=sys.stderr)
        return 1

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
            print(json_text({"stopped": result.stopped, "epochs": result.epochs_run, "best_epoch": result.best_epoch,
                             "best_recall": result.best_recall, "checkpoint": str(result.checkpoint),
                             "world_size": trainer.world}))
        return 0
    except SelaVPRError as exc:
        print(f"selavpr-train: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("selavpr-train: interrupted (resume by running the same command again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
