"""The training loop: deterministic, resumable, validated every epoch.

Everything random is derived from ``(seed, epoch, step)``, so a run resumed
from ``state.pt`` (saved at epoch ends, every ``checkpoint_every_steps``
steps, and when ``max_minutes`` runs out) continues exactly as if it had
never stopped. Outputs in ``cfg.output``:

    state.pt    optimiser, schedule, trainable weights, progress (for resuming)
    best.ckpt   the model with the best validation Recall@5 (our checkpoint format)
    log.csv     one row per epoch: loss, learning rate, time, validation recall
    cache/      trunk outputs (side-adapter methods with the cache enabled)

Distributed data parallel: run under ``torchrun``; each process takes its own
share of every epoch's batches, gradients are averaged, rank 0 validates
and writes.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from selavpr_ros.datasets.base import EvalSet, PlaceSet, PoseSet
from selavpr_ros.datasets.fov import fov_overlap
from selavpr_ros.errors import CheckpointError, ConfigError
from selavpr_ros.evaluation.recall import rank_binary, rank_float, recall_at
from selavpr_ros.models.checkpoint import read_checkpoint, save_checkpoint
from selavpr_ros.models.heads import binarize, pack_codes
from selavpr_ros.models.methods.selavprpp import SelaVPRPlusPlus, SelaVPRPlusPlusConfig
from selavpr_ros.models.vpr import VPRModel
from selavpr_ros.models.weights import create_model
from selavpr_ros.threads import set_thread_budget
from selavpr_ros.training import losses as L
from selavpr_ros.training.cache import TrunkCache, cache_key, trunk_fingerprint
from selavpr_ros.training.config import AugmentConfig, TrainConfig
from selavpr_ros.training.data import ImageSource, load_train_places, load_train_poses, load_validation

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

GRADED_LOSSES = ("graded_regression", "generalized_contrastive")


@dataclass
class TrainResult:
    best_recall: dict[int, float]
    best_epoch: int
    epochs_run: int
    stopped: str  # "completed", "early stopping", "time limit"
    checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


class _Embed(nn.Module):
    """What DDP wraps: images -> (descriptors, hash_z, local) or cached trunk outputs -> the same."""

    def __init__(self, model: VPRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor | None = None, seed: Tensor | None = None, taps: list[Tensor] | None = None,
                grid: tuple[int, int] | None = None):
        if images is None:  # cached trunk outputs: only SelaVPR++ trains side-only
            assert isinstance(self.model, SelaVPRPlusPlus)
            assert seed is not None and taps is not None and grid is not None
            return self.model.side(seed, taps, grid)
        return self.model.encode(images)


class Trainer:
    """Train the trainable parts of one model on one dataset, as ``cfg`` says."""

    def __init__(self, cfg: TrainConfig, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = pick_device(cfg.device)
        if self.world > 1 and not dist.is_initialized():
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.progress = progress and self.rank == 0
        if cfg.threads:
            set_thread_budget(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            if self.device.type == "cpu":
                set_thread_budget(1)
        torch.manual_seed(cfg.seed)

        self.model = self._build_model().to(self.device)
        self.loss_name = cfg.loss.name
        if self.loss_name == "auto":
            self.loss_name = "triplet" if self.model.config.method == "selavpr" else "multi_similarity"
        opts = self.model.config.options  # a hash-only SelaVPR++ ranks by its codes
        self.float_branch = not isinstance(opts, SelaVPRPlusPlusConfig) or "float" in opts.branches
        self.graded = self.loss_name in GRADED_LOSSES
        self.places: PlaceSet | None = None
        self.poses: PoseSet | None = None
        if self.graded:
            self.poses = load_train_poses(cfg.data)
            train_images = self.poses.images
        else:
            self.places = load_train_places(cfg.data)
            train_images = self.places.images
        self.val: EvalSet = load_validation(cfg.data)
        pre = self.model.config.preprocess
        self.train_source = ImageSource(list(train_images), pre, cfg.augment, cfg.seed)
        self.val_source = ImageSource(self.val.database + self.val.queries, pre, AugmentConfig(enabled=False))

        self.side_only = isinstance(self.model, SelaVPRPlusPlus)
        self.use_cache = cfg.cache.enabled and self.side_only
        self.views = cfg.cache.views if cfg.augment.enabled else 1
        self.train_cache: TrunkCache | None = None
        self.val_cache: TrunkCache | None = None

        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"model '{self.model.config.method}' has no trainable parameters")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.epoch_batches = [self._epoch_plan(e) for e in range(cfg.epochs)]
        self.scheduler = self._scheduler(sum(len(b) for b in self.epoch_batches))
        self.embed: nn.Module = _Embed(self.model)
        if self.world > 1:
            self.embed = nn.parallel.DistributedDataParallel(
                self.embed, find_unused_parameters=self.model.config.method == "selavpr")
        self.amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best_r5 = -1.0
        self.best_recall: dict[int, float] = {}
        self.best_epoch = -1
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.loss_sum = 0.0
        self.loss_count = 0
        self.tb: SummaryWriter | None = None

    # -- set-up -------------------------------------------------------------
    def _build_model(self) -> VPRModel:
        cfg = self.cfg
        if cfg.init_checkpoint:
            model = read_checkpoint(cfg.init_checkpoint).build()
            return model.freeze_backbone().train()
        model_cfg = cfg.model_config()
        return create_model(model_cfg)

    def _epoch_plan(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """This process's batches of one epoch: (image indices, labels or psi-pair layout)."""
        cfg = self.cfg
        rng = _rng(cfg.seed, epoch, 0)
        if self.graded:
            assert self.poses is not None  # loaded for graded losses
            batches = list(graded_pairs(self.poses, rng, cfg.loss.pairs_per_batch,
                                        math.radians(cfg.loss.fov_aperture_deg), cfg.loss.fov_radius_m))
        else:
            assert self.places is not None  # loaded for the other losses
            batches = list(self.places.batches(rng, cfg.places_per_batch, cfg.images_per_place))
        if not batches:
            raise ConfigError(f"{cfg.data.root}: not enough places for one batch of {cfg.places_per_batch} "
                              f"(lower places_per_batch)")
        per_rank = len(batches) // self.world
        if per_rank == 0:
            raise ConfigError(f"{len(batches)} batches per epoch cannot be shared by {self.world} processes")
        return batches[self.rank :: self.world][:per_rank]

    def _scheduler(self, total_steps: int):
        cfg = self.cfg
        if cfg.schedule == "onecycle":
            total = max(total_steps, 4)  # warm-up and decay need a step or two each: short runs would divide by 0
            return torch.optim.lr_scheduler.OneCycleLR(self.optimizer, cfg.lr, total_steps=total,
                                                       pct_start=min(max(cfg.warmup_fraction, 2 / total), 0.5))
        if cfg.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(total_steps, 1))
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)

    def _trunk(self, images: Tensor):
        assert isinstance(self.model, SelaVPRPlusPlus)  # trunk caching is only enabled for SelaVPR++
        self.model.eval()
        return self.model.trunk(images)

    def _make_caches(self) -> None:
        """Fill the trunk caches (rank 0), then open them everywhere."""
        assert isinstance(self.model, SelaVPRPlusPlus)  # trunk caching is only enabled for SelaVPR++
        base = Path(self.cfg.cache.dir) if self.cfg.cache.dir else self.out / "cache"
        fingerprint = trunk_fingerprint(self.model)
        pre = self.model.config.preprocess
        h, w = pre.height, pre.width
        with torch.no_grad():
            seed, taps, grid = self.model.trunk(torch.zeros(1, 3, h, w, device=self.device))
        entry = (1 + len(taps), seed.shape[1], seed.shape[2])
        common = dict(trunk=fingerprint, preprocess=pre.__dict__, side_start=self.model.side_start,
                      dtype=self.cfg.cache.dtype)
        specs = [
            ("train", self.train_source, self.views,
             cache_key(**common, images=[str(p) for p in self.train_source.paths], views=self.views,
                       augment=self.cfg.augment.__dict__, seed=self.cfg.seed)),
            ("val", self.val_source, 1, cache_key(**common, images=[str(p) for p in self.val_source.paths])),
        ]

        def open_caches() -> list[TrunkCache]:
            return [TrunkCache(base / name, key, len(source), views, entry, grid, self.cfg.cache.dtype)
                    for name, source, views, key in specs]

        if self.rank == 0:
            caches = open_caches()
            for cache, (name, source, _, _) in zip(caches, specs):
                cache.fill(self._trunk, source.batch, self.cfg.val_batch_size, self.device, self.progress,
                           desc=f"caching trunk ({name})")
        if self.world > 1:
            dist.barrier()
        if self.rank != 0:
            caches = open_caches()
        self.train_cache, self.val_cache = caches

    # -- state --------------------------------------------------------------
    def _trainable_state(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
                if not k.startswith("backbone.") or self.model.is_trainable(k)}

    def save_state(self) -> None:
        if self.rank != 0:
            return
        state = {
            "resume_key": self.cfg.resume_key(),
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "weights": self._trainable_state(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "best_r5": self.best_r5, "best_recall": self.best_recall, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "history": self.history,
            "loss_sum": self.loss_sum, "loss_count": self.loss_count,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / ".state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "state.pt")

    def load_state(self) -> bool:
        """Resume from ``state.pt`` when present; refuse a state saved under other settings."""
        path = self.out / "state.pt"
        if not path.is_file():
            return False
        try:
            # Tensors and plain containers only: a planted state.pt must not run code.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
            raise CheckpointError(f"{path}: cannot read training state ({exc}); delete it or pass --fresh") from None
        if state.get("resume_key") != self.cfg.resume_key():
            raise ConfigError(f"{path} was saved with other training settings; use the same config to resume, "
                              f"or pass --fresh to start over")
        missing = set(self._trainable_state()) - set(state["weights"])
        if missing:
            raise CheckpointError(f"{path}: state lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}")
        self.model.load_state_dict(state["weights"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for key in ("epoch", "step_in_epoch", "global_step", "best_r5", "best_recall", "best_epoch", "bad_epochs",
                    "history", "loss_sum", "loss_count"):
            setattr(self, key, state[key])
        return True

    # -- one step -----------------------------------------------------------
    def _forward(self, indices: np.ndarray, views: np.ndarray):
        if self.use_cache:
            assert self.train_cache is not None  # opened by _make_caches
            seed, taps, grid = self.train_cache.read(indices, views, self.device)
            return self.embed(seed=seed, taps=taps, grid=grid)
        x = torch.from_numpy(self.train_source.batch(indices, views)).to(self.device)
        return self.embed(images=x)

    def compute_loss(self, desc: Tensor, hash_z: Tensor | None, local: Tensor | None, target: Tensor) -> Tensor:
        """The configured loss on one batch (``target``: place labels, or psi for graded losses)."""
        lc = self.cfg.loss
        if self.graded:
            half = len(desc) // 2
            loss_fn = L.graded_regression_loss if self.loss_name == "graded_regression" else \
                lambda a, b, psi: L.generalized_contrastive_loss(a, b, psi, lc.tau)
            loss = loss_fn(desc[:half], desc[half:], target)
            if hash_z is not None and self.float_branch and self.model.config.learned_codes:
                loss = loss + loss_fn(hash_z[:half], hash_z[half:], target)
            return loss
        if self.loss_name == "triplet":
            loss = L.triplet_loss(desc, target, lc.margin)
            if local is not None and lc.local_weight > 0:
                a, p, n = L.hardest_triplets(desc, target)
                loss = loss + lc.local_weight * L.mnn_local_loss(local, a, p, n)
            return loss

        def ms(x: Tensor) -> tuple[Tensor, L.MinedPairs]:
            pairs = L.multi_similarity_miner(x, target, lc.miner_epsilon)
            return L.multi_similarity_loss(x, target, pairs, lc.ms_alpha, lc.ms_beta, lc.ms_base), pairs

        loss = desc.new_zeros(())
        if self.float_branch:
            loss = loss + ms(desc)[0]
        if hash_z is not None and self.model.config.learned_codes:
            codes = binarize(hash_z)
            code_loss, pairs = ms(codes)
            loss = loss + code_loss + lc.hash_weight * L.hash_similarity_loss(hash_z, codes.detach(), pairs)
        return loss

    def train_step(self, epoch: int, step: int, batch: tuple[np.ndarray, np.ndarray]) -> float:
        indices, target = batch
        rng = _rng(self.cfg.seed, epoch, step, 1)
        if self.use_cache:
            views = rng.integers(0, self.views, len(indices))
        else:
            views = np.full(len(indices), epoch + 1 if self.cfg.augment.enabled else 0)
        torch.manual_seed(int(rng.integers(2**62)))  # dropout etc.
        self.model.train()
        self.model.backbone.eval()  # frozen: no dropout/stat updates in the trunk
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            desc, hash_z, local = self._forward(indices, views)
            t = torch.as_tensor(target, device=self.device)
            loss = self.compute_loss(desc.float(), None if hash_z is None else hash_z.float(),
                                     None if local is None else local.float(), t.float() if self.graded else t)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach())

    # -- validation ---------------------------------------------------------
    @torch.inference_mode()
    def describe_validation(self) -> tuple[np.ndarray, np.ndarray]:
        """Float descriptors and packed codes of every validation image (database, then queries)."""
        self.model.eval()
        descs, codes = [], []
        bs = self.cfg.val_batch_size
        for start in range(0, len(self.val_source), bs):
            idx = np.arange(start, min(start + bs, len(self.val_source)))
            zeros = np.zeros(len(idx), np.int64)
            if self.use_cache:
                assert isinstance(self.model, SelaVPRPlusPlus) and self.val_cache is not None  # see _make_caches
                desc, hash_z, _ = self.model.side(*self.val_cache.read(idx, zeros, self.device))
            else:
                desc, hash_z, _ = self.model.encode(torch.from_numpy(self.val_source.batch(idx, zeros)).to(self.device))
            if hash_z is None:
                assert self.model.code_projection is not None  # set whenever the method has no learned codes
                hash_z = self.model.code_projection(desc)
            descs.append(desc.float().cpu())
            codes.append(pack_codes(hash_z.float()).cpu())
        return torch.cat(descs).numpy(), torch.cat(codes).numpy()

    def validate(self) -> dict[str, dict[int, float]]:
        desc, codes = self.describe_validation()
        n_db = len(self.val.database)
        k = max(self.cfg.recall_at)
        float_pred = rank_float(desc[:n_db], desc[n_db:], k)
        binary_pred = rank_binary(codes[:n_db], codes[n_db:], k)
        return {"float": recall_at(float_pred, self.val.positives, self.cfg.recall_at),
                "binary": recall_at(binary_pred, self.val.positives, self.cfg.recall_at)}

    # -- loop ---------------------------------------------------------------
    def _log(self, row: dict[str, Any]) -> None:
        path = self.out / "log.csv"
        new = not path.is_file()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, row["epoch"])

    def _end_epoch(self, epoch: int, seconds: float) -> bool:
        """Validate, log, keep the best model; True when training should stop early."""
        stop = torch.zeros(1)
        if self.rank == 0:
            recall = self.validate()
            r = recall["float"]
            row = {"epoch": epoch, "step": self.global_step, "loss": self.loss_sum / max(self.loss_count, 1),
                   "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 2),
                   **{f"R@{n}": round(v, 3) for n, v in r.items()},
                   **{f"binary_R@{n}": round(v, 3) for n, v in recall["binary"].items()}}
            self.history.append(row)
            self._log(row)
            if r[5] > self.best_r5:
                self.best_r5, self.best_recall, self.best_epoch, self.bad_epochs = r[5], r, epoch, 0
                save_checkpoint(self.model, self.out / "best.ckpt", half=self.cfg.checkpoint_half, metadata={
                    "training": {"epoch": epoch, "data": self.cfg.data.root, "loss": self.loss_name},
                    "validation": {"set": self.val.name, "threshold": self.val.threshold,
                                   "recall": r, "binary_recall": recall["binary"]}})
            else:
                self.bad_epochs += 1
            stop[0] = float(self.bad_epochs >= self.cfg.patience)
            if self.progress:
                tqdm.write(f"epoch {epoch}: loss {row['loss']:.4f}  R@1 {r[1]:.1f}  R@5 {r[5]:.1f}  "
                           f"(binary R@1 {recall['binary'][1]:.1f})  best R@5 {self.best_r5:.1f} @ {self.best_epoch}")
        if self.world > 1:
            dist.broadcast(stop, 0)
        return bool(stop[0])

    def fit(self, resume: bool = True) -> TrainResult:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_state()
        if self.cfg.tensorboard and self.rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("tensorboard: true needs the tensorboard package "
                                  "(pip install selavpr_ros[train])") from None
            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        if self.use_cache:
            self._make_caches()
        started = time.monotonic()
        stopped = "completed"
        try:
            while self.epoch < self.cfg.epochs and stopped == "completed":
                epoch = self.epoch
                batches = self.epoch_batches[epoch]
                t0 = time.monotonic()
                bar = tqdm(total=len(batches), initial=self.step_in_epoch, desc=f"epoch {epoch}",
                           unit="step", disable=not self.progress, leave=False)
                with bar:
                    while self.step_in_epoch < len(batches):
                        loss = self.train_step(epoch, self.step_in_epoch, batches[self.step_in_epoch])
                        self.step_in_epoch += 1
                        self.global_step += 1
                        self.loss_sum += loss
                        self.loss_count += 1
                        bar.update()
                        bar.set_postfix(loss=f"{loss:.4f}")
                        if self.cfg.checkpoint_every_steps and self.global_step % self.cfg.checkpoint_every_steps == 0:
                            self.save_state()
                        if self.cfg.max_minutes and time.monotonic() - started > 60 * self.cfg.max_minutes:
                            stopped = "time limit"
                            break
                if stopped == "time limit" and self.step_in_epoch < len(batches):
                    self.save_state()
                    break
                self.epoch, self.step_in_epoch = epoch + 1, 0
                early = self._end_epoch(epoch, time.monotonic() - t0)
                self.loss_sum, self.loss_count = 0.0, 0
                self.save_state()
                if early and self.epoch < self.cfg.epochs:  # patience ran out before the last epoch
                    stopped = "early stopping"
        finally:
            if self.tb is not None:
                self.tb.close()
        self._check_replicas()
        best = self.out / "best.ckpt"
        return TrainResult(self.best_recall, self.best_epoch, self.epoch, stopped,
                           best if best.is_file() else None, self.history)

    def _check_replicas(self) -> None:
        """All processes must end with the same weights (DDP keeps them in step)."""
        if self.world == 1:
            return
        total = torch.stack([p.detach().double().sum() for p in self.model.parameters() if p.requires_grad]).sum()
        gathered = [torch.zeros(1, dtype=torch.float64) for _ in range(self.world)]
        dist.all_gather(gathered, total.cpu().reshape(1))
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(f"replicas diverged: parameter sums {[float(g) for g in gathered]}")


def graded_pairs(poses: PoseSet, rng: np.random.Generator, pairs_per_batch: int, aperture: float, radius: float):
    """Batches of (anchor, partner) image pairs with their field-of-view overlap psi.

    Partners are drawn evenly from three bins (psi >= 0.5, 0 < psi < 0.5,
    psi = 0) when the anchor has any in a bin, so that graded losses see the
    whole similarity range. Yields (indices [anchors..., partners...], psi).
    """
    xy = poses.poses[:, :2]
    order = rng.permutation(len(poses.images))
    for start in range(0, len(order) - pairs_per_batch + 1, pairs_per_batch):
        anchors = order[start : start + pairs_per_batch]
        partners = np.empty_like(anchors)
        for i, a in enumerate(anchors):
            near = np.flatnonzero(np.hypot(*(xy - xy[a]).T) < 2 * radius)
            near = near[near != a]
            psi = fov_overlap(poses.poses[a], poses.poses[near], aperture, radius, rings=16, rays=16)
            bins = [near[psi >= 0.5], near[(psi > 0) & (psi < 0.5)]]
            zero = np.setdiff1d(np.arange(len(xy)), np.concatenate([near[psi > 0], [a]]))
            bins.append(zero)
            bins = [b for b in bins if len(b)]
            chosen = bins[rng.integers(len(bins))]
            partners[i] = chosen[rng.integers(len(chosen))]
        psi = fov_overlap(poses.poses[anchors], poses.poses[partners], aperture, radius)
        yield np.concatenate([anchors, partners]), psi.astype(np.float32)


@contextlib.contextmanager
def distributed_cleanup():
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
