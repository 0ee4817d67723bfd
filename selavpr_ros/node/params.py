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
from typing import Any, cast

import yaml

from selavpr_ros.config import from_dict, load_yaml
from selavpr_ros.errors import ConfigError
from selavpr_ros.inference.base import DEVICES
from selavpr_ros.loop_closure.config import LoopClosureConfig
from selavpr_ros.loop_closure.edges import EdgeConfig
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
    ParamSpec("compressed", False, "Subscribe to sensor_msgs/CompressedImage instead of Image on the 'image' topic "
              "(remap it, e.g. image:=/camera/image_raw/compressed)", read_only=True),
    ParamSpec("checkpoint", "", "Model: a .ckpt/.pt checkpoint or .onnx file; empty = the built-in demo model",
              read_only=True),
    ParamSpec("threads", 0, "CPU threads of every pool the node uses (PyTorch, ONNX Runtime, faiss, BLAS, OpenCV): "
              "0 = half the cores (at least one) on a live node, leaving the rest to SLAM and drivers; every core "
              "for replay", 0, 1024, read_only=True),
    ParamSpec("device", "auto", "Inference device: auto (a GPU when the backend has one), cpu, cuda, or tensorrt "
              "(ONNX Runtime's TensorRT provider for .onnx models); falls back with a log line",
              choices=DEVICES, read_only=True),
    ParamSpec("map_path", "~/.ros/selavpr_map", "Map directory (created in mapping mode when absent)",
              read_only=True),
    ParamSpec("mode", "mapping", "mapping: add keyframes and find loops with the robot's own past; "
              "localization: query the map read-only", choices=("mapping", "localization")),
    ParamSpec("session", "live", "Map session that mapping mode appends to"),
    ParamSpec("robot_id", 0, "Robot of this node's map session: robot_from of the pose-graph edges it publishes "
              "(multi-robot graphs); a session belongs to one robot", 0, 2**31 - 1),
    ParamSpec("frame_id", "", "Camera frame for the candidates' header; empty = the image's frame_id"),
    ParamSpec("snapshot_dir", "", "Folder of the copies ~/save_map makes (a name in the request picks the copy); "
              "empty = '<map_path>.snapshots' beside the map", read_only=True),
    ParamSpec("max_snapshots", 20, "Most copies ~/save_map keeps in snapshot_dir; further requests are refused",
              0, 10000),
    ParamSpec("diagnostics_period_s", 1.0, "Period of /diagnostics messages (s)", 0.1, 60.0),
    ParamSpec("max_image_pixels", 25_000_000, "Refuse frames with more pixels than this, before decoding them "
              "(bounds memory against hostile or broken streams)", 1, 1_000_000_000),
    ParamSpec("max_stamp_jump_s", 3600.0, "A frame stamped this far from the time its stream should have now is "
              "held back until 5 frames confirm the new time (a clock reset); 0 = accept any stamp", 0.0, INF),
    ParamSpec("pose_source", "none", "Where keyframe poses come from: none, tf (fixed_frame -> camera frame at "
              "the image stamp) or odom (nav_msgs/Odometry on the 'odom' topic)", choices=("none", "tf", "odom"),
              read_only=True),
    ParamSpec("pose.fixed_frame", "odom", "Frame the stored poses are expressed in (REP 105: odom, or map when a "
              "localiser publishes map -> odom)", read_only=True),
    ParamSpec("pose.camera_frame", "", "Frame whose pose is stored; empty = the image's frame_id", read_only=True),
    ParamSpec("pose.timeout_s", 0.2, "How long a frame waits for the pose at its stamp to arrive (s)", 0.0, 5.0),
    ParamSpec("pose.max_gap_s", 0.5, "Longest gap between pose samples to interpolate across (s)", 0.001, 60.0),
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
    ParamSpec("loop_closure.consistency.max_distance_m", 10.0, "One place per frame: accepted candidates of one map "
              "session farther than this from the best one, by their poses, are refused (m; 0 = off)", 0.0, INF),
    ParamSpec("loop_closure.retrieval.stages", "binary,float", "Retrieval stages, comma-separated, in order "
              "(binary, float, local, geometric); geometric verifies the top_n candidates with the camera model "
              "(camera_info topic) and gives each a relative pose", read_only=True),
    ParamSpec("loop_closure.retrieval.k", 100, "Candidates from the first stage", 1, 100000, read_only=True),
    ParamSpec("loop_closure.retrieval.local_k", 20, "Candidates re-ranked with local features", 1, 1000,
              read_only=True),
    ParamSpec("loop_closure.retrieval.index", "flat", "Binary stage: flat (exhaustive, exact; up to ~1 M keyframes) "
              "or ivf (inverted file, approximate, for huge maps; persisted in the map's index/ folder)",
              choices=("flat", "ivf"), read_only=True),
    ParamSpec("loop_closure.retrieval.ivf_nlist", 0, "IVF lists (0 = the power of two nearest sqrt(keyframes) "
              "when trained)", 0, 65536, read_only=True),
    ParamSpec("loop_closure.retrieval.ivf_nprobe", 0, "IVF lists scanned per query: more = higher recall, slower "
              "(0 = a quarter of the lists)", 0, 65536, read_only=True),
    ParamSpec("loop_closure.retrieval.ivf_retrain_growth", 2.0, "Retrain the IVF centroids when the map has grown "
              "by this factor since they were trained", 1.1, 100.0, read_only=True),
    ParamSpec("loop_closure.geometry.matcher", "keypoints", "Correspondences for the geometric stage: keypoints "
              "(stored ORB/SIFT, every model) or dense (the model's local features, SelaVPR)",
              choices=("keypoints", "dense"), read_only=True),
    ParamSpec("loop_closure.geometry.min_inliers", 30, "Fewest RANSAC inliers of a verified candidate", 6, 100000),
    ParamSpec("loop_closure.geometry.min_inlier_ratio", 0.3, "Lowest inliers / putative matches of a verified "
              "candidate", 0.0, 1.0),
    ParamSpec("loop_closure.geometry.ransac_threshold_px", 2.0, "RANSAC inlier threshold (pixels)", 0.1, 50.0),
    ParamSpec("loop_closure.geometry.required", False, "Reject candidates that cannot be verified (no CameraInfo, "
              "no stored keypoints) instead of letting retrieval decide"),
    ParamSpec("loop_closure.geometry.keypoints.detector", "orb", "Keypoints stored per keyframe: orb (36 B each) "
              "or sift (132 B each, slower, more robust)", choices=("orb", "sift"), read_only=True),
    ParamSpec("loop_closure.geometry.keypoints.max_keypoints", 1000, "Keypoints per keyframe", 16, 8192,
              read_only=True),
    ParamSpec("depth", False, "Subscribe to a depth image registered to the camera on the 'depth' topic (REP 118: "
              "16UC1 mm or 32FC1 m, stamped like the images): new keyframes' keypoints get depth, so verified loops "
              "against them carry a metric 6-DoF pose (PnP)", read_only=True),
    ParamSpec("edges.base_frame", "", "Express published pose-graph edges between the robot frames carrying the "
              "cameras (this frame, e.g. base_link; camera mounts from TF) instead of the camera optical frames",
              read_only=True),
    ParamSpec("edges.same_place_sigma_m", 0.0, "Publish accepted closures without a verified relative pose as "
              "'same place' edges with this position sigma (m); 0 = only verified closures become edges",
              0.0, 1000.0),
    ParamSpec("edges.same_place_sigma_deg", 5.0, "Rotation sigma of 'same place' edges (deg)", 0.01, 180.0),
    ParamSpec("camera_info.max_age_s", 1.0, "Use the newest CameraInfo up to this far from the image stamp when "
              "none has the image's exact stamp (s)", 0.0, 3600.0),
)
SPECS = {p.name: p for p in PARAMS}


