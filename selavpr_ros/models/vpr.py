"""The output contract every place-recognition method implements, and its base class.

Every model maps a batch of normalised images (B, 3, H, W) to a
:class:`VPROutput`: packed binary codes, L2-normalised float descriptors,
the continuous hash values the codes come from, and (SelaVPR) dense local
features. Retrieval, maps and the node only ever see this contract. The
methods themselves are in ``selavpr_ros/models/methods/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from selavpr_ros.models.config import ModelConfig
from selavpr_ros.models.heads import SignRandomProjection, pack_codes
from selavpr_ros.models.registry import get_method
from selavpr_ros.models.vit import DinoVisionTransformer
from selavpr_ros.types import DescriptorLayout


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

    checkpoint_fingerprint: str  # set by Checkpoint.build on models loaded from a checkpoint

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
            assert self.code_projection is not None  # set whenever the method has no learned codes
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
            zero_init = getattr(module, "zero_init", None)
            if zero_init is not None:
                zero_init()
        return self

    def grid(self, images: Tensor) -> tuple[int, int]:
        return self.backbone.grid_size(images.shape[-2], images.shape[-1])


def build_model(config: ModelConfig, init_trainable: bool = True) -> VPRModel:
    """Instantiate the model for ``config`` (its method's registered class) with a frozen trunk.

    Trunk weights are random until loaded (see :mod:`selavpr_ros.models.weights`);
    with ``init_trainable`` adapters start as identity (zero up-projections).
    """
    model = get_method(config.method).model(config)
    if init_trainable:
        model.init_trainable()
    return model.freeze_backbone()
