"""GSV-Cities: one CSV per city in ``Dataframes/``, images in ``Images/<city>/``.

CSV columns: place_id, year, month, northdeg, city_id, lat, lon, panoid. An
image is ``<city>_<place:07d>_<year:04d>_<month:02d>_<northdeg:03d>_<lat>_<lon>_<panoid>.jpg``;
places with fewer than ``min_images`` images are dropped.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from selavpr_ros.datasets.base import PlaceSet
from selavpr_ros.errors import DatasetError

COLUMNS = ("place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid")


def image_name(row: dict[str, str]) -> str:
    """File name of a CSV row (numbers formatted as the dataset's own tools write them)."""
    place = int(row["place_id"])
    lat, lon = str(float(row["lat"])), str(float(row["lon"]))
    return (f"{row['city_id']}_{place:07d}_{int(row['year']):04d}_{int(row['month']):02d}_"
            f"{int(row['northdeg']):03d}_{lat}_{lon}_{row['panoid']}.jpg")


def load_gsv_cities(root: str | Path, cities: list[str] | None = None, min_images: int = 4,
                    check_files: bool = True) -> PlaceSet:
    root = Path(root)
    frames = root / "Dataframes"
    if not frames.is_dir():
        raise DatasetError(f"{root}: no Dataframes/ folder (not a GSV-Cities layout)")
    csvs = [frames / f"{c}.csv" for c in cities] if cities else sorted(frames.glob("*.csv"))
    images, labels, missing = [], [], []
    for city_index, path in enumerate(csvs):
        if not path.is_file():
            raise DatasetError(f"{path}: city CSV not found")
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            absent = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if absent:
                raise DatasetError(f"{path}: missing columns {', '.join(absent)}")
            for line, row in enumerate(reader, start=2):
                try:
                    name = image_name(row)
                    place = int(row["place_id"]) + city_index * 10**6
                except (TypeError, ValueError) as exc:
                    raise DatasetError(f"{path}:{line}: bad value ({exc})") from None
                image = root / "Images" / row["city_id"] / name
                if check_files and not image.is_file():
                    missing.append(image)
                    continue
                images.append(image)
                labels.append(place)
    if missing:
        raise DatasetError(f"{len(missing)} images listed in the CSVs are missing, e.g. {missing[0]}")
    return PlaceSet(root.name, images, np.asarray(labels), min_images=min_images)
