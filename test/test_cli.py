"""The ``selavpr-ros`` command line: help, exit codes, and the model commands end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _layouts import selavpr_release

from selavpr_ros.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selavpr_ros", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("model-info", "import-checkpoint", "export-onnx"):
        assert command in result.stdout


def test_model_info_prints_paper_counts(capsys):
    assert main(["model-info", str(ROOT / "config/models/selavpr_vitl14.yaml")]) == 0
    out = capsys.readouterr().out
    assert "25,202,688" in out and "2,654,592" in out and "61 x 61 x 128" in out
    assert main(["model-info", str(ROOT / "config/models/selavprpp_vitl14.yaml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    adapters = next(g for g in data["groups"] if g["name"] == "float_adapters")
    assert adapters["per_module"] == 1_354_944 and data["layout"]["float_dim"] == 4096


def test_config_errors_exit_2_with_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: selavpr\nbackbone: {arch: vitl14, colour: red}\n")
    result = run_cli("model-info", str(bad))
    assert result.returncode == 2
    assert "backbone.colour: unknown key" in result.stderr and "Traceback" not in result.stderr


def test_missing_file_exits_1():
    result = run_cli("export-onnx", "/nonexistent/model.pt")
    assert result.returncode == 1 and "file not found" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_import_then_export_end_to_end(tmp_path):
    torch.save(selavpr_release(128, 4), tmp_path / "SelaVPR_msls.pth")
    out = tmp_path / "selavpr.pt"
    result = run_cli(
        "import-checkpoint", "auto", str(tmp_path / "SelaVPR_msls.pth"), "--out", str(out), "--size", "56", "84"
    )
    assert result.returncode == 0, result.stderr
    assert "model id selavpr:" in result.stdout
    info = run_cli("model-info", str(out))
    assert "input       56x84" in info.stdout and "model id    selavpr:" in info.stdout
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli("export-onnx", str(out), "--check", cwd=work)
    assert result.returncode == 0, result.stderr
    assert (work / "selavpr.onnx").is_file() and not (tmp_path / "selavpr.onnx").exists()  # where the user is
    assert "descriptors_max_abs" in result.stdout and "local_max_abs" in result.stdout
    assert len(result.stdout.splitlines()) + len(result.stderr.splitlines()) < 20  # no exporter log flood


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`selavpr-ros map stats --json MAP | head -1`: the reader leaves early; no traceback."""
    import subprocess
    import sys

    from _map_writer import LAYOUT, rows

    from selavpr_ros.mapdb.database import MapDatabase

    with MapDatabase.create(tmp_path / "map", LAYOUT, "t:1") as db:
        db.add(*rows(0, 3))
    proc = subprocess.Popen([sys.executable, "-m", "selavpr_ros", "map", "stats", "--json", str(tmp_path / "map")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_printed_json_is_strict_and_short():
    """What commands print parses under strict JSON (no NaN) and carries no 17-digit floats."""
    import json

    from selavpr_ros.cli import json_text

    text = json_text({"latency_p50_ms": float("nan"), "stage_ms": {"describe": 20.504939999999998},
                      "rows": [1, float("inf"), 0.1 + 0.2]})

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    assert json.loads(text, parse_constant=refuse) == {"latency_p50_ms": None, "stage_ms": {"describe": 20.5049},
                                                       "rows": [1, None, 0.3]}