def _check_value(spec: ParamSpec, value: Any) -> Any:
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, spec.type) or (spec.type is int and isinstance(value, bool)):
        raise ConfigError(f"parameter {spec.name}: expected {spec.type.__name__}, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"parameter {spec.name}: {value!r} is not one of {', '.join(spec.choices)}")
    if spec.min is not None and spec.max is not None and not spec.min <= cast(float, value) <= spec.max:
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
    edge_config(out)
    return out


def edge_config(values: dict[str, Any]) -> EdgeConfig:
    """How accepted closures become pose-graph edges, from flat parameter values."""
    return EdgeConfig(base_frame=values["edges.base_frame"].lstrip("/"),
                      same_place_sigma_m=values["edges.same_place_sigma_m"],
                      same_place_sigma_deg=values["edges.same_place_sigma_deg"])


def loop_closure_config(values: dict[str, Any]) -> LoopClosureConfig:
    """The engine's config from flat parameter values."""
    tree: dict[str, Any] = {"mode": values["mode"], "session": values["session"], "robot_id": values["robot_id"]}
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
    """Validated parameters from a ROS 2 parameter file (``/**/vpr_node: {ros__parameters: {...}}``).

    Accepts the node name as rcl matches it in any namespace: ``vpr_node``,
    ``/vpr_node``, ``/**/vpr_node`` and ``/**``.
    """
    data = load_yaml(Path(path))
    section = None
    for key in (f"/**/{node_name}", node_name, f"/{node_name}", "/**"):
        if isinstance(data.get(key), dict) and "ros__parameters" in data[key]:
            section = data[key]["ros__parameters"]
            break
    if section is None:
        raise ConfigError(
            f"{path}: no '/**/{node_name}: ros__parameters:' section (found: {', '.join(map(str, data))})"
        )
    try:
        return validate(flatten(section))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def params_yaml(node_name: str = NODE_NAME) -> str:
    """The parameter file that states every default, with each description and range as a comment.

    ``config/vpr.yaml`` is this text (a test checks it), so the file and the table never drift.
    """

    def value_text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return f'"{value}"'
        return repr(value)

    def bounds(spec: ParamSpec) -> str:
        parts = []
        if spec.choices:
            parts.append(f"({' | '.join(spec.choices)})")
        if spec.min is not None and spec.max is not None:
            hi = "inf" if spec.max == INF else f"{spec.max:g}"
            parts.append(f"[{spec.min:g}, {hi}]")
        if spec.read_only:
            parts.append("(start-up)")
        return (" " + " ".join(parts)) if parts else ""

    lines = [
        f"# Parameters of {node_name} (ROS 2 parameter-file format), generated from selavpr_ros/node/params.py.",
        "#   ros2 launch selavpr_ros vpr.launch.py params_file:=config/vpr.yaml",
        "#   selavpr-ros node --params config/vpr.yaml            (no ROS 2 needed)",
        "# Ranges are enforced; (start-up) parameters take effect only when the node starts.",
        "# '/**/vpr_node' applies the file to the node in any namespace.",
        f"/**/{node_name}:",
        "  ros__parameters:",
    ]
    opened: list[str] = []
    for spec in PARAMS:
        *groups, leaf = spec.name.split(".")
        common = 0
        while common < min(len(groups), len(opened)) and groups[common] == opened[common]:
            common += 1
        opened = opened[:common]
        for group in groups[common:]:
            lines.append("    " + "  " * len(opened) + f"{group}:")
            opened.append(group)
        indent = "    " + "  " * len(opened)
        lines.append(f"{indent}# {spec.description}{bounds(spec)}")
        lines.append(f"{indent}{leaf}: {value_text(spec.default)}")
    return "\n".join(lines) + "\n"
