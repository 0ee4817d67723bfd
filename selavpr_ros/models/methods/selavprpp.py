"""SelaVPR++ (T-PAMI 2025): MultiConv side adapters refine a frozen trunk run without a
graph; a float branch and/or a hash branch, each with its own side chain and head.

Releases: base/large, float-only (``SelaVPRplusplus_{base,large}.pth``) and binary +
re-rank (``..._rerank.pth``), named ``selavpr++/base``, ``selavpr++/large_rerank``, ...
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from selavpr_ros.config import check
from selavpr_ros.errors import CheckpointError
from selavpr_ros.models.adapters import MultiConvAdapter
from selavpr_ros.models.config import GeMConfig, MethodConfig, ModelConfig
from selavpr_ros.models.heads import GeMHead
from selavpr_ros.models.importers import Rule, backbone_section, load_mapped, read_release, remap
from selavpr_ros.models.registry import MethodSpec, register_method
from selavpr_ros.models.vpr import VPRModel, build_model

# Float descriptor width of the reference per trunk.
_FLOAT_DIMS = {"vits14": 1024, "vitb14": 2048, "vitl14": 4096, "vitg14": 4096}
# Trunk blocks before the side chain starts in the reference (others start at 0).
_SIDE_STARTS = {"vitl14": 8, "vitg14": 24}


@dataclass
class SelaVPRPlusPlusConfig(MethodConfig):
    """MultiConv side adapters on a frozen trunk, float and/or hash branch.

    ``side_start`` = number of trunk blocks whose output seeds the side state
    (null: ViT-L 8, ViT-g 24, else 0, as in the reference). ``mca_channels`` are
    the MultiConv widths (hidden, 1x1, 3x3-reduce, 3x3, 5x5-reduce, 5x5); null
    derives them from the embedding width as the reference does for B and L.
    Both are filled in when the model configuration is built.
    """

    branches: list[Literal["float", "hash"]] = field(default_factory=lambda: ["float", "hash"])
    side_start: int | None = None
    mca_channels: tuple[int, int, int, int, int, int] | None = None
    float_dim: int | None = None
    bn_eps: float = 1e-3
    gem: GeMConfig = field(default_factory=GeMConfig)

    def __post_init__(self) -> None:
        check(len(self.branches) > 0, "selavpr++.branches must name at least one of float, hash")
        check(len(set(self.branches)) == len(self.branches), "selavpr++.branches has duplicates")
        if self.mca_channels is not None:
            hidden, c1, _, c3, _, c5 = self.mca_channels
            check(c1 + c3 + c5 == hidden, "selavpr++.mca_channels: 1x1 + 3x3 + 5x5 widths must equal hidden")

    def resolve(self, model: ModelConfig) -> None:
        depth = model.backbone.spec.depth
        if self.side_start is None:
            self.side_start = _SIDE_STARTS.get(model.backbone.arch, 0)
        check(0 <= self.side_start < depth, f"selavpr++.side_start must be in [0, {depth - 1}], got {self.side_start}")
        if self.mca_channels is None:
            hidden = model.backbone.spec.embed_dim // 2
            self.mca_channels = (hidden, hidden // 2, hidden // 16, hidden // 4, hidden // 16, hidden // 4)
        self.mca_channels = tuple(self.mca_channels)  # type: ignore[assignment]

    def descriptor_dim(self, model: ModelConfig) -> int:
        if "float" not in self.branches:
            return model.codes.bits
        if self.float_dim is not None:
            return self.float_dim
        return _FLOAT_DIMS.get(model.backbone.arch, 2 * model.backbone.spec.embed_dim)

    @property
    def learned_codes(self) -> bool:
        return "hash" in self.branches

    def estimate_macs(self, model: ModelConfig, tokens: int, grid: tuple[int, int]) -> dict[str, float]:
        assert self.mca_channels is not None and self.side_start is not None
        d, depth = model.backbone.spec.embed_dim, model.backbone.spec.depth
        n_patch = grid[0] * grid[1]
        c, b1, b3r, b3, b5r, b5 = self.mca_channels
        mca = tokens * d * c * 2 + n_patch * (c * (b1 + b3r + b5r) + b3r * b3 * 9 + b5r * b5 * 25)
        heads = 0
        if "float" in self.branches:
            heads += n_patch * d * d + d * self.descriptor_dim(model)
        if "hash" in self.branches:
            heads += n_patch * d * d + d * model.codes.bits
        return {"adapters": float(len(self.branches) * (depth - self.side_start) * mca), "heads": float(heads)}


class SelaVPRPlusPlus(VPRModel):
    """MultiConv side adapters refine a frozen trunk run without a graph.

    The side state ``y`` starts at the trunk output of block ``side_start - 1``
    (the token embedding when ``side_start`` is 0) and for every later block
    ``i`` becomes ``y + MCA_i(y + x_i)``. The float and hash branches each have
    their own side chain and head.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        cfg = config.section(SelaVPRPlusPlusConfig)
        assert cfg.side_start is not None and cfg.mca_channels is not None
        self.side_start = cfg.side_start
        dim = self.backbone.embed_dim
        n_side = self.backbone.depth - cfg.side_start
        channels = cfg.mca_channels
        prefix = self.backbone.num_prefix_tokens

        def chain() -> nn.ModuleList:
            return nn.ModuleList(MultiConvAdapter(dim, channels, prefix, cfg.bn_eps) for _ in range(n_side))

        self.float_adapters = chain() if "float" in cfg.branches else None
        self.float_head = (
            GeMHead(dim, config.float_dim, project_in=True, p=cfg.gem.p, eps=cfg.gem.eps)
            if "float" in cfg.branches
            else None
        )
        self.hash_adapters = chain() if "hash" in cfg.branches else None
        self.hash_head = (
            GeMHead(dim, config.codes.bits, project_in=True, p=cfg.gem.p, eps=cfg.gem.eps)
            if "hash" in cfg.branches
            else None
        )

    def trunk(self, images: Tensor) -> tuple[Tensor, list[Tensor], tuple[int, int]]:
        """Frozen part: the side chain's seed and the block outputs it consumes.

        Runs without an autograd graph, so training memory does not grow with
        trunk depth; the result can also be cached on disk between epochs.
        """
        grid = self.grid(images)
        start = self.side_start
        with torch.no_grad():
            tokens = self.backbone.prepare_tokens(images)
            _, taps = self.backbone.run_blocks(tokens, keep_from=max(start - 1, 0))
        if start == 0:
            return tokens, taps, grid
        return taps[0], taps[1:], grid

    def side(self, seed: Tensor, taps: list[Tensor], grid: tuple[int, int]):
        """Trainable part: side chains and heads on top of :meth:`trunk` outputs."""
        descriptors = hash_z = None
        if self.float_adapters is not None:
            assert self.float_head is not None  # made together with the float adapters
            descriptors = self.float_head(self._run_chain(self.float_adapters, seed, taps, grid))
        if self.hash_adapters is not None:
            assert self.hash_head is not None  # made together with the hash adapters
            hash_z = self.hash_head(self._run_chain(self.hash_adapters, seed, taps, grid))
            if descriptors is None:
                descriptors = hash_z
        return descriptors, hash_z, None

    def _run_chain(self, adapters: nn.ModuleList, y: Tensor, taps: list[Tensor], grid: tuple[int, int]) -> Tensor:
        for adapter, x in zip(adapters, taps):
            y = y + adapter(y + x, grid)
        _, patches = self.backbone.split_tokens(self.backbone.norm(y), grid)
        return patches

    def encode(self, images: Tensor):
        return self.side(*self.trunk(images))


