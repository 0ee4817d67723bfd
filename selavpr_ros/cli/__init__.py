"""``selavpr-ros``: one command with subcommands, like ``git`` or ``colcon``.

Each subcommand lives in its own module with ``register(subparsers)``; errors
meant for the user (:class:`~selavpr_ros.errors.SelaVPRError`) are printed
without a traceback and set the exit code (2 for configuration errors).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import TYPE_CHECKING

from selavpr_ros._version import __version__
from selavpr_ros.errors import SelaVPRError

if TYPE_CHECKING:
    from selavpr_ros.mapdb.records import StorageConfig

__all__ = ["HelpFormatter", "add_storage_arguments", "build_parser", "json_text", "main", "storage_from_args"]

COMMAND_MODULES = (
    "selavpr_ros.cli.model_commands",
    "selavpr_ros.cli.map_commands",
    "selavpr_ros.cli.node_commands",
    "selavpr_ros.cli.bag_commands",
    "selavpr_ros.cli.demo",
    "selavpr_ros.cli.eval_commands",
    "selavpr_ros.cli.sim_commands",
    "selavpr_ros.cli.slam_commands",
)


# optional imports -> the extra that installs them
OPTIONAL_MODULES = {"torch": "torch", "onnxruntime": "onnx-runtime", "onnx": "onnx", "onnxscript": "onnx",
                    "cyclonedds": "dds", "matplotlib": "eval", "gtsam": "slam", "evo": "slam",
                    "tensorboard": "train", "ray": "ray"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, and descriptions/epilogs printed as written."""


def json_text(obj, indent: int | None = 1) -> str:
    """JSON for people and for ``jq``: floats to 6 significant digits, NaN and infinities as null
    (JSON has no NaN; a statistic without samples is unknown, not a number)."""
    import json
    import math

    def clean(x):
        if isinstance(x, float):
            return float(f"{x:.6g}") if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), indent=indent)


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """How a map stores descriptors (``StorageConfig``): build-map writes a map so, eval measures it."""
    parser.add_argument("--float-dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--local-dtype", default="float16", choices=("float16", "float32", "int8", "none"))
    parser.add_argument("--local-pool", type=int, default=1, help="store local features pooled k x k")


def storage_from_args(args: argparse.Namespace) -> StorageConfig:
    from selavpr_ros.mapdb.records import StorageConfig

    return StorageConfig(float_dtype=args.float_dtype, local_dtype=args.local_dtype, local_pool=args.local_pool)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selavpr-ros",
        description="Deep visual place recognition and loop closure for ROS 2 robots.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"selavpr_ros {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="CPU threads of every pool (PyTorch, ONNX Runtime, faiss, BLAS, OpenCV); 0 = all cores "
                             "(the node: half of them, unless its threads parameter says)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        from selavpr_ros.threads import set_thread_budget

        set_thread_budget(args.threads)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("faiss").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except SelaVPRError as exc:
        print(f"selavpr-ros {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"selavpr-ros {args.command}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:  # an optional part this command needs is not installed
        extra = OPTIONAL_MODULES.get(exc.name or "")
        if extra is None:
            raise
        print(f"selavpr-ros {args.command}: error: this needs {exc.name}, which is not installed "
              f"(pip install 'selavpr_ros[{extra}]')", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as Unix tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's final flush must not fail
        return 141


if __name__ == "__main__":
    sys.exit(main())
