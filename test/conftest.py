from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
DATA = ROOT.parent / "shared" / "data" / "nordland64"

os.environ.setdefault("OMP_NUM_THREADS", "2")


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


@pytest.fixture
def nordland() -> Path:
    if not DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real images not found at {DATA} (CI must have shared/ beside the checkout)")
        pytest.skip(f"real images not found at {DATA}")
    return DATA
