"""`selavpr-ros demo`, the README's first command: real bags from bundled real images, map, replay, recall."""

from __future__ import annotations

import json

import pytest

from selavpr_ros.cli import main
from selavpr_ros.cli.demo import demo_images, run_demo
from selavpr_ros.mapdb.database import MapDatabase


def test_bundled_images_are_small_and_attributed():
    seasons = demo_images()
    assert len(seasons["summer"]) == len(seasons["winter"]) == 200
    root = seasons["summer"][0].parents[1]
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size <= 2 * 2**20
    assert "Sünderhauf" in (root / "ATTRIBUTION.md").read_text()


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "Recall@1" in text and "loop closures" in text and "describe" in text
    assert (out / "nordland_summer" / "metadata.yaml").is_file()
    assert any(p.suffix == ".mcap" for p in (out / "nordland_winter").iterdir())
    with MapDatabase.open(out / "map") as db:
        assert db.count == 200 and db.sessions() == {"summer": 200}
    queries = json.loads((out / "candidates.json").read_text())
    assert len(queries) == 200
    # run again: the folder is replaced, not appended to
    assert main(["demo", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    with MapDatabase.open(out / "map") as db:
        assert db.count == 200


def test_demo_recall_and_onnx_checkpoint(tmp_path):
    pytest.importorskip("onnxruntime")
    s = run_demo(tmp_path / "torch", None, "cpu", quiet=True)
    assert s["queries"] == 200
    assert s["recall"][1] >= 25.0 and s["recall"][5] >= 45.0  # 200-frame map; chance is ~2.5 % at R@1
    plain = s["without_geometry"]  # retrieval alone accepts matches, some wrong ...
    assert plain["accepted"] >= 5 and plain["precision"] >= 50.0
    assert all(ok for *_, ok in s["closures"])  # ... the geometric stage accepts none that is wrong
    from selavpr_ros.models.zoo import builtin_checkpoint

    onnx = tmp_path / "demo.onnx"
    assert main(["export-onnx", str(builtin_checkpoint()), "--out", str(onnx)]) == 0
    o = run_demo(tmp_path / "onnx", str(onnx), "cpu", quiet=True)
    assert abs(o["recall"][1] - s["recall"][1]) <= 1.0 and abs(o["recall"][5] - s["recall"][5]) <= 1.0


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "mine"), "--quiet"]) == 2
    assert (tmp_path / "mine" / "thesis.tex").is_file()


def test_a_bad_checkpoint_leaves_the_previous_demo_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / ".selavpr_demo").touch()
    (out / "candidates.json").write_text("[]")  # what an earlier run left
    assert main(["demo", "--out", str(out), "--checkpoint", str(tmp_path / "missing.ckpt"), "--quiet"]) != 0
    assert "missing.ckpt" in capsys.readouterr().err
    assert (out / "candidates.json").read_text() == "[]"
