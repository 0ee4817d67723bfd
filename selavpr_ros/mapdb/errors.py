"""Map database errors. Each message names the map and says whether anything was lost."""

from __future__ import annotations

from selavpr_ros.errors import SelaVPRError


class MapError(SelaVPRError):
    """The map is missing, damaged, locked, or does not fit the request."""


class DiskFullError(MapError):
    """A write ran out of space; nothing of the failed add was committed."""


class LayoutMismatchError(MapError):
    """Descriptors or a model do not have the map's descriptor layout."""


class MapLockedError(MapError):
    """Another process holds the map open for writing."""
