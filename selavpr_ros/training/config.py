"""Training configuration: one YAML file, validated (``selavpr-train CONFIG.yaml``).

Relative paths in the file are resolved against the file's own folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from selavpr_ros.config import check, from_dict, load_yaml
from selavpr_ros.errors import ConfigError
from selavpr_ros.models.config import ModelConfig


@dataclass
class DataConfig:
    """Where training and validation images come from.

    ``sequence``: frame-aligned traversals (``folders``; validation queries
    ``folders[1]`` against database ``folders[0]`` over ``val_span``;
    ``test_span``, when given, is held out for the final test and only
    checked here: the three spans must not overlap, nor come within
    ``tolerance_frames`` of each other).
    ``utm``: ``images/{train_split,val_split}/{database,queries}/@e@n@..jpg``.
    ``gsv_cities``: ``Dataframes/*.csv`` + ``Images/``; validation from
    ``val_root`` (a utm layout). ``map``: a map built from bags with poses and
    saved images; validation against ``val_root`` (another such map).
    """

    kind: Literal["sequence", "utm", "gsv_cities", "map"]
    root: str
    folders: list[str] = field(default_factory=lambda: ["summer", "winter"])
    train_span: tuple[float, float] = (0.0, 0.7)
    val_span: tuple[float, float] = (0.7, 1.0)
    test_span: tuple[float, float] | None = None
    frames_per_place: int = 2
    tolerance_frames: int = 2
    train_split: str = "train"
    val_split: str = "val"
    train_radius_m: float = 10.0
    eval_radius_m: float = 25.0
    cities: list[str] = field(default_factory=list)
    min_images_per_place: int = 4
    val_root: str | None = None

    def __post_init__(self) -> None:
        check(len(self.folders) >= 2 or self.kind != "sequence", "data.folders needs two traversals")
        check(self.frames_per_place >= 1 and self.tolerance_frames >= 0, "data: frame counts must be positive")
        check(self.train_radius_m > 0 and self.eval_radius_m > 0, "data: radii must be positive")


@dataclass
class LossConfig:
    """``auto``: triplet + MNN local loss for SelaVPR, multi-similarity (+ hash constraint)
    for SelaVPR++, multi-similarity for EMVP and DINOv2-GeM."""

    name: Literal["auto", "triplet", "multi_similarity", "graded_regression", "generalized_contrastive"] = "auto"
    margin: float = 0.1
    local_weight: float = 1.0
    ms_alpha: float = 1.0
    ms_beta: float = 50.0
    ms_base: float = 0.0
    miner_epsilon: float = 0.1
    hash_weight: float = 0.1
    tau: float = 0.5
    fov_aperture_deg: float = 90.0
    fov_radius_m: float = 50.0
    pairs_per_batch: int = 64

    def __post_init__(self) -> None:
        check(self.margin >= 0 and self.local_weight >= 0 and self.hash_weight >= 0, "loss weights must be >= 0")
        check(0 < self.fov_aperture_deg <= 360 and self.fov_radius_m > 0, "loss: bad field of view")


@dataclass
class AugmentConfig:
    """Photometric and geometric jitter of training images (before preprocessing)."""

    enabled: bool = True
    shift: float = 0.1
    scale: float = 0.15
    brightness: float = 0.3
    contrast: float = 0.3
    grayscale: float = 0.2

    def __post_init__(self) -> None:
        check(0 <= self.shift < 0.5 and 0 <= self.scale < 0.5, "augment: shift and scale must be in [0, 0.5)")
        check(0 <= self.grayscale <= 1, "augment.grayscale is a probability")


@dataclass
class CacheConfig:
    """On-disk cache of the frozen trunk's outputs (side-adapter methods only).

    Every epoch after the first skips the trunk. ``views`` augmented versions
    of each image are cached; each epoch uses one of them at random.
    """

    enabled: bool = True
    views: int = 2
    dir: str | None = None  # default: <output>/cache
    dtype: Literal["float16", "float32"] = "float16"

    def __post_init__(self) -> None:
        check(1 <= self.views <= 16, "cache.views must be in [1, 16]")


@dataclass
class TrainConfig:
    data: DataConfig
    model: str | dict[str, Any] | None = None  # model config (YAML path or mapping)
    init_checkpoint: str | None = None  # start from this checkpoint instead
    output: str = "runs/train"
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    places_per_batch: int = 32
    images_per_place: int = 4
    epochs: int = 20
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_fraction: float = 0.1
    patience: int = 5  # epochs without a better validation R@5 before stopping
    recall_at: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA
    workers: int = 0  # image-loading processes
    threads: int | None = None
    # Bit-exact repeatability: deterministic kernels, and one CPU thread (multi-threaded
    # reductions sum in a varying order, so runs then agree only to float rounding).
    deterministic: bool = False
    checkpoint_every_steps: int = 0  # 0: at the end of each epoch only
    max_minutes: float = 0.0  # stop (and save) after this wall time; 0 = no limit
    tensorboard: bool = False
    checkpoint_half: bool = False  # store the output checkpoint's weights in fp16 (half the size)
    val_batch_size: int = 64

    def __post_init__(self) -> None:
        check((self.model is None) != (self.init_checkpoint is None), "give exactly one of model and init_checkpoint")
        check(self.places_per_batch >= 2 and self.images_per_place >= 2, "batches need >= 2 places x >= 2 images")
        check(self.epochs >= 1 and self.lr > 0 and self.weight_decay >= 0, "epochs >= 1, lr > 0, weight_decay >= 0")
        check(0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)")
        check(self.patience >= 1 and self.max_minutes >= 0, "patience >= 1, max_minutes >= 0")
        check(5 in self.recall_at, "recall_at must include 5 (early stopping watches R@5)")

    def resume_key(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run that saved the state."""
        data = asdict(self)
        for operational in ("output", "device", "workers", "threads", "checkpoint_every_steps", "max_minutes",
                            "tensorboard", "val_batch_size"):
            data.pop(operational)
        model = self.model_config()
        data["model"] = model.to_dict() if model is not None else None
        return data

    def model_config(self) -> ModelConfig | None:
        if self.model is None:
            return None
        if isinstance(self.model, dict):
            return ModelConfig.from_dict(self.model)
        return ModelConfig.load(self.model)


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a training config; data and model paths written in the file resolve against the file's
    folder (a config travels with its data), paths given in ``overrides`` (``--set``) and ``output``
    against the working directory, as command lines do. ``overrides`` map dotted keys to values."""
    path = Path(path)
    data = load_yaml(path)
    overrides = overrides or {}
    for key, value in overrides.items():
        _set(data, key.split("."), value)
    try:
        cfg = from_dict(TrainConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None

    def base(key: str) -> Path:
        return Path.cwd() if key in overrides else path.resolve().parent

    cfg.data.root = str(_resolve(base("data.root"), cfg.data.root))
    if cfg.data.val_root:
        cfg.data.val_root = str(_resolve(base("data.val_root"), cfg.data.val_root))
    if isinstance(cfg.model, str):
        cfg.model = str(_resolve(base("model"), cfg.model))
    if cfg.init_checkpoint:
        cfg.init_checkpoint = str(_resolve(base("init_checkpoint"), cfg.init_checkpoint))
    cfg.output = str(Path(cfg.output).expanduser().resolve())  # outputs are relative to where you run
    return cfg


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _set(data: dict, keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    data[keys[-1]] = value
