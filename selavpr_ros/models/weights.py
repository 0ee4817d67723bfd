"""Reading weight files safely and loading official DINOv2 weights into a trunk."""

from __future__ import annotations

import hashlib
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selavpr_ros.errors import CheckpointError
from selavpr_ros.models.config import ARCH_NAMES, BACKBONES, BackboneConfig

CACHE_DIR_ENV = "SELAVPR_CACHE"


def cache_dir() -> Path:
    """Where downloaded weights are kept (``$SELAVPR_CACHE`` or ``~/.cache/selavpr_ros``)."""
    return Path(os.environ.get(CACHE_DIR_ENV, Path.home() / ".cache" / "selavpr_ros"))


# SHA-256 of published files, by URL, checked on download and on every reuse when listed. For other
# URLs the digest taken at download is recorded beside the file and checked on reuse.
KNOWN_SHA256: dict[str, str] = {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_cached(url: str) -> Path:
    """``url`` downloaded once into the cache, keyed by the full URL (not just its file name), and
    verified against its known or recorded SHA-256 every time it is reused."""
    name = Path(url.split("?")[0]).name or "download"
    target = cache_dir() / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    recorded = target.with_name(target.name + ".sha256")
    if target.is_file() and not target.is_symlink():
        expected = KNOWN_SHA256.get(url) or (recorded.read_text().strip() if recorded.is_file() else "")
        if not expected or _sha256(target) != expected:
            raise CheckpointError(f"{target}: cached download of {url} does not match its SHA-256 "
                                  f"({'no digest recorded' if not expected else 'changed since download'}); "
                                  "delete it to download again")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        torch.hub.download_url_to_file(url, str(partial), progress=True)
    except Exception as exc:  # network errors come in many types
        raise CheckpointError(
            f"could not download {url}: {exc}. Download it by hand and pass the local path instead."
        ) from None
    digest = _sha256(partial)
    if url in KNOWN_SHA256 and digest != KNOWN_SHA256[url]:
        partial.unlink()
        raise CheckpointError(f"download of {url} has SHA-256 {digest}, not the published {KNOWN_SHA256[url]}")
    recorded.write_text(digest + "\n")
    partial.replace(target)
    return target


def resolve_weights(source: str | os.PathLike, backbone: BackboneConfig | None = None) -> Path:
    """A local path for ``source``: an existing file, an URL (downloaded once), or
    ``official`` (the DINOv2 release for ``backbone``). Local paths never download."""
    source = str(source)
    if source == "official":
        if backbone is None:
            raise CheckpointError("weights 'official' needs a backbone configuration")
        source = backbone.official_url()
    if re.match(r"^https?://", source):
        return download_cached(source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    return path


# torch.load(weights_only=True) is the safe loader only from these releases on:
# CVE-2025-32434 (code execution, fixed in 2.6) and CVE-2026-24747 (memory corruption, fixed in 2.10).
SAFE_TORCH = (2, 10)


def torch_loader_advisory(version: str | None = None) -> str | None:
    """A warning text when this PyTorch's loader has known advisories (None when it is current)."""
    text = version or torch.__version__
    try:
        major, minor = (int(v) for v in text.split("+")[0].split(".")[:2])
    except ValueError:
        return None
    if (major, minor) >= SAFE_TORCH:
        return None
    return (f"PyTorch {text} predates {SAFE_TORCH[0]}.{SAFE_TORCH[1]}: its torch.load(weights_only=True) is affected "
            "by CVE-2025-32434 / CVE-2026-24747; load only checkpoints you trust, or upgrade PyTorch")


def read_weights_file(path: str | os.PathLike) -> Any:
    """``torch.load`` with safe unpickling and errors that say what is wrong with the file."""
    advisory = torch_loader_advisory()
    if advisory:
        warnings.warn(advisory, RuntimeWarning, stacklevel=2)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    try:
        with warnings.catch_warnings():  # the safe unpickler's notes on foreign pickles are not for users
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        text = str(exc)
        if "zip" in text.lower() or "central directory" in text or isinstance(exc, EOFError):
            raise CheckpointError(f"{path}: truncated or corrupt weights file ({text.splitlines()[0]})") from None
        raise CheckpointError(f"{path}: cannot read weights: {text.splitlines()[0] if text else exc!r}") from None
    except Exception as exc:  # unpickling errors of foreign files
        raise CheckpointError(
            f"{path}: not a PyTorch weights file: neither a torch.save archive nor a pickle of tensors and plain "
            f"containers, which is all the safe loader reads ({_unpickling_reason(exc)}); never load it with "
            "weights_only=False unless you made it yourself") from None


def _unpickling_reason(exc: Exception) -> str:
    """The one informative line of a refused unpickling (torch's message is a page of advice)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        return detail[0].strip() if detail else "refused"
    if isinstance(exc, KeyError):
        return f"unknown pickle opcode {exc.args[0] if exc.args else '?'}: the file is not a pickle"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first[:120]}" if first else type(exc).__name__


def check_finite(state_dict: dict[str, Tensor], source: str) -> None:
    """Refuse weights with NaN or infinite values, naming the first bad tensor."""
    for key, tensor in state_dict.items():
        if isinstance(tensor, Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{source}: tensor '{key}' has {bad} NaN or infinite values")


def infer_backbone(state_dict: dict[str, Tensor], prefix: str = "") -> dict[str, Any]:
    """Read the trunk shape (width, depth, registers, FFN type, grid) off DINOv2 keys."""
    try:
        embed_dim = state_dict[prefix + "cls_token"].shape[-1]
        n_pos = state_dict[prefix + "pos_embed"].shape[1] - 1
    except KeyError as exc:
        raise CheckpointError(f"no DINOv2 trunk found (missing {exc.args[0]!r})") from None
    block_ids = {int(m.group(1)) for k in state_dict if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))}
    depth = max(block_ids) + 1 if block_ids else 0
    registers = state_dict[prefix + "register_tokens"].shape[1] if prefix + "register_tokens" in state_dict else 0
    ffn = "swiglu" if prefix + "blocks.0.mlp.w12.weight" in state_dict else "mlp"
    grid = int(round(n_pos**0.5))
    arch = next((name for name, spec in BACKBONES.items() if (spec.embed_dim, spec.depth) == (embed_dim, depth)), None)
    return {
        "arch": arch,
        "embed_dim": embed_dim,
        "depth": depth,
        "registers": registers,
        "ffn": ffn,
        "pretrain_grid": grid,
    }


def describe_backbone(info: dict[str, Any]) -> str:
    name = ARCH_NAMES.get(info.get("arch") or "", "ViT")
    reg = f"+reg{info['registers']}" if info.get("registers") else ""
    return f"{name}{reg} (embed_dim {info['embed_dim']}, {info['depth']} blocks)"


def check_backbone_matches(info: dict[str, Any], config: BackboneConfig, source: str) -> None:
    """Raise a clear error when a file's trunk is not the configured one."""
    spec = config.spec
    want = {
        "arch": config.arch if config.arch != "custom" else None,
        "embed_dim": spec.embed_dim,
        "depth": spec.depth,
        "registers": config.registers,
        "ffn": spec.ffn,
        "pretrain_grid": config.pretrain_grid,
    }
    keys = ("embed_dim", "depth", "registers", "ffn", "pretrain_grid")
    if any(info[k] != want[k] for k in keys):
        raise CheckpointError(
            f"{source} holds a {describe_backbone(info)} trunk, but the configuration asks for "
            f"{describe_backbone(want)}; pick the matching model config or weights file"
        )


def load_strict(
    module: nn.Module, state_dict: dict[str, Tensor], source: str, may_be_absent: str | None = None
) -> None:
    """Load every key of ``state_dict`` into ``module`` and fill every parameter.

    Keys of the module containing ``may_be_absent`` may be missing from the
    file (SelaVPR adapters when loading a DINOv2 pretrain file). The message
    lists what is missing, extra, or of the wrong shape.
    """
    own = module.state_dict()
    required = {k for k in own if not (may_be_absent and may_be_absent in k)}
    missing = sorted(required - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{source}: keys do not fit the model: {'; '.join(parts)}")
    for key, value in state_dict.items():
        if own[key].shape != value.shape:
            raise CheckpointError(
                f"{source}: '{key}' has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}"
            )
    module.load_state_dict(state_dict, strict=not may_be_absent)


def load_dinov2_pretrain(backbone: nn.Module, config: BackboneConfig, source: str | os.PathLike) -> Path:
    """Load an official ``dinov2_vit*14*_pretrain.pth`` into ``backbone``; every key must be used."""
    path = resolve_weights(source, config)
    state_dict = read_weights_file(path)
    if not isinstance(state_dict, dict) or "cls_token" not in state_dict:
        keys = ", ".join(list(state_dict)[:5]) if isinstance(state_dict, dict) else type(state_dict).__name__
        raise CheckpointError(f"{path}: not a DINOv2 pretrain state dict (top-level keys: {keys})")
    check_backbone_matches(infer_backbone(state_dict), config, str(path))
    check_finite(state_dict, str(path))
    load_strict(backbone, state_dict, str(path), may_be_absent="_adapter.")
    return path


def create_model(config: Any) -> Any:
    """Build ``config``'s model and load ``backbone.weights`` when set (the start of training).

    Without weights the trunk stays randomly initialised, which is what the
    tests and speed benchmarks use on machines without pretrained files.
    """
    from selavpr_ros.models.vpr import build_model

    model = build_model(config)
    if config.backbone.weights:
        load_dinov2_pretrain(model.backbone, config.backbone, config.backbone.weights)
    return model
