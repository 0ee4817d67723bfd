"""Parameter counts and output layout of a model, for ``selavpr-ros model-info``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from selavpr_ros.models.config import ModelConfig
from selavpr_ros.models.vpr import VPRModel, build_model


@dataclass
class ParameterGroup:
    name: str
    trainable: int = 0
    frozen: int = 0
    modules: int = 1  # repeated modules (one per block) in this group

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    @property
    def per_module(self) -> int:
        return self.total // max(self.modules, 1)


@dataclass
class ModelSummary:
    config: ModelConfig
    groups: list[ParameterGroup] = field(default_factory=list)

    @property
    def trainable(self) -> int:
        return sum(g.trainable for g in self.groups)

    @property
    def frozen(self) -> int:
        return sum(g.frozen for g in self.groups)

    def group(self, name: str) -> ParameterGroup:
        return next(g for g in self.groups if g.name == name)

    def to_dict(self) -> dict:
        layout = self.config.layout()
        return {
            "method": self.config.method,
            "backbone": self.config.backbone.display_name,
            "input": [self.config.preprocess.height, self.config.preprocess.width],
            "trainable_params": self.trainable,
            "frozen_params": self.frozen,
            "groups": [
                {
                    "name": g.name,
                    "trainable": g.trainable,
                    "frozen": g.frozen,
                    "modules": g.modules,
                    "per_module": g.per_module,
                }
                for g in self.groups
            ],
            "layout": layout.to_dict(),
            "gflop_per_image": round(2 * sum(estimate_macs(self.config).values()) / 1e9, 2),
        }


def _group_of(name: str) -> tuple[str, int | None]:
    """Group key of a parameter name and the index of the repeated module it is in."""
    m = re.match(r"backbone\.blocks\.(\d+)\.(serial_adapter|parallel_adapter)\.", name)
    if m:
        return f"{m[2]}s (in-block)", int(m[1])
    if name.startswith("backbone.norm."):
        return "trunk final norm", None
    if name.startswith("backbone."):
        return "trunk (DINOv2)", None
    m = re.match(r"([a-z_]+)\.(\d+)\.", name)
    if m:
        return m[1], int(m[2])
    return name.split(".")[0], None


def summarize(model: VPRModel) -> ModelSummary:
    groups: dict[str, ParameterGroup] = {}
    indices: dict[str, set[int]] = {}
    for name, param in model.named_parameters():
        key, index = _group_of(name)
        group = groups.setdefault(key, ParameterGroup(key))
        if param.requires_grad:
            group.trainable += param.numel()
        else:
            group.frozen += param.numel()
        if index is not None:
            indices.setdefault(key, set()).add(index)
    for key, idx in indices.items():
        groups[key].modules = len(idx)
    return ModelSummary(model.config, list(groups.values()))


def summarize_config(config: ModelConfig) -> ModelSummary:
    """Counts without allocating weights (the model is built on the meta device)."""
    with torch.device("meta"):
        model = build_model(config, init_trainable=False)
    return summarize(model)


def format_summary(summary: ModelSummary) -> str:
    cfg = summary.config
    layout = cfg.layout()
    lines = [
        f"method      {cfg.method}" + (f"  ({cfg.name})" if cfg.name else ""),
        f"backbone    {cfg.backbone.display_name}, frozen",
        f"input       {cfg.preprocess.height}x{cfg.preprocess.width} ({cfg.preprocess.resize}, "
        f"{cfg.preprocess.interpolation}), mean {list(cfg.preprocess.mean)}, std {list(cfg.preprocess.std)}",
        "",
        f"{'parameters':<28}{'trainable':>14}{'frozen':>14}{'per module':>14}",
    ]
    for g in summary.groups:
        per = f"{g.per_module:,} x{g.modules}" if g.modules > 1 else ""
        lines.append(f"{g.name:<28}{g.trainable:>14,}{g.frozen:>14,}{per:>14}")
    lines.append(f"{'total':<28}{summary.trainable:>14,}{summary.frozen:>14,}")
    lines += [
        "",
        "outputs per image",
        f"  codes           {layout.code_bytes} x uint8 ({layout.code_bits} bit, "
        + ("learned hash" if cfg.learned_codes else "sign random projection of the float descriptor")
        + ")",
        f"  descriptors     {layout.float_dim} x float32, L2-normalised",
    ]
    if layout.has_local:
        gh, gw = layout.local_grid
        lines.append(f"  local_features  {gh} x {gw} x {layout.local_dim} float32, L2-normalised per location")
    macs = estimate_macs(cfg)
    detail = ", ".join(f"{k} {2 * v / 1e9:.1f}" for k, v in macs.items())
    lines += ["", f"compute     {2 * sum(macs.values()) / 1e9:.1f} GFLOP per image ({detail})"]
    return "\n".join(lines)


def estimate_macs(config: ModelConfig) -> dict[str, float]:
    """Multiply-accumulates per image, by part (trunk, adapters, heads); analytical, from the config.

    Counting a multiply-add as 2 FLOP, ``2 * sum`` is the FLOP count used for
    the speed bounds in the benchmarks.
    """
    spec = config.backbone.spec
    d, depth = spec.embed_dim, spec.depth
    p = config.backbone.patch_size
    gh, gw = config.preprocess.height // p, config.preprocess.width // p
    n_patch = gh * gw
    n = n_patch + 1 + config.backbone.registers
    hidden = int(d * config.backbone.mlp_ratio)
    if spec.ffn == "swiglu":
        h = (int(hidden * 2 / 3) + 7) // 8 * 8
        mlp = n * d * 2 * h + n * h * d
    else:
        mlp = 2 * n * d * hidden
    block = n * d * 3 * d + 2 * n * n * d + n * d * d + mlp
    parts = {"trunk": float(n_patch * 3 * p * p * d + depth * block)}
    assert config.options is not None
    parts.update(config.options.estimate_macs(config, n, (gh, gw)))
    return parts
