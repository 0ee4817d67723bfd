"""SelaVPR (ICLR 2024): global adaptation by adapters in every block, local adaptation by an
up-convolution head whose dense features re-rank candidates by mutual nearest neighbours.

Release: ``{"model_state_dict": ...}`` with ``module.`` prefixes, ViT-L/14 with or
without registers (the ``import-checkpoint selavpr`` kind).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from selavpr_ros.config import check
from selavpr_ros.errors import CheckpointError
from selavpr_ros.models.adapters import BottleneckAdapter
from selavpr_ros.models.config import GeMConfig, MethodConfig, ModelConfig
from selavpr_ros.models.heads import GeMHead, LocalUpconvHead
from selavpr_ros.models.importers import Rule, backbone_section, load_mapped, read_release, remap
from selavpr_ros.models.registry import MethodSpec, register_method
from selavpr_ros.models.vit import Block
from selavpr_ros.models.vpr import VPRModel, build_model


@dataclass
class SelaVPRConfig(MethodConfig):
    """Serial + parallel bottleneck adapters in every block, GeM global head, up-convolution local head."""

    adapter_ratio: float = 0.5
    parallel_scale: float = 0.2
    local_hidden: int = 256
    local_dim: int = 128
    gem: GeMConfig = field(default_factory=GeMConfig)

    def __post_init__(self) -> None:
        check(0 < self.adapter_ratio <= 4, "selavpr.adapter_ratio must be in (0, 4]")
        check(self.local_hidden > 0 and self.local_dim > 0, "selavpr: local head sizes must be positive")

    def local_shape(self, model: ModelConfig) -> tuple[int, int, int]:
        # Two stride-2 transposed convolutions give 4g - 3 cells per side of a g-patch grid.
        gh, gw = model.patch_grid
        return (4 * gh - 3, 4 * gw - 3, self.local_dim)

    def estimate_macs(self, model: ModelConfig, tokens: int, grid: tuple[int, int]) -> dict[str, float]:
        d, depth = model.backbone.spec.embed_dim, model.backbone.spec.depth
        gh, gw = grid
        r = int(d * self.adapter_ratio)
        c1 = self.local_hidden
        return {
            "adapters": float(depth * 2 * 2 * tokens * d * r),
            "local_head": float(gh * gw * d * c1 * 9 + (2 * gh - 1) * (2 * gw - 1) * c1 * self.local_dim * 9),
        }


class SelaVPR(VPRModel):
    """Serial and parallel adapters in every block (global adaptation) and an
    up-convolution head for dense local features (local adaptation)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        cfg = config.section(SelaVPRConfig)
        dim = self.backbone.embed_dim
        for block in self.backbone.blocks:
            assert isinstance(block, Block)  # the trunk's blocks (a ModuleList yields plain Modules)
            block.serial_adapter = BottleneckAdapter(dim, cfg.adapter_ratio, residual=True)
            block.parallel_adapter = BottleneckAdapter(dim, cfg.adapter_ratio, residual=False)
            block.parallel_scale = cfg.parallel_scale
        self.global_head = GeMHead(dim, p=cfg.gem.p, eps=cfg.gem.eps)
        self.local_head = LocalUpconvHead(dim, cfg.local_hidden, cfg.local_dim)

    def is_trainable(self, name: str) -> bool:
        return super().is_trainable(name) or "_adapter." in name

    def encode(self, images: Tensor):
        patches = self.backbone(images)["patches"]
        return self.global_head(patches), None, self.local_head(patches)


RULES: list[Rule] = [
    (r"^backbone\.blocks\.(\d+)\.adapter1\.D_fc1\.(weight|bias)$", r"backbone.blocks.\1.serial_adapter.down.\2"),
    (r"^backbone\.blocks\.(\d+)\.adapter1\.D_fc2\.(weight|bias)$", r"backbone.blocks.\1.serial_adapter.up.\2"),
    (r"^backbone\.blocks\.(\d+)\.adapter2\.D_fc1\.(weight|bias)$", r"backbone.blocks.\1.parallel_adapter.down.\2"),
    (r"^backbone\.blocks\.(\d+)\.adapter2\.D_fc2\.(weight|bias)$", r"backbone.blocks.\1.parallel_adapter.up.\2"),
    (r"^backbone\.(.+)$", r"backbone.\1"),
    (r"^aggregation\.1\.p$", r"global_head.gem.p"),
    (r"^LocalAdapt\.(upconv[12])\.(weight|bias)$", r"local_head.\1.\2"),
]


def is_selavpr_release(sd: dict[str, Any]) -> bool:
    return any(".adapter1.D_fc1." in k for k in sd) and any(k.startswith("LocalAdapt.") for k in sd)


def import_selavpr(
    path: str | os.PathLike, config: ModelConfig | None = None, size: tuple[int, int] | None = None
) -> VPRModel:
    """SelaVPR release -> :class:`SelaVPR` (224 x 224 unless ``size``)."""
    if config is not None:
        raise CheckpointError("--config applies to dinov2 imports only; a selavpr release fixes its own model")
    height, width = size or (224, 224)
    path, sd, info = read_release(path, is_selavpr_release, "SelaVPR release (no adapter1/LocalAdapt weights)")
    model_config = ModelConfig.from_dict(
        {
            "method": "selavpr",
            "name": f"selavpr-{Path(path).stem}",
            # The reference builds every trunk, registers too, with offset 0.1 and no antialias.
            "backbone": backbone_section(info, str(path), pos_interp_offset=0.1, pos_interp_antialias=False),
            "preprocess": {"height": height, "width": width},
            "selavpr": {
                "adapter_ratio": sd["backbone.blocks.0.adapter1.D_fc1.weight"].shape[0] / info["embed_dim"],
                "local_hidden": sd["LocalAdapt.upconv1.weight"].shape[1],
                "local_dim": sd["LocalAdapt.upconv2.weight"].shape[1],
            },
        }
    )
    return load_mapped(build_model(model_config), remap(sd, RULES, str(path)), str(path)).eval()


SPEC = register_method(
    MethodSpec(
        name="selavpr",
        section="selavpr",
        config=SelaVPRConfig,
        model=SelaVPR,
        release="selavpr",
        importer=import_selavpr,
        detect=is_selavpr_release,
        summary="SelaVPR: in-block adapters + local features",
    )
)
