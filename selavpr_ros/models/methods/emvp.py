"""EMVP (NeurIPS 2024): centroid-free probing with dynamic power normalisation (DPN_C)
and sequential DPN_R recalibration after each of the last trunk blocks."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from selavpr_ros.config import check
from selavpr_ros.models.adapters import DynamicPowerNorm
from selavpr_ros.models.config import MethodConfig, ModelConfig
from selavpr_ros.models.heads import CentroidFreeProbing
from selavpr_ros.models.registry import MethodSpec, register_method
from selavpr_ros.models.vpr import VPRModel


@dataclass
class EMVPConfig(MethodConfig):
    """Centroid-free probing (``clusters`` x ``cluster_dim`` + a ``token_dim`` class-token
    branch) and DPN_R recalibration after the last ``recalib_blocks`` blocks."""

    clusters: int = 64
    cluster_dim: int = 128
    token_dim: int = 256
    hidden: int = 512
    dropout: float = 0.3
    recalib_blocks: int = 4
    recalib_hidden: int = 16
    remove_mean: bool = True
    eps: float = 1e-6

    def __post_init__(self) -> None:
        check(self.clusters > 0 and self.cluster_dim > 0 and self.token_dim >= 0, "emvp: sizes must be positive")
        check(self.recalib_blocks >= 0, "emvp.recalib_blocks must be >= 0")
        check(0 <= self.dropout < 1, "emvp.dropout must be in [0, 1)")

    def resolve(self, model: ModelConfig) -> None:
        depth = model.backbone.spec.depth
        check(self.recalib_blocks <= depth, f"emvp.recalib_blocks {self.recalib_blocks} exceeds backbone depth {depth}")

    def descriptor_dim(self, model: ModelConfig) -> int:
        return self.clusters * self.cluster_dim + self.token_dim

    def estimate_macs(self, model: ModelConfig, tokens: int, grid: tuple[int, int]) -> dict[str, float]:
        d = model.backbone.spec.embed_dim
        n_patch = grid[0] * grid[1]
        return {
            "adapters": float(self.recalib_blocks * (d * self.recalib_hidden)),
            "heads": float(
                n_patch * (2 * d * self.hidden + self.hidden * (self.cluster_dim + self.clusters))
                + self.cluster_dim * self.clusters * n_patch
            ),
        }


class EMVP(VPRModel):
    """DPN_R recalibration after each of the last blocks (sequential), trainable final
    norm, centroid-free probing head with DPN_C."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        cfg = config.section(EMVPConfig)
        dim = self.backbone.embed_dim
        self.recalibration = nn.ModuleList(
            DynamicPowerNorm(dim, cfg.recalib_hidden, dropout=0.1, eps=cfg.eps) for _ in range(cfg.recalib_blocks)
        )
        self.head = CentroidFreeProbing(
            dim,
            clusters=cfg.clusters,
            cluster_dim=cfg.cluster_dim,
            token_dim=cfg.token_dim,
            hidden=cfg.hidden,
            dropout=cfg.dropout,
            remove_mean=cfg.remove_mean,
            eps=cfg.eps,
        )

    def is_trainable(self, name: str) -> bool:
        return super().is_trainable(name) or name.startswith("backbone.norm.")

    def encode(self, images: Tensor):
        grid = self.grid(images)
        first = self.backbone.depth - len(self.recalibration)

        def recalibrate(i: int, x: Tensor) -> Tensor:
            return self.recalibration[i - first](x) if i >= first else x

        # Blocks before the first recalibrated one are frozen and need no graph.
        no_graph = torch.no_grad() if first > 0 else contextlib.nullcontext()
        with no_graph:
            x, _ = self.backbone.run_blocks(self.backbone.prepare_tokens(images), stop=first)
        x, _ = self.backbone.run_blocks(x, start=first, after_block=recalibrate)
        cls, patches = self.backbone.split_tokens(self.backbone.norm(x), grid)
        return self.head(patches, cls), None, None


SPEC = register_method(
    MethodSpec(name="emvp", section="emvp", config=EMVPConfig, model=EMVP, summary="EMVP: CFP + DPN probing")
)
