"""Child process for crash tests: appends deterministic keyframes to a map until killed.

Row i always has the same content (seeded by i), so the parent can verify
every committed row after a SIGKILL. Prints ``committed N`` after each add.
"""

from __future__ import annotations

import sys

import numpy as np

from selavpr_ros.errors import MapError
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.types import DescriptorLayout, Descriptors, KeyframeRecord, Pose

LAYOUT = DescriptorLayout(512, 64, 8, (5, 7))


def rows(start: int, n: int) -> tuple[Descriptors, list[KeyframeRecord]]:
    codes, floats, local = [], [], []
    for i in range(start, start + n):
        rng = np.random.default_rng(i)
        codes.append(rng.integers(0, 256, 64, dtype=np.uint8))
        f = rng.standard_normal(64).astype(np.float32)
        floats.append(f / np.linalg.norm(f))
        loc = rng.standard_normal((5, 7, 8)).astype(np.float32)
        local.append(loc / np.linalg.norm(loc, axis=-1, keepdims=True))
    desc = Descriptors(np.stack(codes), np.stack(floats), np.zeros((n, 512), np.float32), np.stack(local))
    records = [
        KeyframeRecord(stamp_ns=i * 1000, frame_id=f"f{i}", pose=Pose((float(i), 0.0, 0.0)))
        for i in range(start, start + n)
    ]
    return desc, records


def main() -> None:
    path, batch = sys.argv[1], int(sys.argv[2])
    try:
        db = MapDatabase.open(path, "w")
    except MapError:
        db = MapDatabase.create(path, LAYOUT, "crash:test")
    while True:
        desc, records = rows(db.count, batch)
        db.add(desc, records, session="crash")
        print(f"committed {db.count}", flush=True)


if __name__ == "__main__":
    main()
