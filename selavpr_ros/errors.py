"""The package's exceptions, in one hierarchy: each message names the file or value at fault.

Everything raised for the user derives from :class:`SelaVPRError`; the command
line prints those without a traceback and exits with ``exit_code``.
"""

from __future__ import annotations


class SelaVPRError(Exception):
    """Base class; the command line prints these without a traceback."""

    exit_code = 1


class ConfigError(SelaVPRError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""

    exit_code = 2


class CheckpointError(SelaVPRError):
    """A weights file is missing, truncated, foreign, or does not fit the model."""


class ImageError(SelaVPRError, ValueError):
    """An image cannot be decoded or has an unsupported shape or encoding."""


class StampError(SelaVPRError, ValueError):
    """A frame's stamp is implausible for its stream (the node counts it as a bad frame)."""


class MapError(SelaVPRError):
    """The map is missing, damaged, locked, or does not fit the request; says whether anything was lost."""


class DiskFullError(MapError):
    """A write ran out of space; nothing of the failed add was committed."""


class LayoutMismatchError(MapError):
    """Descriptors or a model do not have the map's descriptor layout."""


class MapNotFoundError(MapError):
    """No map at the path (nothing there, a file, or a folder without a map): nothing to check or repair."""


class MapVersionError(MapError):
    """A map written by a newer selavpr_ros, or with metadata this version cannot read."""


class MapLockedError(MapError):
    """Another process holds the map open for writing."""


class BagError(SelaVPRError):
    """A bag is missing, unreadable, or lacks what was asked of it."""


class DatasetError(SelaVPRError):
    """A dataset folder or file is missing, malformed or empty; the message names it."""


class CameraError(SelaVPRError, ValueError):
    """A camera model is missing, all-zero, of an unknown distortion model, or does not fit the image."""


class ClusterError(SelaVPRError):
    """A distributed executor (Ray) cannot be reached or used."""
