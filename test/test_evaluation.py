"""`selavpr-ros eval` on real Nordland frames: layouts, ground truth cache, stages, report and pictures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selavpr_ros.cli import main
from selavpr_ros.errors import DatasetError
from selavpr_ros.evaluation.evaluate import detect_layout, load_eval_set, parse_threshold
from selavpr_ros.evaluation.plots import plot_local_matches, plot_top_matches
from selavpr_ros.retrieval.verification import grid_pixels


@pytest.fixture
def subset(tmp_path, nordland) -> Path:
    """The bundled held-out stretch of the route, both seasons (200 places), in a folder of its own."""
    names = sorted(p.name for p in (nordland / "summer").iterdir())
    for season in ("summer", "winter"):
        (tmp_path / "nl" / season).mkdir(parents=True)
        for n in names:
            shutil.copy(nordland / season / n, tmp_path / "nl" / season / n)
    return tmp_path / "nl"


def test_layouts_are_detected_or_named(tmp_path, subset):
    assert detect_layout(subset) == "sequence"
    utm = tmp_path / "utm" / "images" / "test"
    for part in ("database", "queries"):
        (utm / part).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(utm / part / "@500000@4000000@.jpg")
    assert detect_layout(tmp_path / "utm") == "utm"
    pre = tmp_path / "pre"
    pre.mkdir()
    for kind in ("dbImages", "qImages", "gt"):
        np.save(pre / f"val_{kind}.npy", np.array([[0]] if kind == "gt" else ["a.jpg"]))
    assert detect_layout(pre) == "precomputed"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a dataset layout.*utm.*sequence.*precomputed.*map"):
        detect_layout(tmp_path / "empty")
    assert parse_threshold("25m") == ("m", 25.0) and parse_threshold("2frames") == ("frames", 2.0)
    with pytest.raises(DatasetError, match="write it as e.g. 25m or 2frames"):
        parse_threshold("close")
    with pytest.raises(DatasetError, match="does not fit the sequence layout"):
        load_eval_set(subset, threshold="25m", cache_dir=tmp_path / "gt")


def test_ground_truth_is_cached(tmp_path, subset):
    first = load_eval_set(subset, threshold="1frames", cache_dir=tmp_path / "gt")
    files = list((tmp_path / "gt").glob("*.json"))
    assert len(files) == 1
    again = load_eval_set(subset, threshold="1frames", cache_dir=tmp_path / "gt")
    assert [p.tolist() for p in again.positives] == [p.tolist() for p in first.positives]
    assert first.positives[5].tolist() == [4, 5, 6]
    load_eval_set(subset, threshold="2frames", cache_dir=tmp_path / "gt")
    assert len(list((tmp_path / "gt").glob("*.json"))) == 2  # another threshold, another entry


def test_eval_cli_report_on_nordland(tmp_path, subset, monkeypatch, capsys):
    monkeypatch.setenv("SELAVPR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"

    def scratch() -> set:
        import tempfile
        return {p for d in ("/dev/shm", tempfile.gettempdir()) if Path(d).is_dir()
                for p in Path(d).glob("selavpr_eval_*")}

    before = scratch()
    assert main(["eval", "--dataset", str(subset), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    assert scratch() == before  # the scratch index is gone
    report = json.loads((out / "report.json").read_text())
    assert report["queries"] == report["database_images"] == 200
    binary, full = report["recall"]["binary"], report["recall"]["+ float re-rank"]
    assert full["1"] >= 20.0 and full["5"] >= 35.0  # the built-in model on frames it never saw
    assert full["20"] >= full["5"] >= full["1"] and binary["20"] >= binary["1"]
    assert report["bytes_per_entry"]["codes"] == 64 and report["extraction_images_per_s"] > 0
    assert {r["map_size"] for r in report["latency_vs_map_size"]} == {50, 100, 200}
    assert all(r["p10_ms"] <= r["ms"] <= r["p90_ms"] and r["queries"] == 50 for r in report["latency_vs_map_size"])
    md = (out / "report.md").read_text()
    assert "| + float re-rank |" in md and "![" in md
    for png in ("recall.png", "latency.png", "top5.png", "pr.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 100 and np.asarray(im.convert("L")).std() > 5
    assert "R@1" in capsys.readouterr().out
    pr = report["precision_recall"]["+ float re-rank"]
    assert 0 < pr["auc_pr"] < 1 and pr["positives"] == 200 and pr["recall"] == sorted(pr["recall"])
    assert "| + float re-rank | " in md and "recall at 100 % precision" in md


def test_precision_recall_of_claims():
    from selavpr_ros.evaluation.precision_recall import pr_curve

    # 5 queries: claims of confidence 0.9 (right), 0.8 (right), 0.8 (wrong), 0.6 (right), none;
    # the last query has no true match in the map
    curve = pr_curve(np.array([0.9, 0.8, 0.8, 0.6, np.nan]), np.array([1, 1, 0, 1, 0], bool),
                     np.array([1, 1, 1, 1, 0], bool))
    assert curve.thresholds.tolist() == [0.9, 0.8, 0.6]  # ties make one operating point
    assert curve.precision.tolist() == pytest.approx([1.0, 2 / 3, 3 / 4])
    assert curve.recall.tolist() == pytest.approx([0.25, 0.5, 0.75])
    assert curve.auc == pytest.approx(0.25 * 1.0 + 0.25 * 2 / 3 + 0.25 * 0.75)
    assert curve.recall_at_precision(1.0) == 0.25 and curve.threshold_for_precision(1.0) == (0.9, 1.0, 0.25)
    assert curve.threshold_for_precision(0.75) == (0.6, 0.75, 0.75)
    # a query without a true match that is accepted is a false positive
    wrong = pr_curve(np.array([0.99, 0.5]), np.array([0, 1], bool), np.array([0, 1], bool))
    assert wrong.precision[0] == 0 and wrong.recall_at_precision(1.0) == 0.0
    empty = pr_curve(np.array([np.nan]), np.array([False]), np.array([True]))
    assert empty.auc == 0.0 and empty.threshold_for_precision(1.0) is None


def test_geometric_stage_in_eval_on_known_geometry(tmp_path, capsys, monkeypatch):
    """Real photographs seen by a turned camera: verification lifts recall at 100 % precision; the CLI
    prints the node thresholds that reach a target precision."""
    from selavpr_ros.cli.eval_commands import print_thresholds
    from selavpr_ros.datasets.rotated_views import write_rotated_views
    from selavpr_ros.evaluation.evaluate import evaluate
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.models.zoo import builtin_checkpoint

    views = write_rotated_views(tmp_path / "views")
    report, extras = evaluate(open_extractor(builtin_checkpoint(), device="cpu"), views.eval_set,
                              ["binary", "float", "geometric"], progress=False, work_dir=tmp_path / "w")
    plain = report.precision_recall["+ float re-rank"]
    verified = report.precision_recall["+ geometric verification"]
    # measured with the built-in model: 0.23 retrieval alone
    assert verified["recall_at_100_precision"] >= max(0.5, plain["recall_at_100_precision"] + 0.25)
    assert verified["auc_pr"] > plain["auc_pr"] + 0.2  # measured 0.69 vs 0.40
    assert report.recall["+ geometric verification"][1] > report.recall["+ float re-rank"][1]
    claims = [c for c in extras["geometry_claims"] if c is not None]
    assert len(claims) == report.geometry["queries_with_a_verified_candidate"] >= 13
    assert report.geometry["ms_per_candidate"] > 0 and report.geometry["keypoint_bytes_per_keyframe"] > 1000
    print_thresholds(report, 1.0)
    out = capsys.readouterr().out
    assert "loop_closure.geometry.min_inliers:=" in out and "(precision 100.0 %" in out


def test_local_stage_with_a_selavpr_model(tmp_path, subset):
    from conftest import tiny_config

    from selavpr_ros.models.checkpoint import save_checkpoint
    from selavpr_ros.models.vpr import build_model

    model = build_model(tiny_config("selavpr", height=28, width=56, selavpr={"local_hidden": 32, "local_dim": 16}))
    save_checkpoint(model, tmp_path / "sela.ckpt")
    out = tmp_path / "report"
    assert main(["eval", "--dataset", str(subset), "--checkpoint", str(tmp_path / "sela.ckpt"), "--stages",
                 "binary,float,local", "--out", str(out), "--quiet", "--device", "cpu", "--max-queries", "40",
                 "--local-k", "5"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["recall"]) == {"binary", "+ float re-rank", "+ local re-rank"}
    assert "local" in report["stage_ms"]["+ local re-rank"] and report["queries"] == 40
    assert (out / "local_matches.png").is_file()

    # The database stored as a map would store it: local features pooled 2 x 2 in int8 (5 x 13 -> 2 x 6 cells
    # of 16 values, one byte each); the float stage does not change, the local one is measured on them.
    pooled = tmp_path / "pooled"
    assert main(["eval", "--dataset", str(subset), "--checkpoint", str(tmp_path / "sela.ckpt"), "--stages",
                 "binary,float,local", "--out", str(pooled), "--quiet", "--device", "cpu", "--max-queries", "40",
                 "--local-k", "5", "--local-pool", "2", "--local-dtype", "int8"]) == 0
    small = json.loads((pooled / "report.json").read_text())
    assert report["bytes_per_entry"]["local"] == 5 * 13 * 16 * 2
    assert small["bytes_per_entry"]["local"] == 2 * 6 * 16
    assert small["recall"]["+ float re-rank"] == report["recall"]["+ float re-rank"]
    assert set(small["recall"]["+ local re-rank"]) == set(report["recall"]["+ local re-rank"])


def test_eval_bad_inputs(tmp_path, subset):
    assert main(["eval", "--dataset", str(tmp_path / "nowhere"), "--quiet"]) == 1
    utm = tmp_path / "utm" / "images" / "test"
    for part, east in (("database", 500000), ("queries", 510000)):  # 10 km apart: nothing matches
        (utm / part).mkdir(parents=True)
        Image.new("RGB", (112, 56), (90, 90, 90)).save(utm / part / f"@{east}@4000000@.jpg")
    with pytest.raises(DatasetError, match="no query has a ground-truth match within 25 m"):
        from selavpr_ros.evaluation.evaluate import evaluate
        from selavpr_ros.inference.loader import open_extractor
        from selavpr_ros.models.zoo import builtin_checkpoint

        ev = load_eval_set(tmp_path / "utm", cache_dir=tmp_path / "gt")
        evaluate(open_extractor(builtin_checkpoint(), device="cpu"), ev, ["binary"], progress=False)
    from conftest import tiny_config

    from selavpr_ros.models.checkpoint import save_checkpoint
    from selavpr_ros.models.vpr import build_model

    save_checkpoint(build_model(tiny_config("dinov2-gem", height=224, width=448)), tmp_path / "big.ckpt")
    with pytest.raises(DatasetError, match="7.0x upscaling"):
        from selavpr_ros.evaluation.evaluate import check_input_size
        from selavpr_ros.inference.loader import open_extractor

        check_input_size(load_eval_set(subset, cache_dir=tmp_path / "gt"), open_extractor(tmp_path / "big.ckpt"))


def test_plot_helpers(tmp_path, nordland):
    assert grid_pixels((2, 4), 40, 20)[[0, 7]].tolist() == [[5.0, 5.0], [35.0, 15.0]]
    frames = sorted((nordland / "summer").iterdir())[:3]
    path = plot_top_matches(frames[0], frames[1:], [True, False], tmp_path / "t.png", scores=[0.9, 0.5])
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    green = (rgb[..., 1] > 120) & (rgb[..., 0] < 60) & (rgb[..., 2] < 100)
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    cols_g, cols_r = np.flatnonzero(green.any(0)), np.flatnonzero(red.any(0))
    assert len(cols_g) > 20 and len(cols_r) > 20 and cols_g.mean() < cols_r.mean()  # #1 green, #2 red
    with pytest.raises(ValueError, match="2 candidates, 1 labels"):
        plot_top_matches(frames[0], frames[1:], [True], tmp_path / "x.png")
    with pytest.raises(ValueError, match="one size"):
        plot_local_matches(frames[0], frames[1], np.zeros((3, 2)), np.zeros((2, 2)), tmp_path / "m.png")
    p = plot_local_matches(frames[0], frames[1], np.array([[5.0, 5.0]]), np.array([[30.0, 10.0]]), tmp_path / "m.png")
    assert Image.open(p).size[0] > 64


def test_precomputed_layout_from_npy_lists(tmp_path, subset):
    """GSV-Cities-style validation set: image lists and ground truth in .npy files, paths relative to the root."""
    from selavpr_ros.evaluation.evaluate import evaluate
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.models.zoo import builtin_checkpoint

    names = sorted(p.name for p in (subset / "summer").iterdir())[:60]
    np.save(subset / "nl_val_dbImages.npy", np.array([f"summer/{n}" for n in names]))
    np.save(subset / "nl_val_qImages.npy", np.array([f"winter/{n}" for n in names]))
    gt = np.empty(len(names), dtype=object)
    gt[:] = [np.arange(max(0, i - 1), min(len(names), i + 2)) for i in range(len(names))]
    np.save(subset / "nl_val_gt.npy", gt, allow_pickle=True)
    ev = load_eval_set(subset, cache_dir=tmp_path / "gt")
    assert ev.name == "nl_val" and len(ev.queries) == 60 and ev.positives[0].tolist() == [0, 1]
    report, _ = evaluate(open_extractor(builtin_checkpoint(), device="cpu"), ev, ["binary", "float"],
                         progress=False)
    assert report.recall["+ float re-rank"][5] > 30.0


def test_eval_range_picks_a_span_of_the_route(tmp_path, subset, capsys):
    """--range evaluates one span (a held-out test span): its places only, as queries and database."""
    ev = load_eval_set(subset, threshold="2frames", cache_dir=tmp_path / "gt", span=(0.75, 1.0))
    assert len(ev.queries) == len(ev.database) == 50 and ev.queries[0].name == sorted(
        p.name for p in (subset / "winter").iterdir())[150]
    assert ev.positives[0].tolist() == [0, 1, 2]
    out = tmp_path / "report"
    assert main(["eval", "--dataset", str(subset), "--range", "0.75:1.0", "--out", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    assert json.loads((out / "report.json").read_text())["queries"] == 50
    with pytest.raises(DatasetError, match="sequence layout only"):
        load_eval_set(tmp_path / "report", layout="utm", span=(0.0, 0.5), cache_dir=tmp_path / "gt")
    assert main(["eval", "--dataset", str(subset), "--range", "0.9:0.2"]) == 2
    assert "START < STOP" in capsys.readouterr().err
