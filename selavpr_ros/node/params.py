"""The node's parameters: one table that both the rclpy node and the ROS-less node use.

Every parameter has a type, a default, a description and (for numbers) a
range; the rclpy node declares them with descriptors built from this table
and validates changes with :func:`validate`, and ``selavpr-ros node`` reads
the same ``config/vpr.yaml`` (ROS 2 parameter-file format) through
:func:`load_params_file`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from selavpr_ros.config import from_dict, load_yaml
from selavpr_ros.errors import ConfigError
from selavpr_ros.loop_closure.config import LoopClosureConfig
from selavpr_ros.retrieval.config import parse_stages

NODE_NAME = "vpr_node"


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    read_only: bool = False  # takes effect only at start-up

    @property
    def type(self) -> type:
        return type(self.default)


INF = math.inf
PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("image_topic", "/camera/image_raw", "Camera topic (sensor_msgs/Image, or CompressedImage with "
              "compressed: true; for image_transport topics give the .../compressed name)", read_only=True),
    ParamSpec("compressed", False, "Subscribe to sensor_msgs/CompressedImage instead of Image", read_only=True),
    ParamSpec("output_topic", "loop_closures", "Topic of selavpr_ros/LoopClosureCandidateArray (reliable)",
              read_only=True),
    ParamSpec("checkpoint", "", "Model: a .ckpt/.pt checkpoint or .onnx file; empty = the built-in demo model",
              read_only=True),
    ParamSpec("device", "auto", "Inference device", choices=("auto", "cpu", "cuda"), read_only=True),
    ParamSpec("map_path", "~/.ros/selavpr_map", "Map directory (created in mapping mode when absent)",
              read_only=True),
    ParamSpec("mode", "mapping", "mapping: add keyframes and find loops with the robot's own past; "
              "localization: query the map read-only", choices=("mapping", "localization")),
    ParamSpec("session", "live", "Map session that mapping mode appends to"),
    ParamSpec("frame_id", "", "Camera frame for the candidates' header; empty = the image's frame_id"),
    ParamSpec("diagnostics_period_s", 1.0, "Period of /diagnostics messages (s)", 0.1, 60.0),
    ParamSpec("loop_closure.min_score", 0.5, "Minimum cosine similarity of an accepted match", -1.0, 1.0),
    ParamSpec("loop_closure.min_local_matches", 0, "Minimum mutual-nearest-neighbour count (local stage)", 0, 100000),
    ParamSpec("loop_closure.top_n", 3, "Candidates reported per query", 1, 100),
    ParamSpec("loop_closure.report_excluded", False, "Also report matches inside the exclusion window"),
    ParamSpec("loop_closure.keyframe.min_interval_s", 0.5, "Minimum time between keyframes (s)", 0.0, 3600.0),
    ParamSpec("loop_closure.keyframe.min_translation_m", 0.0, "Minimum motion between keyframes (m, 0 = off)",
              0.0, 1000.0),
    ParamSpec("loop_closure.keyframe.min_rotation_deg", 0.0, "Minimum turn between keyframes (deg, 0 = off)",
              0.0, 180.0),
    ParamSpec("loop_closure.keyframe.max_similarity", 1.0, "Skip frames more similar than this to the last "
              "keyframe (1 = off)", -1.0, 1.0),
    ParamSpec("loop_closure.exclusion.recent_s", 30.0, "Same-session keyframes newer than this cannot match (s)",
              0.0, INF),
    ParamSpec("loop_closure.exclusion.recent_keyframes", 0, "Nor can the newest N same-session keyframes", 0,
              1000000),
    ParamSpec("loop_closure.consistency.n", 3, "Consecutive agreeing queries before a match is accepted (1 = off)",
              1, 100),
    ParamSpec("loop_closure.consistency.max_gap_s", 5.0, "Agreeing matches lie within this map time (s)", 0.01, INF),
    ParamSpec("loop_closure.retrieval.stages", "binary,float", "Retrieval stages, comma-separated, in order "
              "(binary, float, local)", read_only=True),
    ParamSpec("loop_closure.retrieval.k", 100, "Candidates from the first stage", 1, 100000, read_only=True),
    ParamSpec("loop_closure.retrieval.local_k", 20, "Candidates re-ranked with local features", 1, 1000,
              read_only=True),
)
SPECS = {p.name: p for p in PARAMS}


def _check_value(spec: ParamSpec, value: Any) -> Any:
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, spec.type) or (spec.type is int and isinstance(value, bool)):
        raise ConfigError(f"parameter {spec.name}: expected {spec.type.__name__}, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"parameter {spec.name}: {value!r} is not one of {', '.join(spec.choices)}")
    if spec.min is not None and not spec.min <= value <= spec.max:
        raise ConfigError(f"parameter {spec.name}: {value} is outside [{spec.min}, {spec.max}]")
    return value


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """Defaults completed with ``values`` (flat dotted names), each checked; raises ConfigError."""
    unknown = sorted(set(values) - set(SPECS))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}")
    out = {p.name: p.default for p in PARAMS}
    for name, value in values.items():
        out[name] = _check_value(SPECS[name], value)
    loop_closure_config(out)  # cross-field checks (e.g. top_n <= k)
    return out


def loop_closure_config(values: dict[str, Any]) -> LoopClosureConfig:
    """The engine's config from flat parameter values."""
    tree: dict[str, Any] = {"mode": values["mode"], "session": values["session"]}
    for name, value in values.items():
        if name.startswith("loop_closure."):
            node = tree
            parts = name.split(".")[1:]
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
    tree["retrieval"]["stages"] = parse_stages(tree["retrieval"]["stages"], "loop_closure.retrieval.stages")
    return from_dict(LoopClosureConfig, tree)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``NAME:=VALUE`` items (as ``ros2 run ... --ros-args -p`` takes them) -> typed values.

    String parameters take VALUE as written; others parse it as YAML (``3``,
    ``0.5``, ``true``), and the result is checked like any parameter.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, raw = item.partition(":=")
        if not sep or name not in SPECS:
            known = "" if not sep else f"; known parameters: {', '.join(SPECS)}"
            raise ConfigError(f"-p expects NAME:=VALUE with a known NAME, got {item!r}{known}")
        spec = SPECS[name]
        try:
            value = raw if spec.type is str else yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"parameter {name}: cannot read {raw!r} as {spec.type.__name__}") from None
        out[name] = _check_value(spec, value)
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def load_params_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """Validated parameters from a ROS 2 parameter file (``node: {ros__parameters: {...}}``)."""
    data = load_yaml(Path(path))
    section = None
    for key in (node_name, f"/{node_name}", "/**"):
        if isinstance(data.get(key), dict) and "ros__parameters" in data[key]:
            section = data[key]["ros__parameters"]
            break
    if section is None:
        raise ConfigError(f"{path}: no '{node_name}: ros__parameters:' section (found: {', '.join(map(str, data))})")
    try:
        return validate(flatten(section))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
