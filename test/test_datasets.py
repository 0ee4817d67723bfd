"""Dataset layouts, ground truth, place batching and field-of-view overlap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from selavpr_ros.datasets.base import PlaceSet
from selavpr_ros.datasets.fov import fov_overlap, pair_bins
from selavpr_ros.datasets.gsv_cities import COLUMNS, image_name, load_gsv_cities
from selavpr_ros.datasets.map_data import load_map_eval, load_map_places, load_map_poses
from selavpr_ros.datasets.sequence import load_sequence_eval, load_sequence_places
from selavpr_ros.datasets.utm import load_utm_eval, load_utm_places, parse_utm
from selavpr_ros.errors import DatasetError


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


# -- frame-aligned sequences ---------------------------------------------------------------------
def test_sequence_eval_on_nordland(nordland):
    ev = load_sequence_eval(nordland, span=(0.4, 1.0), tolerance=2)
    n = len(ev.queries)
    assert len(ev.database) == n == 120
    assert ev.queries[0].parent.name == "winter" and ev.database[0].parent.name == "summer"
    assert ev.queries[0].name == ev.database[0].name
    assert ev.positives[0].tolist() == [0, 1, 2]
    assert ev.positives[10].tolist() == [8, 9, 10, 11, 12]
    assert ev.queries_without_match == 0


def test_sequence_places_are_separated_in_batches(nordland):
    places = load_sequence_places(nordland, span=(0.0, 1.0), frames_per_place=2, tolerance=2)
    assert places.min_separation == 5
    seen = []
    for idx, labels in places.batches(np.random.default_rng(0), 8, 4):
        assert len(idx) == 32
        chosen = np.unique(labels)
        assert len(chosen) == 8
        centres = np.array([places.place_xy[int(c)][0] for c in chosen])
        gaps = np.abs(centres[:, None] - centres[None, :])[~np.eye(8, dtype=bool)]
        assert gaps.min() >= 5
        for lab in chosen:  # summer and winter of both frames of the place
            folders = {places.images[i].parent.name for i in idx[labels == lab]}
            assert folders == {"summer", "winter"}
        seen += chosen.tolist()
    assert len(seen) == len(set(seen))  # each place at most once per epoch
    assert len(seen) >= 0.8 * len(places.places)


def test_sequence_missing_folder_names_what_exists(tmp_path):
    _png(tmp_path / "summer" / "a.png")
    with pytest.raises(DatasetError, match="winter.*folders present: summer"):
        load_sequence_eval(tmp_path)


def test_place_set_refuses_too_few_images(tmp_path):
    with pytest.raises(DatasetError, match="no place has at least 4 images"):
        PlaceSet("x", [tmp_path / f"{i}.png" for i in range(3)], np.array([0, 0, 1]), min_images=4)


# -- @utm layout ----------------------------------------------------------------------------------
def test_utm_layout_ground_truth_by_distance(tmp_path):
    split = tmp_path / "images" / "test"
    for e, n in [(0, 0), (20, 0), (30, 0), (100, 100)]:
        _png(split / "database" / f"@{500000 + e}@{4000000 + n}@x@.jpg")
    for e, n in [(0, 0), (55, 0), (300, 300)]:
        _png(split / "queries" / f"@{500000 + e}@{4000000 + n}@@.jpg")
    ev = load_utm_eval(tmp_path, "test", radius=25.0)
    assert [p.tolist() for p in ev.positives] == [[0, 1], [2], []]
    assert ev.queries_without_match == 1 and ev.threshold == "25 m"
    places = load_utm_places(tmp_path, "test", radius=10.0)
    assert len(places.images) == 7
    assert parse_utm(ev.database[1]) == (500020.0, 4000000.0)


def test_utm_bad_name(tmp_path):
    with pytest.raises(DatasetError, match="@utm_easting@utm_northing"):
        parse_utm(tmp_path / "photo.jpg")


# -- GSV-Cities --------------------------------------------------------------------------------------
def _gsv(tmp_path, rows, columns=COLUMNS):
    (tmp_path / "Dataframes").mkdir(parents=True, exist_ok=True)
    lines = [",".join(columns)]
    for r in rows:
        lines.append(",".join(str(r[c]) for c in columns))
        _png(tmp_path / "Images" / r["city_id"] / image_name({k: str(v) for k, v in r.items()}))
    (tmp_path / "Dataframes" / "Oslo.csv").write_text("\n".join(lines) + "\n")


def _row(place, i):
    return {"place_id": place, "year": 2015 + i, "month": 1 + i, "northdeg": 10 * i, "city_id": "Oslo",
            "lat": 59.9 + place * 1e-3, "lon": 10.7, "panoid": f"p{place}_{i}"}


def test_gsv_cities_places_with_enough_images(tmp_path):
    _gsv(tmp_path, [_row(0, i) for i in range(5)] + [_row(1, i) for i in range(3)] + [_row(2, i) for i in range(4)])
    places = load_gsv_cities(tmp_path, min_images=4)
    assert sorted(places.places.tolist()) == [0, 2]  # place 1 has only 3 images
    assert len(places.members(0)) == 5
    assert image_name({k: str(v) for k, v in _row(7, 1).items()}) == "Oslo_0000007_2016_02_010_59.907_10.7_p7_1.jpg"


def test_gsv_cities_missing_columns_and_images(tmp_path):
    _gsv(tmp_path, [_row(0, i) for i in range(4)], columns=("place_id", "year", "city_id"))
    with pytest.raises(DatasetError, match="missing columns month, northdeg"):
        load_gsv_cities(tmp_path)
    _gsv(tmp_path, [_row(0, i) for i in range(4)])
    next((tmp_path / "Images" / "Oslo").iterdir()).unlink()
    with pytest.raises(DatasetError, match="1 images listed in the CSVs are missing"):
        load_gsv_cities(tmp_path)


# -- field of view overlap -------------------------------------------------------------------------
def test_fov_identical_and_disjoint():
    p = np.array([3.0, -2.0, 0.7])
    assert fov_overlap(p, p) == pytest.approx(1.0)
    assert fov_overlap(p, p + [200.0, 0.0, 0.0]) == 0.0  # farther apart than two radii
    assert fov_overlap([0, 0, 0], [0, 0, math.pi]) == pytest.approx(0.0, abs=1e-9)  # back to back, 90 deg


def test_fov_rotated_sectors_hand_drawn():
    # same place, 90 deg sectors turned 45 deg apart share a 45 deg wedge: half of each
    assert fov_overlap([0, 0, 0], [0, 0, math.radians(45)], math.radians(90), 50.0) == pytest.approx(0.5, abs=0.03)
    # half discs turned 90 deg apart share a quarter disc: half of each
    assert fov_overlap([0, 0, 0], [0, 0, math.pi / 2], math.pi, 10.0) == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("d", [0.0, 5.0, 10.0, 15.0, 19.0])
def test_fov_full_discs_match_lens_area(d):
    r = 10.0
    lens = 2 * r * r * math.acos(d / (2 * r)) - d / 2 * math.sqrt(4 * r * r - d * d)
    got = fov_overlap([0, 0, 0], [d, 0, 1.0], 2 * math.pi, r, rings=96, rays=96)
    assert got == pytest.approx(lens / (math.pi * r * r), abs=0.02)


def test_fov_symmetric_and_bins():
    rng = np.random.default_rng(0)
    a = np.column_stack([rng.uniform(-30, 30, (50, 2)), rng.uniform(-math.pi, math.pi, 50)])
    b = np.column_stack([rng.uniform(-30, 30, (50, 2)), rng.uniform(-math.pi, math.pi, 50)])
    np.testing.assert_allclose(fov_overlap(a, b), fov_overlap(b, a), atol=0.03)
    assert pair_bins(np.array([1.0, 0.5, 0.49, 0.01, 0.0])).tolist() == [0, 0, 1, 1, 2]


# -- maps built from bags ----------------------------------------------------------------------------
def _posed_map(tmp_path, nordland, n=12, with_images=True):
    from _map_writer import LAYOUT, rows

    from selavpr_ros.mapdb.database import MapDatabase
    from selavpr_ros.types import KeyframeRecord, Pose

    frames = sorted((nordland / "summer").iterdir())[:n]
    records = []
    for i, f in enumerate(frames):
        records.append(KeyframeRecord(stamp_ns=i * 10**9, image_ref=str(f) if with_images else "",
                                      pose=Pose((10.0 * i, 0.0, 0.0))))
    desc, _ = rows(0, n)
    with MapDatabase.create(tmp_path / "map", LAYOUT, model_id="test") as db:
        db.add(desc, records)
    return tmp_path / "map"


def test_map_dataset_poses_places_and_eval(tmp_path, nordland):
    m = _posed_map(tmp_path, nordland)
    poses = load_map_poses(m)
    assert poses.poses.shape == (12, 3) and poses.poses[3, 0] == 30.0
    places = load_map_places(m, radius=25.0)  # 25 m cells over x = 0, 10, ..., 110
    assert [len(places.members(p)) for p in sorted(places.places)] == [3, 2, 3, 2, 2]
    ev = load_map_eval(m, m, radius=25.0)
    assert ev.positives[5].tolist() == [3, 4, 5, 6, 7]


def test_map_dataset_without_images(tmp_path, nordland):
    m = _posed_map(tmp_path, nordland, with_images=False)
    with pytest.raises(DatasetError, match="--pose-topic and --save-images"):
        load_map_poses(m)


def test_sequence_spans_must_leave_the_tolerance_between_them():
    from selavpr_ros.datasets.sequence import check_spans

    check_spans(3576, {"train": (0.0, 0.6), "validation": (0.65, 0.8), "test": (0.85, 1.0)}, 2)
    with pytest.raises(DatasetError, match=r"train span \(0.0, 0.7\) and validation span \(0.7, 1.0\) leave 0 frames"):
        check_spans(3576, {"train": (0.0, 0.7), "validation": (0.7, 1.0)}, 2)
    with pytest.raises(DatasetError, match="validation span .* and test span"):
        check_spans(200, {"train": (0.0, 0.5), "validation": (0.6, 0.9), "test": (0.8, 1.0)}, 2)
