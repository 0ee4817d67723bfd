"""The map database: SQLite metadata beside append-only memory-mapped descriptor arrays."""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "MapDatabase": "selavpr_ros.mapdb.database",
    "MapInfo": "selavpr_ros.mapdb.database",
    "StorageConfig": "selavpr_ros.mapdb.records",
    "StoredLayout": "selavpr_ros.mapdb.records",
    "check_map": "selavpr_ros.mapdb.maintenance",
    "repair_map": "selavpr_ros.mapdb.maintenance",
})
