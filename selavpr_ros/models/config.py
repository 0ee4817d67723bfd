"""Model configuration: which method, which backbone, which heads, which input.

One :class:`ModelConfig` describes a model completely; it is stored inside
every checkpoint and ONNX file so that a model file is self-describing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from selavpr_ros.config import check, from_dict, load_config, to_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Method = Literal["selavpr", "selavpr++", "emvp", "dinov2-gem"]
METHODS: tuple[str, ...] = ("selavpr", "selavpr++", "emvp", "dinov2-gem")


@dataclass(frozen=True)
class BackboneSpec:
    """Shape of a DINOv2 trunk."""

    embed_dim: int
    depth: int
    num_heads: int
    ffn: str = "mlp"


BACKBONES: dict[str, BackboneSpec] = {
    "vits14": BackboneSpec(384, 12, 6),
    "vitb14": BackboneSpec(768, 12, 12),
    "vitl14": BackboneSpec(1024, 24, 16),
    "vitg14": BackboneSpec(1536, 40, 24, "swiglu"),
}
ARCH_NAMES = {"vits14": "ViT-S/14", "vitb14": "ViT-B/14", "vitl14": "ViT-L/14", "vitg14": "ViT-g/14"}

# Official DINOv2 weights (facebookresearch/dinov2 hub URLs).
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_{arch}/dinov2_{arch}{reg}_pretrain.pth"


@dataclass
class BackboneConfig:
    """DINOv2 trunk. ``arch: custom`` takes explicit sizes (small models for tests and robots)."""

    arch: Literal["vits14", "vitb14", "vitl14", "vitg14", "custom"] = "vitb14"
    registers: int = 0
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    ffn: Literal["mlp", "swiglu"] | None = None
    mlp_ratio: float = 4.0
    patch_size: int = 14
    pretrain_grid: int = 37
    # Position-embedding interpolation. null = as the official hub model of this
    # variant (offset 0.1, no antialias; register models: offset 0, antialias).
    pos_interp_offset: float | None = None
    pos_interp_antialias: bool | None = None
    # Pretrained weights: a local .pth path, an http(s) URL, "official" (the
    # DINOv2 release for this arch, downloaded once), or null (random init).
    weights: str | None = None

    def __post_init__(self) -> None:
        check(self.registers in (0, 4), f"backbone.registers: DINOv2 has 0 or 4 register tokens, got {self.registers}")
        custom = (self.embed_dim, self.depth, self.num_heads, self.ffn)
        if self.arch == "custom":
            check(
                self.embed_dim is not None and self.depth is not None and self.num_heads is not None,
                "backbone: arch 'custom' needs embed_dim, depth and num_heads",
            )
        else:
            check(
                all(v is None for v in custom),
                f"backbone: embed_dim/depth/num_heads/ffn are fixed by arch {self.arch!r}; "
                "use arch: custom to set them",
            )
        spec = self.spec
        check(spec.embed_dim > 0 and spec.depth > 0 and spec.num_heads > 0, "backbone: sizes must be positive")
        check(spec.embed_dim % spec.num_heads == 0, "backbone.embed_dim must be divisible by num_heads")
        check(self.patch_size > 0 and self.pretrain_grid > 0, "backbone: patch_size and pretrain_grid must be positive")
        check(self.mlp_ratio > 0, "backbone.mlp_ratio must be positive")

    @property
    def spec(self) -> BackboneSpec:
        if self.arch == "custom":
            return BackboneSpec(self.embed_dim or 0, self.depth or 0, self.num_heads or 0, self.ffn or "mlp")
        return BACKBONES[self.arch]

    @property
    def interp_offset(self) -> float:
        if self.pos_interp_offset is not None:
            return self.pos_interp_offset
        return 0.0 if self.registers else 0.1

    @property
    def interp_antialias(self) -> bool:
        if self.pos_interp_antialias is not None:
            return self.pos_interp_antialias
        return bool(self.registers)

    @property
    def display_name(self) -> str:
        if self.arch == "custom":
            s = self.spec
            name = f"ViT-custom(D={s.embed_dim}, depth={s.depth}, heads={s.num_heads})/{self.patch_size}"
        else:
            name = ARCH_NAMES[self.arch]
        return name + (f"+reg{self.registers}" if self.registers else "")

    def official_url(self) -> str:
        check(self.arch != "custom", "backbone.weights: 'official' needs a named arch, not 'custom'")
        return DINOV2_URL.format(arch=self.arch, reg=f"_reg{self.registers}" if self.registers else "")


@dataclass
class PreprocessConfig:
    """Input policy. Images are resized to ``height x width`` (multiples of the patch size).

    ``stretch`` resizes without keeping the aspect ratio (the papers' protocol);
    ``center_crop`` first crops the largest centred window of the target aspect
    ratio. Grey images are replicated to RGB; an alpha channel is dropped.
    ``normalize: imagenet`` subtracts ``mean`` and divides by ``std`` (what
    DINOv2 was trained with); ``per_image`` standardises each image to zero
    mean and unit variance, which removes global illumination changes (used by
    the small demo model, whose trunk has no pretraining to rely on).
    """

    height: int = 224
    width: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: Literal["stretch", "center_crop"] = "stretch"
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    normalize: Literal["imagenet", "per_image"] = "imagenet"

    def __post_init__(self) -> None:
        check(self.height > 0 and self.width > 0, f"preprocess: size must be positive, got {self.height}x{self.width}")
        check(all(s > 0 for s in self.std), "preprocess.std must be positive")


@dataclass
class CodesConfig:
    """Binary codes for stage-1 retrieval.

    Methods with a learned hash branch (SelaVPR++ with ``hash``) use its sign.
    Others binarise the float descriptor with a fixed random projection
    (sign random projection, which preserves angles), drawn from ``seed``.
    """

    bits: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.bits > 0 and self.bits % 8 == 0, f"codes.bits must be a positive multiple of 8, got {self.bits}")


@dataclass
class GeMConfig:
    p: float = 3.0
    eps: float = 1e-6

    def __post_init__(self) -> None:
        check(self.p > 0 and self.eps > 0, "gem: p and eps must be positive")


@dataclass
class SelaVPRConfig:
    """SelaVPR: serial + parallel bottleneck adapters in every block, GeM global head,
    up-convolution local head."""

    adapter_ratio: float = 0.5
    parallel_scale: float = 0.2
    local_hidden: int = 256
    local_dim: int = 128
    gem: GeMConfig = field(default_factory=GeMConfig)

    def __post_init__(self) -> None:
        check(0 < self.adapter_ratio <= 4, "selavpr.adapter_ratio must be in (0, 4]")
        check(self.local_hidden > 0 and self.local_dim > 0, "selavpr: local head sizes must be positive")


@dataclass
class SelaVPRPlusPlusConfig:
    """SelaVPR++: MultiConv side adapters on a frozen trunk, float and/or hash branch.

    ``side_start`` = number of trunk blocks whose output seeds the side state
    (ViT-L: 8, ViT-B: 0, as in the reference). ``mca_channels`` are the
    MultiConv widths (hidden, 1x1, 3x3-reduce, 3x3, 5x5-reduce, 5x5); null
    derives them from the embedding width as the reference does for B and L.
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


@dataclass
class EMVPConfig:
    """EMVP: centroid-free probing with dynamic power normalisation (DPN_C)
    and sequential DPN_R recalibration after the last ``recalib_blocks`` blocks."""

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


@dataclass
class DinoGeMConfig:
    """The frozen baseline: DINOv2 patch tokens, per-location L2, GeM, L2."""

    gem: GeMConfig = field(default_factory=GeMConfig)


METHOD_SECTIONS = {
    "selavpr": "selavpr",
    "selavpr++": "selavprpp",
    "emvp": "emvp",
    "dinov2-gem": "dinov2_gem",
}


@dataclass
class ModelConfig:
    """A complete model description. Exactly the section named by ``method`` is used."""

    method: Method
    name: str = ""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    codes: CodesConfig = field(default_factory=CodesConfig)
    selavpr: SelaVPRConfig | None = None
    selavprpp: SelaVPRPlusPlusConfig | None = None
    emvp: EMVPConfig | None = None
    dinov2_gem: DinoGeMConfig | None = None

    def __post_init__(self) -> None:
        section = METHOD_SECTIONS[self.method]
        for method, other in METHOD_SECTIONS.items():
            check(
                other == section or getattr(self, other) is None,
                f"section '{other}' is for method {method!r}, but method is {self.method!r}",
            )
        if getattr(self, section) is None:
            defaults = {
                "selavpr": SelaVPRConfig,
                "selavprpp": SelaVPRPlusPlusConfig,
                "emvp": EMVPConfig,
                "dinov2_gem": DinoGeMConfig,
            }
            setattr(self, section, defaults[section]())
        p = self.backbone.patch_size
        check(
            self.preprocess.height % p == 0 and self.preprocess.width % p == 0,
            f"preprocess: input size {self.preprocess.height}x{self.preprocess.width} must be a multiple "
            f"of the patch size {p} (e.g. 224 or 322)",
        )
        if self.method == "selavpr++":
            depth = self.backbone.spec.depth
            start = self.side_start
            check(0 <= start < depth, f"selavpr++.side_start must be in [0, {depth - 1}], got {start}")
        if self.method == "emvp":
            check(
                self.emvp.recalib_blocks <= self.backbone.spec.depth,
                f"emvp.recalib_blocks {self.emvp.recalib_blocks} exceeds backbone depth {self.backbone.spec.depth}",
            )

    # -- derived quantities -------------------------------------------------
    @property
    def method_config(self):
        return getattr(self, METHOD_SECTIONS[self.method])

    @property
    def side_start(self) -> int:
        """SelaVPR++: trunk blocks before the side chain starts (ViT-L 8, ViT-g 24, else 0)."""
        cfg = self.selavprpp
        if cfg is not None and cfg.side_start is not None:
            return cfg.side_start
        return {"vitl14": 8, "vitg14": 24}.get(self.backbone.arch, 0)

    @property
    def mca_channels(self) -> tuple[int, int, int, int, int, int]:
        cfg = self.selavprpp
        if cfg is not None and cfg.mca_channels is not None:
            return tuple(cfg.mca_channels)  # type: ignore[return-value]
        hidden = self.backbone.spec.embed_dim // 2
        return (hidden, hidden // 2, hidden // 16, hidden // 4, hidden // 16, hidden // 4)

    @property
    def float_dim(self) -> int:
        """Length of the float descriptor."""
        d = self.backbone.spec.embed_dim
        if self.method == "selavpr++":
            cfg = self.selavprpp
            if "float" not in cfg.branches:
                return self.codes.bits
            if cfg.float_dim is not None:
                return cfg.float_dim
            return {"vitb14": 2048, "vitl14": 4096, "vitg14": 4096, "vits14": 1024}.get(self.backbone.arch, 2 * d)
        if self.method == "emvp":
            return self.emvp.clusters * self.emvp.cluster_dim + self.emvp.token_dim
        return d

    @property
    def learned_codes(self) -> bool:
        return self.method == "selavpr++" and "hash" in self.selavprpp.branches

    @property
    def local_grid(self) -> tuple[int, int] | None:
        """Local-feature grid: two stride-2 transposed convolutions give 4g - 3 per side."""
        if self.method != "selavpr":
            return None
        gh = self.preprocess.height // self.backbone.patch_size
        gw = self.preprocess.width // self.backbone.patch_size
        return (4 * gh - 3, 4 * gw - 3)

    def layout(self) -> DescriptorLayout:
        grid = self.local_grid
        return DescriptorLayout(
            code_bits=self.codes.bits,
            float_dim=self.float_dim,
            local_dim=self.selavpr.local_dim if grid else 0,
            local_grid=grid or (0, 0),
        )

    def with_input(self, height: int, width: int) -> ModelConfig:
        """Same model at another input size (weights are size-independent)."""
        return replace(self, preprocess=replace(self.preprocess, height=height, width=width))

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return from_dict(cls, data)

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return load_config(cls, path)


@dataclass(frozen=True)
class DescriptorLayout:
    """What a model writes per image; a map accepts only models of its own layout."""

    code_bits: int
    float_dim: int
    local_dim: int = 0
    local_grid: tuple[int, int] = (0, 0)

    @property
    def code_bytes(self) -> int:
        return self.code_bits // 8

    @property
    def has_local(self) -> bool:
        return self.local_dim > 0

    def to_dict(self) -> dict:
        return {
            "code_bits": self.code_bits,
            "float_dim": self.float_dim,
            "local_dim": self.local_dim,
            "local_grid": list(self.local_grid),
        }

    @classmethod
    def from_dict(cls, data: dict) -> DescriptorLayout:
        return cls(
            code_bits=int(data["code_bits"]),
            float_dim=int(data["float_dim"]),
            local_dim=int(data.get("local_dim", 0)),
            local_grid=tuple(int(v) for v in data.get("local_grid", (0, 0))),  # type: ignore[arg-type]
        )

    def describe(self) -> str:
        local = (
            f", local {self.local_grid[0]}x{self.local_grid[1]}x{self.local_dim}" if self.has_local else ", no local"
        )
        return f"codes {self.code_bits} bit, float {self.float_dim}-d{local}"

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
