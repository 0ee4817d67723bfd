"""Our checkpoint format: round trip, self-description, refusal of foreign or damaged files."""

from __future__ import annotations

import pytest
import torch
from _layouts import selavpr_release
from conftest import randomize_trainable, tiny_config

from selavpr_ros.errors import CheckpointError
from selavpr_ros.models.checkpoint import FORMAT_VERSION, load_checkpoint, read_checkpoint, save_checkpoint
from selavpr_ros.models.vpr import build_model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return randomize_trainable(build_model(tiny_config("selavpr++"))).eval()


def test_round_trip_gives_identical_outputs(tmp_path, model):
    ckpt = save_checkpoint(model, tmp_path / "m.pt", metadata={"note": "test"})
    loaded = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(2, 3, 56, 84)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    torch.testing.assert_close(a.descriptors, b.descriptors, rtol=0, atol=0)
    assert torch.equal(a.codes, b.codes)
    info = read_checkpoint(tmp_path / "m.pt")
    assert info.fingerprint == ckpt.fingerprint and info.metadata["note"] == "test"
    assert info.config == model.config and info.layout == model.layout
    assert info.model_id.startswith("selavpr++:")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["preprocess"]["height"] == 56 and raw["package_version"] and raw["layout"]["float_dim"] == 128 * 2


def test_fingerprint_changes_with_weights(tmp_path, model):
    a = save_checkpoint(model, tmp_path / "a.pt").fingerprint
    with torch.no_grad():
        model.float_head.proj_out.bias[0] += 1e-3
    assert save_checkpoint(model, tmp_path / "b.pt").fingerprint != a


def test_half_precision_storage(tmp_path, model):
    save_checkpoint(model, tmp_path / "f.pt")
    save_checkpoint(model, tmp_path / "h.pt", half=True)
    assert (tmp_path / "h.pt").stat().st_size < 0.6 * (tmp_path / "f.pt").stat().st_size
    x = torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        diff = (load_checkpoint(tmp_path / "h.pt")(x).descriptors - model(x).descriptors).abs().max()
    assert diff < 1e-2


def test_foreign_release_gets_a_conversion_hint(tmp_path):
    torch.save(selavpr_release(128, 4), tmp_path / "SelaVPR.pth")
    with pytest.raises(CheckpointError, match="import-checkpoint selavpr FILE"):
        load_checkpoint(tmp_path / "SelaVPR.pth")


def test_damaged_files_are_refused(tmp_path, model):
    save_checkpoint(model, tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "t.pt")

    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    raw["format_version"] = FORMAT_VERSION + 1
    torch.save(raw, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="written by a newer selavpr_ros"):
        load_checkpoint(tmp_path / "new.pt")

    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    raw["model_config"]["backbone"]["depht"] = 3
    torch.save(raw, tmp_path / "cfg.pt")
    with pytest.raises(CheckpointError, match=r"invalid model configuration.*backbone\.depht: unknown key"):
        load_checkpoint(tmp_path / "cfg.pt")

    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    raw["layout"]["float_dim"] = 999
    torch.save(raw, tmp_path / "layout.pt")
    with pytest.raises(CheckpointError, match="disagrees with its configuration"):
        load_checkpoint(tmp_path / "layout.pt")

    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    raw["state_dict"]["float_head.proj_out.weight"][0, 0] = float("inf")
    torch.save(raw, tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match="'float_head.proj_out.weight' has 1 NaN or infinite"):
        load_checkpoint(tmp_path / "inf.pt")

    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    raw["state_dict"]["float_head.proj_out.weight"][0, 0] += 1.0
    torch.save(raw, tmp_path / "bits.pt")
    with pytest.raises(CheckpointError, match="do not match their fingerprint"):
        load_checkpoint(tmp_path / "bits.pt")

    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    raw["model_config"]["backbone"]["embed_dim"] = 192
    raw["model_config"]["backbone"]["num_heads"] = 3
    raw["layout"]["float_dim"] = 2 * 192
    torch.save(raw, tmp_path / "other_backbone.pt")
    with pytest.raises(CheckpointError, match="has shape .* the model expects"):
        load_checkpoint(tmp_path / "other_backbone.pt")


def test_model_id_names_the_configuration_and_old_ids_still_match(tmp_path, model):
    """Same weights at another input size are another model: a map refuses it. Maps and ONNX files
    written when ids named the weights only still match the checkpoint they came from."""
    import json
    import re
    import sqlite3
    from dataclasses import replace

    from selavpr_ros.errors import LayoutMismatchError
    from selavpr_ros.inference.onnx_backend import OnnxExtractor, _write_metadata, export_onnx, read_metadata
    from selavpr_ros.mapdb.database import MapDatabase

    small = read_checkpoint(save_checkpoint(model, tmp_path / "a.pt").path)
    model.config = model.config.with_input(70, 98)
    large = read_checkpoint(save_checkpoint(model, tmp_path / "b.pt").path)
    renamed = replace(large.config, name="another name")
    assert small.fingerprint == large.fingerprint and small.model_id != large.model_id
    assert small.layout == large.layout  # the descriptors' shape alone cannot tell them apart
    assert replace(large, config=renamed).model_id == large.model_id  # a free-text name is not the model
    refusal = re.escape(f"built with model {small.model_id}, not {large.model_id}; descriptors of different "
                        "weights or configuration")
    with MapDatabase.create(tmp_path / "map", small.layout, small.model_id, small.config.to_dict()) as db, \
            pytest.raises(LayoutMismatchError, match=refusal):
        db.check_model(large.layout, large.model_id)
    legacy = f"{small.config.method}:{small.fingerprint[:16]}"  # the id format before the configuration counted
    conn = sqlite3.connect(tmp_path / "map" / "map.sqlite")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'model_id'", (legacy,))
    conn.execute("DELETE FROM meta WHERE key = 'model_id_format'")
    conn.commit()
    conn.close()
    with MapDatabase.open(tmp_path / "map") as old:
        assert old.model_id == small.model_id
        old.check_model(small.layout, small.model_id)
    onnx = tmp_path / "a.onnx"
    export_onnx(small.build(), onnx, model_id=legacy)
    meta = read_metadata(onnx)
    del meta["model_id_format"]
    _write_metadata(onnx, meta)
    assert OnnxExtractor(onnx, device="cpu").model_id == small.model_id
    assert json.loads(meta["model_config"]) == small.config.to_dict()
