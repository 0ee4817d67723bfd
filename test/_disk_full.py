"""Disk-full scenario, run inside its own mount namespace on a tiny tmpfs (see test_mapdb.py).

Adds keyframes until the filesystem is full, then checks that the error is
clear, every committed entry is intact, and that after freeing space the map
goes on from its last committed entry. Prints a JSON report.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from _map_writer import LAYOUT, rows

from selavpr_ros.errors import DiskFullError
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.mapdb.maintenance import check_map, repair_map


def main() -> None:
    root = sys.argv[1]
    path = os.path.join(root, "map")
    ballast = os.path.join(root, "ballast")
    with open(ballast, "wb") as f:  # space we can free later
        f.write(b"\0" * 64 * 1024)
    db = MapDatabase.create(path, LAYOUT, "full:test")
    error = ""
    while True:
        desc, recs = rows(db.count, 20)
        try:
            db.add(desc, recs)
        except DiskFullError as exc:
            error = str(exc)
            break
    committed = db.count
    db.close()
    report = {"committed": committed, "error": error}
    with MapDatabase.open(path) as ro:
        desc, _ = rows(0, committed)
        report["codes_intact"] = bool(np.array_equal(np.asarray(ro.codes), desc.codes))
        report["floats_intact"] = bool(
            np.array_equal(np.asarray(ro.float_descriptors), desc.descriptors.astype(np.float16))
        )
        report["count_after_reopen"] = ro.count
    report["check_ok"] = check_map(path).ok
    os.remove(ballast)
    report["repair_ok"] = repair_map(path).ok
    with MapDatabase.open(path, "w") as w:
        desc, recs = rows(committed, 20)
        w.add(desc, recs)
        report["count_after_more"] = w.count
        report["new_rows_ok"] = bool(np.array_equal(np.asarray(w.codes[committed:]), desc.codes))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
