"""The four place-recognition methods behind one output contract.

Every model maps a batch of normalised images (B, 3, H, W) to a
:class:`VPROutput`: packed binary codes, L2-normalised float descriptors,
the continuous hash values the codes come from, and (SelaVPR) dense local
features. Retrieval, maps and the node only ever see this contract.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from selavpr_ros.models.adapters import BottleneckAdapter, DynamicPowerNorm, MultiConvAdapter
from selavpr_ros.models.config import DescriptorLayout, ModelConfig
from selavpr_ros.models.heads import (
    CentroidFreeProbing,
    GeMHead,
    LocalUpconvHead,
    SignRandomProjection,
    pack_codes,
)
from selavpr_ros.models.vit import DinoVisionTransformer


@dataclass
class VPROutput:
    """Per-image outputs. ``codes``: (B, bits/8) uint8; ``descriptors``: (B, D);
    ``hash_z``: (B, bits), codes are ``hash_z >= 0``; ``local_features``: (B, h, w, C) or None."""

    codes: Tensor
    descriptors: Tensor
    hash_z: Tensor
    local_features: Tensor | None = None


def build_backbone(config: ModelConfig) -> DinoVisionTransformer:
    bb = config.backbone
    spec = bb.spec
    return DinoVisionTransformer(
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=bb.mlp_ratio,
        ffn=spec.ffn,
        patch_size=bb.patch_size,
        num_register_tokens=bb.registers,
        pretrain_grid=bb.pretrain_grid,
        interpolate_offset=bb.interp_offset,
        interpolate_antialias=bb.interp_antialias,
    )


class VPRModel(nn.Module):
    """Base class: a frozen DINOv2 trunk plus method-specific trainable parts."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config)
        self.code_projection: SignRandomProjection | None = None
        if not config.learned_codes:
            self.code_projection = SignRandomProjection(config.float_dim, config.codes.bits, config.codes.seed)

    # -- contract -----------------------------------------------------------
    @property
    def layout(self) -> DescriptorLayout:
        return self.config.layout()

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Return ``(descriptors, hash_z or None, local_features or None)``."""
        raise NotImplementedError

    def forward(self, images: Tensor) -> VPROutput:
        descriptors, hash_z, local = self.encode(images)
        if hash_z is None:
            hash_z = self.code_projection(descriptors)
        return VPROutput(pack_codes(hash_z), descriptors, hash_z, local)

    # -- training policy ----------------------------------------------------
    def is_trainable(self, name: str) -> bool:
        """Whether parameter ``name`` is trained (the trunk is frozen in every method)."""
        return not name.startswith("backbone.")

    def freeze_backbone(self) -> VPRModel:
        for name, param in self.named_parameters():
            param.requires_grad_(self.is_trainable(name))
        return self

    def init_trainable(self) -> VPRModel:
        """Initialise adapters so that training starts from the plain foundation model."""
        for module in self.modules():
            if hasattr(module, "zero_init"):
                module.zero_init()
        return self

    def grid(self, images: Tensor) -> tuple[int, int]:
        return self.backbone.grid_size(images.shape[-2], images.shape[-1])


class DinoGeM(VPRModel):
    """Frozen DINOv2 with GeM pooling: the papers' baseline row."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        g = config.dinov2_gem.gem
        self.head = GeMHead(self.backbone.embed_dim, p=g.p, eps=g.eps)

    def encode(self, images: Tensor):
        patches = self.backbone(images)["patches"]
        return self.head(patches), None, None


class SelaVPR(VPRModel):
    """SelaVPR: serial and parallel adapters in every block (global adaptation)
    and an up-convolution head for dense local features (local adaptation)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        cfg = config.selavpr
        dim = self.backbone.embed_dim
        for block in self.backbone.blocks:
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


class SelaVPRPlusPlus(VPRModel):
    """SelaVPR++: MultiConv side adapters refine a frozen trunk run without a graph.

    The side state ``y`` starts at the trunk output of block ``side_start - 1``
    (the token embedding when ``side_start`` is 0) and for every later block
    ``i`` becomes ``y + MCA_i(y + x_i)``. The float and hash branches each have
    their own side chain and head.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        cfg = config.selavprpp
        dim = self.backbone.embed_dim
        n_side = self.backbone.depth - config.side_start
        channels = config.mca_channels
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
        start = self.config.side_start
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
            descriptors = self.float_head(self._run_chain(self.float_adapters, seed, taps, grid))
        if self.hash_adapters is not None:
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


class EMVP(VPRModel):
    """EMVP: DPN_R recalibration after each of the last blocks (sequential),
    trainable final norm, centroid-free probing head with DPN_C."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        cfg = config.emvp
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


MODEL_CLASSES: dict[str, type[VPRModel]] = {
    "dinov2-gem": DinoGeM,
    "selavpr": SelaVPR,
    "selavpr++": SelaVPRPlusPlus,
    "emvp": EMVP,
}


def build_model(config: ModelConfig, init_trainable: bool = True) -> VPRModel:
    """Instantiate the model for ``config`` with a frozen trunk.

    Trunk weights are random until loaded (see :mod:`selavpr_ros.models.weights`);
    with ``init_trainable`` adapters start as identity (zero up-projections).
    """
    model = MODEL_CLASSES[config.method](config)
    if init_trainable:
        model.init_trainable()
    return model.freeze_backbone()
