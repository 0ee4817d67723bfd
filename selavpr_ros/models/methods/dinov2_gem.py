"""Frozen DINOv2 with GeM pooling: the papers' baseline row, and the home of DINOv2 trunk imports.

``import-checkpoint dinov2`` turns an official ``dinov2_vit*14*_pretrain.pth``
into this baseline, or (with ``--config``) into any method whose trainable
parts then start from their training initialisation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from selavpr_ros.models.config import GeMConfig, MethodConfig, ModelConfig
from selavpr_ros.models.heads import GeMHead
from selavpr_ros.models.importers import backbone_section, unwrap_state_dict
from selavpr_ros.models.registry import MethodSpec, register_method
from selavpr_ros.models.vpr import VPRModel, build_model
from selavpr_ros.models.weights import infer_backbone, load_dinov2_pretrain, read_weights_file, resolve_weights


@dataclass
class DinoGeMConfig(MethodConfig):
    """The frozen baseline: DINOv2 patch tokens, per-location L2, GeM, L2."""

    gem: GeMConfig = field(default_factory=GeMConfig)


class DinoGeM(VPRModel):
    """Frozen DINOv2 with GeM pooling."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        g = config.section(DinoGeMConfig).gem
        self.head = GeMHead(self.backbone.embed_dim, p=g.p, eps=g.eps)

    def encode(self, images: Tensor):
        patches = self.backbone(images)["patches"]
        return self.head(patches), None, None


def is_dinov2_release(sd: dict[str, Any]) -> bool:
    return "cls_token" in sd and "pos_embed" in sd


def import_dinov2(
    path: str | os.PathLike, config: ModelConfig | None = None, size: tuple[int, int] | None = None
) -> VPRModel:
    """DINOv2 pretrain file -> a model with that trunk.

    Without ``config`` the result is the frozen DINOv2-GeM baseline; with one
    (any method), its trainable parts start from their training initialisation.
    """
    path = resolve_weights(path)
    if config is None:
        info = infer_backbone(unwrap_state_dict(read_weights_file(path)))
        config = ModelConfig.from_dict(
            {
                "method": "dinov2-gem",
                "name": f"dinov2-gem-{info['arch']}",
                "backbone": backbone_section(info, str(path)),
            }
        )
    if size is not None:
        config = config.with_input(*size)
    model = build_model(config)
    load_dinov2_pretrain(model.backbone, config.backbone, path)
    return model.eval()


SPEC = register_method(
    MethodSpec(
        name="dinov2-gem",
        section="dinov2_gem",
        config=DinoGeMConfig,
        model=DinoGeM,
        release="dinov2",
        importer=import_dinov2,
        detect=is_dinov2_release,
        summary="frozen DINOv2 + GeM (baseline)",
    )
)
