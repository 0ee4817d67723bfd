"""Exceptions with messages meant for the user: each names the file or value at fault."""

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
