"""Files the package does not control — datasets, training folders — never run code (issue: untrusted inputs)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from selavpr_ros.errors import CheckpointError, DatasetError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "selavpr_ros" / "data" / "nordland_demo"


class _Payload:
    """Unpickling this writes a marker file: proof that a loader ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_precomputed_dataset_files_cannot_run_code(tmp_path):
    from selavpr_ros.evaluation.evaluate import load_precomputed

    marker = tmp_path / "pwned"
    evil = np.empty(1, object)
    evil[0] = _Payload(marker)
    np.save(tmp_path / "x_gt.npy", evil, allow_pickle=True)
    np.save(tmp_path / "x_dbImages.npy", np.array(["a.jpg"]))
    np.save(tmp_path / "x_qImages.npy", np.array(["b.jpg"]))
    with pytest.raises(DatasetError, match=r"x_gt.npy: refused: refusing to load posix.system"):
        load_precomputed(tmp_path)
    assert not marker.exists()


def test_precomputed_ragged_ground_truth_still_loads(tmp_path):
    from selavpr_ros.evaluation.evaluate import load_precomputed

    gt = np.empty(2, object)
    gt[0], gt[1] = np.array([0, 1]), np.array([1])
    np.save(tmp_path / "v_gt.npy", gt, allow_pickle=True)
    np.save(tmp_path / "v_dbImages.npy", np.array(["db/0.jpg", "db/1.jpg"]))
    np.save(tmp_path / "v_qImages.npy", np.array(["q/0.jpg", "q/1.jpg"]))
    ev = load_precomputed(tmp_path)
    assert [list(p) for p in ev.positives] == [[0, 1], [1]] and ev.database[1].name == "1.jpg"


def test_planted_training_state_cannot_run_code(tmp_path):
    from selavpr_ros.training.config import load_train_config
    from selavpr_ros.training.trainer import Trainer

    cfg = {
        "data": {"kind": "sequence", "root": str(DEMO), "train_span": [0.0, 0.45], "val_span": [0.5, 1.0]},
        "model": {"method": "selavpr++",
                  "backbone": {"arch": "custom", "embed_dim": 64, "depth": 2, "num_heads": 1, "pretrain_grid": 4},
                  "preprocess": {"height": 28, "width": 56, "normalize": "per_image"},
                  "selavprpp": {"float_dim": 64, "mca_channels": [32, 16, 4, 8, 4, 8]}},
        "augment": {"enabled": False}, "places_per_batch": 4, "images_per_place": 2, "epochs": 1,
        "output": str(tmp_path / "run"),
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    trainer = Trainer(load_train_config(tmp_path / "train.yaml"), progress=False)
    marker = tmp_path / "pwned"
    (tmp_path / "run").mkdir(exist_ok=True)
    torch.save({"resume_key": "x", "payload": _Payload(marker)}, tmp_path / "run" / "state.pt")
    with pytest.raises(CheckpointError, match="cannot read training state"):
        trainer.load_state()
    assert not marker.exists()


def test_save_map_names_stay_in_the_snapshot_folder(tmp_path):
    """~/save_map's name comes from any DDS peer: no absolute paths, '..', '~', and a bounded count."""
    from conftest import demo_images

    from selavpr_ros.errors import MapError
    from selavpr_ros.node.params import validate
    from selavpr_ros.node.pipeline import Frame, VPRPipeline
    from selavpr_ros.transport.image_decoding import encode_image
    from selavpr_ros.transport.msgtypes import message

    pipe = VPRPipeline(validate({"map_path": str(tmp_path / "map"), "device": "cpu", "max_snapshots": 2}))
    rgb = demo_images("summer", 0, 1)[0]
    pipe.process(Frame(message("sensor_msgs/msg/Image", **encode_image(rgb)), 1, "cam"))
    for bad in ("/tmp/elsewhere", "../up", "a/../../b", "~/home", ".hidden", "a/b", "x" * 200):
        with pytest.raises(ValueError, match="refused"):
            pipe.save_map(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map"]
    assert "copied" in pipe.save_map("one") and "copied" in pipe.save_map("two")
    with pytest.raises(MapError, match="max_snapshots"):
        pipe.save_map("three")
    assert sorted(p.name for p in (tmp_path / "map.snapshots").iterdir()) == ["one", "two"]
    pipe.close()


def test_dependency_floors_exclude_unsafe_loaders():
    import configparser

    from selavpr_ros.models.weights import torch_loader_advisory

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    requirements = cfg["options"]["install_requires"] + "".join(cfg["options.extras_require"].values())
    floors = [line.strip() for line in requirements.splitlines() if line.strip().startswith(("torch", "onnxruntime"))]
    assert "torch>=2.10" in floors and "onnxruntime>=1.20" in floors and "onnxruntime-gpu>=1.20" in floors
    assert set(floors) == {"torch>=2.10", "onnxruntime>=1.20", "onnxruntime-gpu>=1.20"}  # every mention has it
    assert torch_loader_advisory("2.5.1+cpu") and "CVE-2025-32434" in torch_loader_advisory("2.5.1")
    assert torch_loader_advisory("2.10.0") is None and torch_loader_advisory("2.13.0+cpu") is None


def test_downloads_are_cached_by_full_url_and_verified(tmp_path, monkeypatch):
    """No network here: the download function is replaced by a local copy; the cache logic is the real one."""
    import torch.hub

    from selavpr_ros.models import weights

    monkeypatch.setenv("SELAVPR_CACHE", str(tmp_path / "cache"))
    served = {"https://dl.example/a/dinov2_vitb14_pretrain.pth": b"official",
              "https://evil.example/x/dinov2_vitb14_pretrain.pth": b"other"}
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, progress=True: Path(dst).write_bytes(served[url]))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "dinov2_vitb14_pretrain.pth").write_bytes(b"planted")  # the old, name-only cache slot
    a = weights.download_cached("https://dl.example/a/dinov2_vitb14_pretrain.pth")
    b = weights.download_cached("https://evil.example/x/dinov2_vitb14_pretrain.pth")
    assert a.read_bytes() == b"official" and b.read_bytes() == b"other" and a != b
    assert weights.download_cached("https://dl.example/a/dinov2_vitb14_pretrain.pth") == a  # reused
    a.write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="does not match its SHA-256"):
        weights.download_cached("https://dl.example/a/dinov2_vitb14_pretrain.pth")
    monkeypatch.setitem(weights.KNOWN_SHA256, "https://dl.example/c/w.pth", "0" * 64)
    served["https://dl.example/c/w.pth"] = b"not what was published"
    with pytest.raises(CheckpointError, match="not the published"):
        weights.download_cached("https://dl.example/c/w.pth")
