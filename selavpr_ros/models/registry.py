"""The method registry: one entry per place-recognition method, as timm registers models.

A method is one module that defines its options (a
:class:`~selavpr_ros.models.config.MethodConfig`), its model class, and
optionally an importer for its released weights, and then calls
:func:`register_method`. The built-in methods live in
``selavpr_ros/models/methods/`` and are found there by name, so adding a
method means adding one file (plus its YAML in ``config/models/``). Methods
of other packages register through the ``selavpr_ros.methods`` entry point
group, or by importing their module before use.

This module imports neither PyTorch nor the methods until a method is asked for.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from selavpr_ros.errors import ConfigError

__all__ = ["MethodSpec", "get_method", "list_methods", "list_releases", "register_method"]

ENTRY_POINT_GROUP = "selavpr_ros.methods"
_BUILTIN_PACKAGE = "selavpr_ros.models.methods"


@dataclass(frozen=True)
class MethodSpec:
    """Everything the package needs to know about one method.

    ``importer(path, config, size)`` turns a released file into a model;
    ``detect(state_dict)`` says whether a bare state dict is such a release;
    ``weights`` names downloadable releases (``"large"`` -> URL), addressed
    on the command line as ``<release>/<name>``.
    """

    name: str  # the value of ``method:`` in a model YAML
    section: str  # the YAML key of the method's options
    config: type  # MethodConfig subclass
    model: type  # VPRModel subclass, built as model(ModelConfig)
    release: str | None = None  # release kind accepted by ``import-checkpoint`` (e.g. "selavpr++")
    importer: Callable[..., Any] | None = None
    detect: Callable[[dict[str, Any]], bool] | None = None
    weights: Mapping[str, str] = field(default_factory=dict)
    summary: str = ""


_REGISTRY: dict[str, MethodSpec] = {}
_discovered = False


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method; registering another spec under a taken name or section is an error."""
    if not spec.name or not spec.section.isidentifier():
        raise ConfigError(f"method {spec.name!r}: needs a name and a section that is a Python identifier")
    for other in _REGISTRY.values():
        if other.name == spec.name or other.section == spec.section:
            if other == spec:
                return spec
            raise ConfigError(f"method {spec.name!r} (section {spec.section!r}) clashes with registered {other.name!r}")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a method (tests and interactive sessions)."""
    _REGISTRY.pop(name, None)


def _discover() -> None:
    """Import the built-in method modules and the entry points of installed plugins, once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(_BUILTIN_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{_BUILTIN_PACKAGE}.{info.name}")
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; an unknown name lists the known ones."""
    if name not in _REGISTRY:
        _discover()
    if name not in _REGISTRY:
        raise ConfigError(f"method: {name!r} is not one of {', '.join(repr(m) for m in list_methods())}")
    return _REGISTRY[name]


def list_methods() -> list[str]:
    """Names of all registered methods."""
    _discover()
    return sorted(_REGISTRY)


def list_releases() -> dict[str, MethodSpec]:
    """Release kinds that ``import-checkpoint`` accepts, with the method each belongs to."""
    _discover()
    return {spec.release: spec for spec in _REGISTRY.values() if spec.release}
