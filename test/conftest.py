from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
DATA = ROOT.parent / "shared" / "data" / "nordland64"

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Every DDS participant of the tests (ours, CycloneDDS's, ROS 2's) stays on loopback.
from selavpr_ros.transport.discovery import pin_loopback  # noqa: E402

pin_loopback()


def tiny_config(method: str = "selavpr", height: int = 56, width: int = 84, registers: int = 0, **sections):
    """A small DINOv2-family model (width 128, 4 blocks) for fast tests."""
    from selavpr_ros.models.config import ModelConfig

    data = {
        "method": method,
        "backbone": {"arch": "custom", "embed_dim": 128, "depth": 4, "num_heads": 2, "registers": registers},
        "preprocess": {"height": height, "width": width},
    }
    data.update(sections)
    return ModelConfig.from_dict(data)


def randomize_trainable(model, seed: int = 0, scale: float = 0.02):
    """Give zero-initialised adapters random values so that they change the outputs."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if model.is_trainable(name) and not name.endswith(".p") and "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


DEMO = ROOT / "selavpr_ros" / "data" / "nordland_demo"


@pytest.fixture
def nordland() -> Path:
    """Real Nordland frames every checkout has: the 200 summer and 200 winter 64 x 32 frames bundled with
    the package (held-out part of the route), in the sequence layout (same name = same place)."""
    return DEMO


@pytest.fixture
def nordland_full() -> Path:
    """The whole 64 x 32 Nordland route (3576 places), for the few tests that need its length; present
    beside the checkout on the project's machines (../shared/data/nordland64)."""
    if not DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real images not found at {DATA} (CI must have shared/ beside the checkout)")
        pytest.skip(f"the full Nordland route is not at {DATA}")
    return DATA


def demo_images(season: str, start: int = 0, n: int = 10, step: int = 1):
    """Real Nordland frames bundled with the package (200 per season), as RGB arrays."""
    import numpy as np
    from PIL import Image

    names = sorted((DEMO / season).glob("*.png"))[start : start + n * step : step]
    return [np.asarray(Image.open(p).convert("RGB")) for p in names]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say in every run's summary whether the ROS 2 graph tests ran (they need a ROS 2 install)."""
    ran = skipped = 0
    reason = ""
    for kind in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(kind, []):
            if "test_ros2_graph" not in getattr(report, "nodeid", ""):
                continue
            if kind == "skipped":
                skipped += 1
                reason = reason or str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
            elif report.when == "call" or kind == "error":
                ran += 1
    if ran:
        terminalreporter.write_line(f"ROS 2 graph tests: {ran} ran against a real ROS 2 install")
    elif skipped:
        terminalreporter.write_line(f"ROS 2 graph tests: skipped ({reason})")