# -- released weights -------------------------------------------------------------------
_HUB = "https://huggingface.co/fenglu96/SelaVPRplusplus/resolve/main/"
WEIGHTS = {
    "base": _HUB + "SelaVPRplusplus_base.pth",
    "base_rerank": _HUB + "SelaVPRplusplus_base_rerank.pth",
    "large": _HUB + "SelaVPRplusplus_large.pth",
    "large_rerank": _HUB + "SelaVPRplusplus_large_rerank.pth",
}

_MCA = {
    "D_fc1": "down",
    "D_fc2": "up",
    "branch1": "branch1x1",
    "branch2.0": "branch3x3.0",
    "branch2.1": "branch3x3.1",
    "branch3.0": "branch5x5.0",
    "branch3.1": "branch5x5.1",
}
_MCA_PART = "|".join(re.escape(k) for k in sorted(_MCA, key=len, reverse=True))


def _mca_rule(chain: str) -> Callable[[re.Match[str]], str]:
    return lambda m: f"{chain}.{m[1]}.{_MCA[m[2]]}.{m[3]}"


RULES: list[Rule] = [
    (rf"^backbone\.adapters\.(\d+)\.({_MCA_PART})\.(.+)$", _mca_rule("float_adapters")),
    (rf"^backbone\.adapters_hashing\.(\d+)\.({_MCA_PART})\.(.+)$", _mca_rule("hash_adapters")),
    (r"^backbone\.(.+)$", r"backbone.\1"),
    (r"^linear1\.(weight|bias)$", r"float_head.proj_in.\1"),
    (r"^linear2\.(weight|bias)$", r"float_head.proj_out.\1"),
    (r"^aggregation\.1\.p$", r"float_head.gem.p"),
    (r"^linear3\.(weight|bias)$", r"hash_head.proj_in.\1"),
    (r"^linear4\.(weight|bias)$", r"hash_head.proj_out.\1"),
    (r"^aggregation_hashing\.1\.p$", r"hash_head.gem.p"),
]


