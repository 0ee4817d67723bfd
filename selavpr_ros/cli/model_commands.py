"""Model commands: ``model-info``, ``import-checkpoint``, ``export-onnx``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selavpr_ros.cli import json_text
from selavpr_ros.errors import ConfigError
from selavpr_ros.models.config import ModelConfig

IMPORT_EPILOG = """\
kinds:
  dinov2     official dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth (SOURCE may be 'official'
             with --config); without --config the result is the frozen DINOv2-GeM baseline
  selavpr    SelaVPR release ({"model_state_dict": ...}, module. prefixes), ViT-L/14 [+reg4]
  selavpr++  SelaVPR++ base/large releases, float-only or binary + re-rank
  auto       detect the kind from the file's keys

SOURCE is a local file, an http(s) URL (downloaded once into ~/.cache/selavpr_ros),
or a release name: selavpr++/base, selavpr++/base_rerank, selavpr++/large,
selavpr++/large_rerank.

examples:
  selavpr-ros import-checkpoint selavpr SelaVPR_msls.pth --out models/selavpr_msls.pt
  selavpr-ros import-checkpoint selavpr++ selavpr++/large_rerank --out models/pp_large.pt
  selavpr-ros import-checkpoint dinov2 dinov2_vitb14_pretrain.pth \\
      --config config/models/selavprpp_vitb14.yaml --out models/pp_b_init.pt
"""


def _load_config_or_model(path: str):
    """A model description from a YAML config, a checkpoint or an ONNX file."""
    p = Path(path)
    if p.suffix in (".yaml", ".yml"):
        return ModelConfig.load(p), None
    if p.suffix == ".onnx":
        from selavpr_ros.inference.onnx_backend import read_metadata

        return ModelConfig.from_dict(json.loads(read_metadata(p)["model_config"])), None
    from selavpr_ros.models.checkpoint import read_checkpoint

    ckpt = read_checkpoint(p)
    return ckpt.config, ckpt


def cmd_model_info(args: argparse.Namespace) -> int:
    try:
        from selavpr_ros.models.summary import format_summary, summarize_config
    except ImportError:
        from selavpr_ros.errors import SelaVPRError

        raise SelaVPRError("model-info builds the model to count its parameters and operations, which needs "
                           "PyTorch (pip install torch); running an .onnx model does not") from None

    config, ckpt = _load_config_or_model(args.model)
    if args.size:
        config = config.with_input(*args.size)
    summary = summarize_config(config)
    if args.json:
        data = summary.to_dict()
        if ckpt is not None:
            data["model_id"] = ckpt.model_id
        print(json_text(data, indent=2))
        return 0
    print(format_summary(summary))
    if ckpt is not None:
        print(f"\nmodel id    {ckpt.model_id}  (package {ckpt.package_version})")
    return 0


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from selavpr_ros.models.checkpoint import save_checkpoint
    from selavpr_ros.models.importers import import_release
    from selavpr_ros.models.summary import format_summary, summarize

    source = args.source
    config = ModelConfig.load(args.config) if args.config else None
    if args.source == "official":
        if config is None:
            raise ConfigError("SOURCE 'official' needs --config (it names the DINOv2 architecture)")
        source = config.backbone.official_url()
    model = import_release(args.kind, source, config=config, size=tuple(args.size) if args.size else None)
    ckpt = save_checkpoint(
        model, args.out, metadata={"imported_from": str(args.source), "kind": args.kind}, half=args.half
    )
    print(format_summary(summarize(model)))
    print(f"\nwrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB), model id {ckpt.model_id}")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from selavpr_ros.inference.onnx_backend import compare_with_torch, export_onnx
    from selavpr_ros.models.checkpoint import read_checkpoint
    from selavpr_ros.models.zoo import resolve_checkpoint

    source = resolve_checkpoint(args.checkpoint)
    ckpt = read_checkpoint(source)
    model = ckpt.build()
    if args.size:
        model.config = model.config.with_input(*args.size)
    suffix = ".int8.onnx" if args.int8 else ".fp16.onnx" if args.fp16 else ".onnx"
    out = Path(args.out) if args.out else Path.cwd() / (source.stem + suffix)
    report = export_onnx(model, out, ckpt.model_id, opset=args.opset, int8=args.int8, fp16=args.fp16)
    print(
        f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB), opset {report.opset}, {report.precision}, "
        f"outputs: {', '.join(report.outputs)}"
    )
    if args.check:
        parity = compare_with_torch(model, out)
        print("parity against PyTorch on random input:")
        for key, value in parity.items():
            print(f"  {key:<22} {value:.3g}" if isinstance(value, float) else f"  {key:<22} {value}")
    return 0


def _size(text: str) -> int:
    value = int(text)
    if value <= 0 or value % 14:
        raise argparse.ArgumentTypeError(f"{value} is not a positive multiple of 14")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    from selavpr_ros.cli import HelpFormatter

    p = sub.add_parser(
        "model-info",
        help="parameter counts and output layout of a model",
        description="Print trainable and frozen parameter counts per part and the per-image outputs "
        "of a model given as a YAML config (config/models/*.yaml), a checkpoint or an ONNX file. "
        "No weights are allocated for a config.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", metavar="CONFIG", help="model config (.yaml), checkpoint (.pt) or ONNX file")
    p.add_argument("--size", nargs=2, type=_size, metavar=("H", "W"), help="override the input size")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser(
        "import-checkpoint",
        help="convert released weights (DINOv2, SelaVPR, SelaVPR++) to a selavpr_ros checkpoint",
        description="Convert a released weights file into this package's checkpoint format. Every key "
        "of the file must land in the model and every model weight must be filled.",
        epilog=IMPORT_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("kind", help="release format: auto, or a release kind of a registered method (see above)")
    p.add_argument("source", metavar="SOURCE", help="file, URL, release name, or 'official' (dinov2)")
    p.add_argument("--out", required=True, help="output checkpoint (.pt)")
    p.add_argument("--config", help="model config for dinov2 imports (any method)")
    p.add_argument(
        "--size",
        nargs=2,
        type=_size,
        metavar=("H", "W"),
        help="input size (default: 224 for selavpr/dinov2, 322 for selavpr++)",
    )
    p.add_argument("--half", action="store_true", help="store weights in fp16 (half the file size)")
    p.set_defaults(func=cmd_import_checkpoint)

    p = sub.add_parser(
        "export-onnx",
        help="export a checkpoint to ONNX (dynamic batch, all outputs)",
        description="Export a checkpoint to an ONNX file for ONNX Runtime (CPU, CUDA or TensorRT). The "
        "file carries the model config and id, so it is all a robot needs.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", help="selavpr_ros checkpoint (.ckpt/.pt), or builtin:NAME (builtin:nordland_demo)")
    p.add_argument("--out", help="output file (default: the checkpoint's name with .onnx, in the working directory; "
                   "never inside the installed package)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of MatMul/Gemm for CPUs")
    precision.add_argument("--fp16", action="store_true",
                           help="float16 weights and arithmetic for GPUs (CUDA, TensorRT); half the file")
    p.add_argument("--size", nargs=2, type=_size, metavar=("H", "W"), help="input size (default: the checkpoint's)")
    p.add_argument("--check", action="store_true", help="compare outputs with PyTorch on random input")
    p.set_defaults(func=cmd_export_onnx)
