"""``selavpr-ros map``: inspect and maintain map databases."""

from __future__ import annotations

import argparse

from selavpr_ros.cli import json_text
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.mapdb.maintenance import check_map, repair_map

EPILOG = """\
examples:
  selavpr-ros map stats maps/campus            # entries, sessions, bytes per entry
  selavpr-ros map check maps/campus            # exit 0 healthy, 1 damaged, 2 no map / newer schema
  selavpr-ros map repair maps/campus           # drop a crashed add's uncommitted tail
  selavpr-ros map delete-session maps/campus run3 && selavpr-ros map compact maps/campus
  selavpr-ros map merge maps/robot1 maps/robot2 --out maps/fleet   # no re-extraction
  selavpr-ros map index maps/fleet             # train and persist the IVF for retrieval.index: ivf
"""


def _print_report(report) -> None:
    if report.not_checked:
        print(f"{report.path}: NOT CHECKED: {report.not_checked}")
        return
    print(f"{report.path}: {'OK' if report.ok else 'DAMAGED'}, {report.committed} committed entries")
    for line in report.problems:
        print(f"  problem: {line}")
    for line in report.notes:
        print(f"  note: {line}")


def cmd_check(args: argparse.Namespace) -> int:
    report = check_map(args.map)
    _print_report(report)
    return 0 if report.ok else 2 if report.not_checked else 1


def cmd_repair(args: argparse.Namespace) -> int:
    _print_report(repair_map(args.map))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from selavpr_ros.retrieval.ivf import INDEX_DIR, RECORD_FILE, IndexRecord

    with MapDatabase.open(args.map, "r") as db:
        stats = db.stats()
        record = IndexRecord.read(db.path / INDEX_DIR / RECORD_FILE)
        current = record is not None and record.generation == db.info.generation and record.model_id == db.model_id
    stats["ivf_index"] = None if record is None else {**record.__dict__, "current": current}
    if args.json:
        print(json_text(stats, indent=2))
        return 0
    layout = stats["layout"]
    print(f"map        {stats['path']}")
    print(f"model      {stats['model_id']}")
    local = f", local {layout['local_grid'][0]}x{layout['local_grid'][1]}x{layout['local_dim']}"
    print(
        f"layout     codes {layout['code_bits']} bit, float {layout['float_dim']}-d"
        + (local if layout["local_dim"] else "")
    )
    storage = stats["storage"]
    stored = stats["stored_local_grid"]
    print(
        f"storage    float {storage['float_dtype']}"
        + (f", local {storage['local_dtype']} on {stored[0]}x{stored[1]}" if stored else "")
    )
    print(f"entries    {stats['keyframes']} live ({stats['deleted_rows']} deleted, not yet compacted)")
    for name, n in stats["sessions"].items():
        print(f"  session  {name}: {n}")
    per = ", ".join(f"{k} {v}" for k, v in stats["bytes_per_entry"].items())
    print(f"bytes      {stats['bytes_per_entry_total']} per entry ({per})")
    print(f"time span  {stats['time_span_s']:.1f} s")
    if record is None:
        print("ivf index  none (retrieval.index: ivf trains one on first use; `map index` does it now)")
    else:
        state = "" if current else ", out of date (rebuilt from its centroids on the next open)"
        print(f"ivf index  {record.nlist} lists over {record.rows} keyframes, centroids from {record.trained_rows}"
              f"{state}")
    return 0


