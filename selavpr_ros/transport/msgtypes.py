"""Message types from the ``msg/*.msg`` text: one source of truth for every path.

* :func:`typestore` — a ``rosbags`` type store (ROS 2 Humble definitions) with
  this package's messages registered: used to read and write bags and as the
  reference CDR serialiser;
* :func:`dds_type` — a CycloneDDS ``IdlStruct`` for any ROS 2 message type,
  generated from the same field definitions, named as ROS 2 names types on
  the wire (``pkg::msg::dds_::Type_``), so a ROS 2 graph on rmw_cyclonedds
  sees our topics. uint8/byte sequences map to ``bytes`` (the same octet
  sequence on the wire, without per-byte Python objects).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import types as pytypes
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from selavpr_ros.errors import SelaVPRError

if TYPE_CHECKING:
    from cyclonedds.idl import IdlStruct

PACKAGE = "selavpr_ros"
MSG_NAMES = ("LoopClosureCandidate", "LoopClosureCandidateArray", "PoseGraphNode", "PoseGraphEdge", "PoseGraph")
LEGACY_MSG_DIR = Path(__file__).resolve().parents[1] / "data" / "msg_v1"  # first-release definitions


def msg_dir() -> Path:
    """Where ``msg/*.msg`` lives: the source tree, a pip install's share/, or an ament prefix."""
    here = Path(__file__).resolve().parents[2] / "msg"
    candidates = [here, Path(sys.prefix) / "share" / PACKAGE / "msg"]
    candidates += [Path(p) / "share" / PACKAGE / "msg" for p in os.environ.get("AMENT_PREFIX_PATH", "").split(":") if p]
    for path in candidates:
        if (path / f"{MSG_NAMES[0]}.msg").is_file():
            return path
    raise SelaVPRError(f"message definitions not found (looked in {', '.join(map(str, candidates))})")


@functools.lru_cache(maxsize=2)
def typestore(legacy: bool = False):
    """rosbags type store: ROS 2 Humble standard messages plus ``selavpr_ros/msg/*``.

    Fields are only ever appended to this package's messages, and rosbag2
    (sqlite3 since Iron, every mcap) stores each topic's definition, which
    readers use, so new code reads old bags as they are. ``legacy=True``
    gives the first-release ``LoopClosureCandidate`` for older bags that
    carry no definition.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    types: dict[str, Any] = {}
    for name in MSG_NAMES:
        path = msg_dir() / f"{name}.msg"
        if legacy and (LEGACY_MSG_DIR / f"{name}.msg").is_file():
            path = LEGACY_MSG_DIR / f"{name}.msg"
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{name}"))
    store.register(types)
    return store


def dds_typename(msgtype: str) -> str:
    """``sensor_msgs/msg/Image`` -> ``sensor_msgs::msg::dds_::Image_`` (the ROS 2 wire name)."""
    pkg, kind, name = msgtype.split("/")
    return f"{pkg}::{kind}::dds_::{name}_"


def dds_topic(topic: str) -> str:
    """ROS 2 topic ``/camera/image`` -> DDS topic ``rt/camera/image``."""
    return "rt/" + topic.lstrip("/")


_BYTE_TYPES = {"uint8", "byte", "char", "octet"}


def _base_annotation(name: str, bound: int):
    from cyclonedds.idl import types as t

    if name == "string":
        return t.bounded_str[bound] if bound else str  # type: ignore[misc]  # cyclonedds: runtime __class_getitem__
    if name == "bool":
        return bool
    mapping = {
        "byte": t.uint8,
        "char": t.uint8,
        "octet": t.uint8,
        "int8": t.int8,
        "uint8": t.uint8,
        "int16": t.int16,
        "uint16": t.uint16,
        "int32": t.int32,
        "uint32": t.uint32,
        "int64": t.int64,
        "uint64": t.uint64,
        "float32": t.float32,
        "float64": t.float64,
    }
    if name not in mapping:
        raise SelaVPRError(f"unsupported base type {name!r} in message definitions")
    return mapping[name]


def _annotation(spec) -> Any:
    from cyclonedds.idl import types as t
    from rosbags.typesys.base import Nodetype

    kind, rest = spec
    if kind == Nodetype.BASE:
        return _base_annotation(*rest)
    if kind == Nodetype.NAME:
        return dds_type(rest)
    elem, count = rest
    if kind == Nodetype.ARRAY:
        return t.array[_annotation(elem), count]  # type: ignore[misc]  # cyclonedds: runtime __class_getitem__
    if kind == Nodetype.SEQUENCE:
        if elem[0] == Nodetype.BASE and elem[1][0] in _BYTE_TYPES and not count:
            # declared as sequence<octet>; carried as bytes (see _bytes_members)
            return t.sequence[t.uint8]  # type: ignore[misc]  # cyclonedds: runtime __class_getitem__
        inner = _annotation(elem)
        return t.sequence[inner, count] if count else t.sequence[inner]  # type: ignore[misc]  # cyclonedds stubs
    raise SelaVPRError(f"unsupported field kind {kind}")


@functools.cache
def dds_type(msgtype: str) -> type:
    """CycloneDDS class for ROS 2 message type ``msgtype`` (e.g. ``sensor_msgs/msg/Image``)."""
    from cyclonedds.idl import IdlStruct

    store = typestore()
    if msgtype not in store.fielddefs:
        raise SelaVPRError(f"unknown message type {msgtype!r}")
    _, fields = store.fielddefs[msgtype]
    annotations = {name: _annotation(spec) for name, spec in fields}
    if not annotations:  # ROS 2 gives empty messages one uint8 member
        from cyclonedds.idl import types as t

        annotations = {"structure_needs_at_least_one_member": t.uint8}
    cls = pytypes.new_class(
        msgtype.split("/")[-1],
        (IdlStruct,),
        {"typename": dds_typename(msgtype)},
        lambda ns: ns.update({"__annotations__": annotations, "__module__": __name__}),
    )
    assert issubclass(cls, IdlStruct)  # new_class returns plain ``type``; it is the IdlStruct subclass made above
    cls = dataclasses.dataclass(cls)
    _bytes_members(cls, [name for name, spec in fields if _is_byte_sequence(spec)])
    return cls


def _is_byte_sequence(spec) -> bool:
    from rosbags.typesys.base import Nodetype

    kind, rest = spec
    return kind == Nodetype.SEQUENCE and rest[0][0] == Nodetype.BASE and rest[0][1][0] in _BYTE_TYPES and not rest[1]


def _bytes_members(cls: type[IdlStruct], names: list[str]) -> None:
    """Carry ``sequence<octet>`` members as one ``bytes`` object instead of a list of ints.

    The type object that DDS discovery exchanges still says sequence<octet>
    (what ROS 2 announces); only the Python (de)serialiser changes, and
    both write the same bytes: a uint32 length, then the octets.
    """
    if not names:
        return
    from cyclonedds.idl._machinery import BytesMachine, StructMachine

    cls.__idl__.populate()
    for machine in (cls.__idl__.v1_machine, cls.__idl__.v2_machine):
        # cyclonedds types these as the base Machine; a final struct's are StructMachines
        struct_machine = cast(StructMachine, machine)
        for name in names:
            struct_machine.members_machines[name] = BytesMachine()


def to_dds(obj: Any, msgtype: str) -> Any:
    """Convert a rosbags message object (or anything with the same fields) to its DDS class."""
    from rosbags.typesys.base import Nodetype

    cls = dds_type(msgtype)
    _, fields = typestore().fielddefs[msgtype]
    values = {}
    for name, (kind, rest) in fields:
        value = getattr(obj, name)
        if kind == Nodetype.NAME:
            value = to_dds(value, rest)
        elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            elem = rest[0]
            if elem[0] == Nodetype.NAME:
                value = [to_dds(v, elem[1]) for v in value]
            elif kind == Nodetype.SEQUENCE and elem[1][0] in _BYTE_TYPES and not rest[1]:
                value = bytes(memoryview(value).cast("B")) if not isinstance(value, bytes) else value
            else:
                value = [v.item() if hasattr(v, "item") else v for v in value]
        values[name] = value
    return cls(**values)


def message(msgtype: str, **fields: Any) -> Any:
    """A rosbags message object of ``msgtype`` with ``fields``; nested fields may be dicts."""
    from rosbags.typesys.base import Nodetype

    store = typestore()
    cls = store.types[msgtype]
    _, defs = store.fielddefs[msgtype]
    values = {}
    for name, (kind, rest) in defs:
        value = fields.get(name)
        if kind == Nodetype.NAME and (value is None or isinstance(value, dict)):
            value = message(rest, **(value or {}))
        elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE) and rest[0][0] == Nodetype.NAME and value is not None:
            value = [message(rest[0][1], **v) if isinstance(v, dict) else v for v in value]
        elif value is None:
            value = _default(kind, rest)
        values[name] = value
    return cls(**values)


def _default(kind, rest) -> Any:
    import numpy as np
    from rosbags.typesys.base import Nodetype

    if kind == Nodetype.BASE:
        name = rest[0]
        return "" if name == "string" else False if name == "bool" else 0.0 if name.startswith("float") else 0
    elem, count = rest
    if elem[0] == Nodetype.BASE and elem[1][0] != "string":
        name = "uint8" if elem[1][0] in _BYTE_TYPES else elem[1][0]
        dtype = {"float32": np.float32, "float64": np.float64, "bool": np.bool_}.get(name, np.dtype(name))
        return np.zeros(count if kind == Nodetype.ARRAY else 0, dtype)
    if elem[0] == Nodetype.NAME and kind == Nodetype.ARRAY:
        return [message(elem[1]) for _ in range(count)]
    return []
