"""The trainer on real Nordland frames: determinism, resume after a crash, DDP, every method's loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from selavpr_ros.errors import ConfigError, DatasetError
from selavpr_ros.models.checkpoint import load_checkpoint
from selavpr_ros.training.config import load_train_config
from selavpr_ros.training.trainer import Trainer, graded_pairs

TINY_MODEL = {
    "method": "selavpr++",
    "backbone": {"arch": "custom", "embed_dim": 64, "depth": 3, "num_heads": 1, "pretrain_grid": 4},
    "preprocess": {"height": 28, "width": 56, "normalize": "per_image"},
    "selavprpp": {"float_dim": 128, "mca_channels": [32, 16, 4, 8, 4, 8]},
}


def write_config(tmp_path: Path, nordland: Path, name: str = "train.yaml", **overrides) -> Path:
    cfg = {
        "data": {"kind": "sequence", "root": str(nordland), "train_span": [0.0, 0.6], "val_span": [0.7, 1.0]},
        "model": TINY_MODEL,
        "augment": {"enabled": False},
        "places_per_batch": 8,
        "images_per_place": 4,
        "epochs": 2,
        "lr": 2e-3,
        "seed": 3,
        "deterministic": True,
        "output": str(tmp_path / "run"),
    }
    for key, value in overrides.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def trainable(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def run_cli(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selavpr_ros.cli.train", *args, "--no-progress"],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


def test_training_is_deterministic_and_outputs_a_checkpoint(tmp_path, nordland):
    cfg = load_train_config(write_config(tmp_path, nordland))
    result = Trainer(cfg, progress=False).fit()
    assert result.stopped == "completed" and result.epochs_run == 2
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,loss,lr,seconds,R@1,R@5") and len(rows) == 3
    model = load_checkpoint(result.checkpoint)
    assert model.layout.float_dim == 128
    cfg2 = load_train_config(write_config(tmp_path, nordland, output=str(tmp_path / "run2")))
    again = Trainer(cfg2, progress=False)
    again.fit()
    best = load_checkpoint(tmp_path / "run2" / "best.ckpt")
    a, b = model.state_dict(), best.state_dict()  # deterministic: true is bit for bit, every tensor
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.history == [{**row, "seconds": again.history[i]["seconds"]} for i, row in enumerate(result.history)]
    # the cache was filled once per run and is complete
    assert (tmp_path / "run" / "cache" / "train" / "filled.npy").is_file()
    assert again.train_cache.complete and again.val_cache.complete


def test_resume_mid_epoch_matches_uninterrupted(tmp_path, nordland):
    straight = Trainer(load_train_config(write_config(tmp_path, nordland, output=str(tmp_path / "a"))), False)
    straight.fit()
    # stop after the first step (time limit), then resume from state.pt
    path = write_config(tmp_path, nordland, output=str(tmp_path / "b"), max_minutes=1e-9)
    first = Trainer(load_train_config(path), False).fit()
    assert first.stopped == "time limit"
    state = torch.load(tmp_path / "b" / "state.pt", weights_only=False)
    assert state["epoch"] == 0 and state["step_in_epoch"] == 1
    resumed = Trainer(load_train_config(path, {"max_minutes": 0}), False)
    result = resumed.fit()
    assert result.stopped == "completed" and resumed.global_step == straight.global_step
    assert_same_weights(trainable(straight.model), trainable(resumed.model))
    assert result.best_recall == straight.best_recall


def test_sigkill_mid_training_resumes_from_last_state(tmp_path, nordland):
    path = write_config(tmp_path, nordland, checkpoint_every_steps=1, epochs=3)
    child = subprocess.Popen([sys.executable, "-m", "selavpr_ros.cli.train", str(path), "--no-progress"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path = tmp_path / "run" / "state.pt"
    deadline = time.monotonic() + 240
    step = 0
    while time.monotonic() < deadline and child.poll() is None:
        if state_path.is_file():
            step = torch.load(state_path, weights_only=False)["global_step"]
            if step >= 15:  # past the first epoch, in the middle of the second
                break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert step >= 15, "child never got going"
    proc = run_cli(str(path))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["epochs"] == 3
    reference = Trainer(load_train_config(path, {"output": str(tmp_path / "ref")}), False)
    reference.fit()
    resumed = torch.load(state_path, weights_only=False)
    assert resumed["global_step"] == reference.global_step
    assert_same_weights(reference._trainable_state(), resumed["weights"])


def test_distributed_two_processes_gloo(tmp_path, nordland):
    path = write_config(tmp_path, nordland, epochs=1)
    single = Trainer(load_train_config(path, {"output": str(tmp_path / "single")}), False)
    single.fit()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "selavpr_ros.cli.train", str(path), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["world_size"] == 2
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=False)
    assert state["global_step"] == single.global_step // 2  # each process took half of the batches
    model = load_checkpoint(tmp_path / "run" / "best.ckpt")  # replicas agreed (checked at the end of fit)
    initial = Trainer(load_train_config(path, {"output": str(tmp_path / "init")}), False).model
    moved = [k for k, v in trainable(model).items()
             if v.is_floating_point() and not torch.equal(v, trainable(initial)[k])]
    assert moved


@pytest.mark.parametrize("method,extra", [
    ("selavpr", {"selavpr": {"local_hidden": 32, "local_dim": 16}}),
    ("emvp", {"emvp": {"clusters": 4, "cluster_dim": 8, "token_dim": 16, "hidden": 32, "recalib_hidden": 32,
                       "recalib_blocks": 2}}),
    ("dinov2-gem", {}),
])
def test_other_methods_train_without_cache(tmp_path, nordland, method, extra):
    model = {**{k: v for k, v in TINY_MODEL.items() if k != "selavprpp"}, "method": method, **extra}
    path = write_config(tmp_path, nordland, model=model, epochs=1, **{"augment.enabled": True})
    trainer = Trainer(load_train_config(path), False)
    before = trainable(trainer.model)
    assert trainer.loss_name == ("triplet" if method == "selavpr" else "multi_similarity")
    assert not trainer.use_cache
    result = trainer.fit()
    assert np.isfinite(trainer.history[0]["loss"]) and result.checkpoint is not None
    after = trainable(trainer.model)
    changed = [k for k, v in after.items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed


def test_graded_losses_on_a_posed_map(tmp_path, nordland):
    from _map_writer import LAYOUT, rows

    from selavpr_ros.datasets.map_data import load_map_poses
    from selavpr_ros.mapdb.database import MapDatabase
    from selavpr_ros.types import KeyframeRecord, Pose

    frames = sorted((nordland / "summer").iterdir())[:80]
    for name, start in (("map", 0), ("val", 1)):
        desc, _ = rows(0, 40)
        recs = [KeyframeRecord(stamp_ns=i, image_ref=str(frames[2 * i + start]), pose=Pose((5.0 * i, 0.0, 0.0)))
                for i in range(40)]
        with MapDatabase.create(tmp_path / name, LAYOUT, model_id="t") as db:
            db.add(desc, recs)
    poses = load_map_poses(tmp_path / "map")
    batches = list(graded_pairs(poses, np.random.default_rng(0), 16, np.radians(90), 20.0))
    psi = np.concatenate([b[1] for b in batches])
    assert len(batches) == 2 and (psi >= 0.5).any() and ((psi > 0) & (psi < 0.5)).any() and (psi == 0).any()
    for loss in ("graded_regression", "generalized_contrastive"):
        path = write_config(tmp_path, nordland, epochs=1, output=str(tmp_path / loss),
                            data={"kind": "map", "root": str(tmp_path / "map"), "val_root": str(tmp_path / "val")},
                            loss={"name": loss, "pairs_per_batch": 16, "fov_radius_m": 20.0})
        trainer = Trainer(load_train_config(path), False)
        trainer.fit()
        assert np.isfinite(trainer.history[0]["loss"]) and trainer.history[0]["loss"] > 0


def test_bad_inputs_name_the_problem(tmp_path, nordland):
    with pytest.raises(ConfigError, match="unknown key"):
        load_train_config(write_config(tmp_path, nordland, epoks=3))
    with pytest.raises(ConfigError, match="exactly one of model and init_checkpoint"):
        load_train_config(write_config(tmp_path, nordland, init_checkpoint="x.ckpt"))
    # a corrupt image in the training set
    root = tmp_path / "seq"
    for season in ("summer", "winter"):
        (root / season).mkdir(parents=True)
        for f in sorted((nordland / season).iterdir())[:200]:
            (root / season / f.name).write_bytes(f.read_bytes())
    bad = root / "winter" / sorted(p.name for p in (root / "winter").iterdir())[5]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    path = write_config(tmp_path, root, name="bad.yaml", output=str(tmp_path / "bad"),
                        **{"data.train_span": [0.0, 0.65], "data.val_span": [0.7, 1.0]})
    proc = run_cli(str(path))
    assert proc.returncode == 1 and str(bad) in proc.stderr and "cannot decode" in proc.stderr
    # resuming under other settings is refused
    good = write_config(tmp_path, nordland, epochs=1, output=str(tmp_path / "good"))
    Trainer(load_train_config(good), False).fit()
    with pytest.raises(ConfigError, match="other training settings"):
        Trainer(load_train_config(good, {"lr": 0.1}), False).fit()
    # a backbone file that does not match the model
    torch.save({"cls_token": torch.zeros(1, 1, 384), "pos_embed": torch.zeros(1, 1370, 384)}, tmp_path / "w.pth")
    model = {**TINY_MODEL, "backbone": {**TINY_MODEL["backbone"], "weights": str(tmp_path / "w.pth")}}
    with pytest.raises(Exception, match="w.pth"):
        Trainer(load_train_config(write_config(tmp_path, nordland, model=model)), False)


def test_a_test_span_that_touches_training_is_refused(tmp_path, nordland):
    path = write_config(tmp_path, nordland, **{"data.test_span": [0.58, 0.7]})
    with pytest.raises(DatasetError, match="train span .* and test span"):
        Trainer(load_train_config(path), False)


def test_too_few_places_for_a_batch(tmp_path, nordland):
    path = write_config(tmp_path, nordland, places_per_batch=500)
    with pytest.raises(ConfigError, match="not enough places"):
        Trainer(load_train_config(path), False)


def test_trained_checkpoint_exports_to_onnx(tmp_path, nordland):
    pytest.importorskip("onnxruntime")
    from selavpr_ros.cli import main

    path = write_config(tmp_path, nordland, epochs=1)
    Trainer(load_train_config(path), False).fit()
    out = tmp_path / "m.onnx"
    assert main(["export-onnx", str(tmp_path / "run" / "best.ckpt"), "--out", str(out), "--check"]) == 0
    from selavpr_ros.inference.onnx_backend import OnnxExtractor

    batch = np.random.default_rng(0).standard_normal((2, 3, 28, 56)).astype(np.float32)
    onnx_desc = OnnxExtractor(out).run(batch)
    torch_desc = load_checkpoint(tmp_path / "run" / "best.ckpt")(torch.from_numpy(batch)).descriptors
    np.testing.assert_allclose(onnx_desc.descriptors, torch_desc.detach().numpy(), atol=1e-4)


def test_paths_from_the_command_line_resolve_against_the_working_directory(tmp_path, nordland, monkeypatch):
    (tmp_path / "configs").mkdir()
    path = write_config(tmp_path / "configs", nordland, **{"data.root": "../data"})
    assert load_train_config(path).data.root == str((tmp_path / "data").resolve())  # the file's own folder
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert load_train_config(path, {"data.root": "nl"}).data.root == str(work / "nl")  # where the user runs
    proc = run_cli(str(path), "--set", "data.root=nl", cwd=work)
    assert proc.returncode == 1 and f"data.root {work / 'nl'} does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