def cmd_delete_session(args: argparse.Namespace) -> int:
    with MapDatabase.open(args.map, "w") as db:
        n = db.delete_session(args.session)
    print(f"deleted session {args.session!r}: {n} keyframes (run `selavpr-ros map compact` to reclaim space)")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    with MapDatabase.open(args.map, "w") as db:
        result = db.compact()
    print(f"compacted {args.map}: kept {result['kept']}, removed {result['removed']}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from selavpr_ros.mapdb.merge import merge_maps

    report = merge_maps(args.maps, args.out, progress=not args.quiet)
    print(f"{report.out}: {report.keyframes} keyframes of model {report.model_id}")
    for s in report.sessions:
        renamed = f" (renamed from {s.name!r})" if s.merged_name != s.name else ""
        print(f"  {s.merged_name}{renamed}: {s.keyframes} keyframes, robot {s.robot_id}, from {s.source}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    import time

    from selavpr_ros.retrieval.config import RetrievalConfig
    from selavpr_ros.retrieval.ivf import IVFHammingIndex
    from selavpr_ros.retrieval.retriever import Retriever

    config = RetrievalConfig(index="ivf", ivf_nlist=args.nlist, ivf_nprobe=args.nprobe,
                             ivf_retrain_growth=args.retrain_growth)
    t0 = time.perf_counter()
    with MapDatabase.open(args.map, "w") as db:
        index = Retriever(db, config).hamming_index
    assert isinstance(index, IVFHammingIndex)  # config.index is "ivf"
    seconds = time.perf_counter() - t0
    if not index.trained:
        print(f"{args.map}: {len(index)} keyframes are too few for an IVF (fewer than "
              f"{index.settings.min_train_per_list} per list); the map is searched exhaustively")
        return 0
    what = "trained" if index.retrains else "up to date"
    print(f"{args.map}: IVF {what}, {index.nlist} lists over {len(index)} keyframes (centroids from "
          f"{index.trained_rows}), {seconds:.1f} s; persisted in {args.map}/index/")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from selavpr_ros.cli import HelpFormatter

    p = sub.add_parser(
        "map",
        help="inspect and maintain map databases (check, stats, repair, compact, delete-session, merge, index)",
        description="Inspect and maintain a map database directory.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, func, text in (
        ("check", cmd_check, "verify integrity; exit 0 when healthy, 1 when committed data is damaged, 2 when "
                             "there is no map to check (nothing there, a file, a map of a newer schema)"),
        ("repair", cmd_repair, "truncate uncommitted tails left by a crash; keeps every committed entry"),
        ("stats", cmd_stats, "entries, sessions, layout and bytes per entry"),
        ("compact", cmd_compact, "rewrite arrays without deleted keyframes (ids are kept)"),
    ):
        a = actions.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)
        a.add_argument("map", metavar="MAP", help="map directory")
        if name == "stats":
            a.add_argument("--json", action="store_true", help="print JSON")
        a.set_defaults(func=func)
    a = actions.add_parser("delete-session", help="mark a session's keyframes deleted", formatter_class=HelpFormatter)
    a.add_argument("map", metavar="MAP", help="map directory")
    a.add_argument("session", help="session name (see `map stats`)")
    a.set_defaults(func=cmd_delete_session)
    text = ("combine maps of the same model (robots, machines, workers) into a new map, as stored: no "
            "re-extraction; sessions keep their robots (a taken name becomes NAME@MAP); the new map appears "
            "only when complete")
    a = actions.add_parser("merge", help=text, description=text, formatter_class=HelpFormatter)
    a.add_argument("maps", metavar="MAP", nargs="+", help="map directories, in order")
    a.add_argument("--out", required=True, help="new map directory (must not exist)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=cmd_merge)
    text = ("train and persist the map's IVF index (retrieval.index: ivf) now, rather than on the first "
            "open; opening reuses it, retraining only after the map grew by --retrain-growth")
    a = actions.add_parser("index", help=text, description=text, formatter_class=HelpFormatter)
    a.add_argument("map", metavar="MAP", help="map directory")
    a.add_argument("--nlist", type=int, default=0, help="IVF lists (0: the power of two nearest sqrt(keyframes))")
    a.add_argument("--nprobe", type=int, default=0, help="lists scanned per query (a search setting, not stored; "
                                                         "0: a quarter of them)")
    a.add_argument("--retrain-growth", type=float, default=2.0, help="retrain when the map grew by this factor")
    a.set_defaults(func=cmd_index)
