"""Model configuration: which method, which backbone, which heads, which input.

One :class:`ModelConfig` describes a model completely; it is stored inside
every checkpoint and ONNX file so that a model file is self-describing. The
parts every method shares (trunk, input, codes) are defined here; each
method's own options are a :class:`MethodConfig` subclass that lives with the
method (``selavpr_ros/models/methods/``) and is found through the registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from selavpr_ros.config import check, fields_from_dict, from_dict, load_config, to_dict
from selavpr_ros.errors import ConfigError
from selavpr_ros.types import DescriptorLayout

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
class MethodConfig:
    """Base of every method's options (the YAML section its registry entry names).

    Subclasses override the hooks below to say what their model outputs; the
    defaults describe a method with a float descriptor as wide as the trunk,
    codes from a sign random projection and no local features.
    """

    def resolve(self, model: ModelConfig) -> None:
        """Check the options against the whole model and fill derived defaults (may set fields)."""

    def descriptor_dim(self, model: ModelConfig) -> int:
        """Length of the float descriptor."""
        return model.backbone.spec.embed_dim

    @property
    def learned_codes(self) -> bool:
        """Whether the codes come from a learned hash branch (else: sign random projection)."""
        return False

    def local_shape(self, model: ModelConfig) -> tuple[int, int, int] | None:
        """Dense local features (h, w, C) at the model's input size, or None."""
        return None

    def estimate_macs(self, model: ModelConfig, tokens: int, grid: tuple[int, int]) -> dict[str, float]:
        """Multiply-accumulates per image of the method's own parts (beyond the trunk)."""
        return {}


M = TypeVar("M", bound=MethodConfig)


@dataclass
class ModelConfig:
    """A complete model description: shared parts plus the options of ``method``.

    In YAML the options sit under the method's section name (``selavpr``,
    ``selavprpp``, ``emvp``, ``dinov2_gem``, or a registered method's own);
    in Python they are :attr:`options`.
    """

    method: str
    name: str = ""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    codes: CodesConfig = field(default_factory=CodesConfig)
    options: MethodConfig | None = None

    def __post_init__(self) -> None:
        from selavpr_ros.models.registry import get_method

        spec = get_method(self.method)
        if self.options is None:
            self.options = spec.config()
        check(
            isinstance(self.options, spec.config),
            f"options of method {self.method!r} must be {spec.config.__name__}, got {type(self.options).__name__}",
        )
        self.options = replace(self.options)  # resolve() may fill fields: never share them between configs
        p = self.backbone.patch_size
        check(
            self.preprocess.height % p == 0 and self.preprocess.width % p == 0,
            f"preprocess: input size {self.preprocess.height}x{self.preprocess.width} must be a multiple "
            f"of the patch size {p} (e.g. 224 or 322)",
        )
        self.options.resolve(self)

    def section(self, cls: type[M]) -> M:
        """The method options, typed as ``cls`` (raises when the model is of another method)."""
        if not isinstance(self.options, cls):
            raise ConfigError(f"model of method {self.method!r} has no {cls.__name__} section")
        return self.options

    # -- derived quantities -------------------------------------------------
    @property
    def float_dim(self) -> int:
        """Length of the float descriptor."""
        assert self.options is not None
        return self.options.descriptor_dim(self)

    @property
    def learned_codes(self) -> bool:
        assert self.options is not None
        return self.options.learned_codes

    @property
    def patch_grid(self) -> tuple[int, int]:
        p = self.backbone.patch_size
        return (self.preprocess.height // p, self.preprocess.width // p)

    @property
    def local_grid(self) -> tuple[int, int] | None:
        assert self.options is not None
        shape = self.options.local_shape(self)
        return None if shape is None else (shape[0], shape[1])

    def layout(self) -> DescriptorLayout:
        assert self.options is not None
        shape = self.options.local_shape(self)
        return DescriptorLayout(
            code_bits=self.codes.bits,
            float_dim=self.float_dim,
            local_dim=shape[2] if shape else 0,
            local_grid=(shape[0], shape[1]) if shape else (0, 0),
        )

    def with_input(self, height: int, width: int) -> ModelConfig:
        """Same model at another input size (weights are size-independent)."""
        return replace(self, preprocess=replace(self.preprocess, height=height, width=width))

    # -- plain data ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from selavpr_ros.models.registry import get_method

        return {
            "method": self.method,
            "name": self.name,
            "backbone": to_dict(self.backbone),
            "preprocess": to_dict(self.preprocess),
            "codes": to_dict(self.codes),
            get_method(self.method).section: to_dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "") -> ModelConfig:
        """Validated config from plain data (YAML, a checkpoint, an ONNX file's metadata)."""
        return from_dict(cls, data, path)

    @classmethod
    def __config_from_dict__(cls, data: dict[str, Any], path: str = "") -> ModelConfig:
        from selavpr_ros.models.registry import get_method, list_methods

        prefix = f"{path}." if path else ""
        if not isinstance(data, dict):
            raise ConfigError(f"{path or 'model'}: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        method = data.get("method")
        if not isinstance(method, str):
            raise ConfigError(f"{prefix}method: required key is missing (one of {', '.join(list_methods())})")
        spec = get_method(method)
        if "options" in data:
            raise ConfigError(f"{prefix}options: unknown key; method options go under '{spec.section}:'")
        own = data.pop(spec.section, None)
        for other in list_methods():
            section = get_method(other).section
            if section in data:
                if data[section] is None:  # files of format 1 list every method's section, unused ones null
                    del data[section]
                    continue
                raise ConfigError(f"{prefix}section '{section}' is for method {other!r}, but method is {method!r}")
        shared = {f.name for f in dataclasses.fields(cls)} - {"options"}
        unknown = sorted(set(data) - shared)
        if unknown:
            raise ConfigError(
                f"{prefix}{unknown[0]}: unknown key; allowed keys here: {', '.join(sorted(shared | {spec.section}))}"
            )
        data["options"] = from_dict(spec.config, own, f"{prefix}{spec.section}")
        return fields_from_dict(cls, data, path)

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return load_config(cls, path)