def is_selavprpp_release(sd: dict[str, Any]) -> bool:
    return any(k.startswith("backbone.adapters.") or k.startswith("backbone.adapters_hashing.") for k in sd)


def import_selavprpp(
    path: str | os.PathLike, config: ModelConfig | None = None, size: tuple[int, int] | None = None
) -> VPRModel:
    """SelaVPR++ release (float-only or binary + re-rank) -> :class:`SelaVPRPlusPlus`.

    The releases are evaluated at 322 x 322 (trained at 224), so that is the default input.
    """
    if config is not None:
        raise CheckpointError("--config applies to dinov2 imports only; a selavpr++ release fixes its own model")
    height, width = size or (322, 322)
    path, sd, info = read_release(path, is_selavprpp_release, "SelaVPR++ release (no backbone.adapters weights)")
    branches = []
    if any(k.startswith("backbone.adapters.") for k in sd):
        branches.append("float")
    if any(k.startswith("backbone.adapters_hashing.") for k in sd):
        branches.append("hash")
    n_side = len({k.split(".")[2] for k in sd if k.startswith("backbone.adapters")})
    prefix = "backbone.adapters." if "float" in branches else "backbone.adapters_hashing."
    mca = (
        sd[prefix + "0.D_fc1.weight"].shape[0],
        sd[prefix + "0.branch1.conv.weight"].shape[0],
        sd[prefix + "0.branch2.0.conv.weight"].shape[0],
        sd[prefix + "0.branch2.1.conv.weight"].shape[0],
        sd[prefix + "0.branch3.0.conv.weight"].shape[0],
        sd[prefix + "0.branch3.1.conv.weight"].shape[0],
    )
    section: dict[str, Any] = {"branches": branches, "side_start": info["depth"] - n_side, "mca_channels": list(mca)}
    if "float" in branches:
        section["float_dim"] = sd["linear2.weight"].shape[0]
    codes = {"bits": sd["linear4.weight"].shape[0]} if "hash" in branches else {}
    model_config = ModelConfig.from_dict(
        {
            "method": "selavpr++",
            "name": f"selavpr++-{Path(path).stem}",
            "backbone": backbone_section(info, str(path), pos_interp_offset=0.1, pos_interp_antialias=False),
            "preprocess": {"height": height, "width": width},
            "codes": codes,
            "selavprpp": section,
        }
    )
    return load_mapped(build_model(model_config), remap(sd, RULES, str(path)), str(path)).eval()


SPEC = register_method(
    MethodSpec(
        name="selavpr++",
        section="selavprpp",
        config=SelaVPRPlusPlusConfig,
        model=SelaVPRPlusPlus,
        release="selavpr++",
        importer=import_selavprpp,
        detect=is_selavprpp_release,
        weights=WEIGHTS,
        summary="SelaVPR++: side adapters, float + learned hash branches",
    )
)
