"""Packaging: package.xml, entry points, the README's commands and CI script agree."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from catkin_pkg.package import parse_package

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_valid_format_3():
    package = parse_package(str(ROOT / "package.xml"))
    package.validate()
    assert package.package_format == 3 and package.name == "selavpr_ros"
    assert package.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in [g.name for g in package.member_of_groups]
    from selavpr_ros import __version__

    assert package.version == __version__


def test_console_script_and_extras():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "selavpr-ros = selavpr_ros.cli:main" in cfg["options.entry_points"]["console_scripts"]
    extras = cfg["options.extras_require"]
    for extra in ("onnx", "dds", "train", "dev"):
        assert extra in extras


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    test_cmd = next(line for block in commands for line in block.splitlines() if "pytest" in line)
    assert test_cmd.strip() in ci
    assert "torch==2.13.0" in ci


def test_cmake_generates_every_interface_and_installs_the_python_package():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert "rosidl_generate_interfaces(${PROJECT_NAME}" in cmake
    assert "file(GLOB MSG_FILES" in cmake and "file(GLOB SRV_FILES" in cmake
    assert "ament_python_install_package" not in cmake.split("#")[-1]  # clashes with rosidl (see the comment)
    assert "install(DIRECTORY selavpr_ros/" in cmake and "scripts/vpr_node" in cmake
    package = parse_package(str(ROOT / "package.xml"))
    deps = {d.name for d in package.build_depends + package.buildtool_depends + package.exec_depends}
    for needed in ("rosidl_default_generators", "rosidl_default_runtime", "std_msgs", "geometry_msgs",
                   "builtin_interfaces", "sensor_msgs", "diagnostic_msgs", "std_srvs", "rclpy"):
        assert needed in deps, needed
    assert (ROOT / "scripts" / "vpr_node").stat().st_mode & 0o111


def test_interfaces_parse_and_status_constants_match_the_engine():
    from rosbags.typesys import get_types_from_msg

    from selavpr_ros.loop_closure.engine import Status, Verification

    text = (ROOT / "msg" / "LoopClosureCandidate.msg").read_text()
    types = get_types_from_msg(text, "selavpr_ros/msg/LoopClosureCandidate")
    consts = {name: value for name, _, value in types["selavpr_ros/msg/LoopClosureCandidate"][0]}
    assert consts == {**{s.name: s.value for s in Status}, **{f"VERIFICATION_{v.name}": v.value for v in Verification}}
    for srv in ("SaveMap", "SetMode"):
        request, response = (ROOT / "srv" / f"{srv}.srv").read_text().split("---")
        assert "bool success" in response and "string message" in response


def test_launch_file_declares_the_documented_arguments():
    import ast

    tree = ast.parse((ROOT / "launch" / "vpr.launch.py").read_text())
    args = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "ARGUMENTS")
    names = {k.value for k in args.value.keys}
    assert {"image_topic", "compressed", "map", "checkpoint", "mode", "namespace"} <= names
    assert "params_file" in (ROOT / "launch" / "vpr.launch.py").read_text()


def test_rclpy_node_uses_only_the_tested_core():
    import ast

    tree = ast.parse((ROOT / "selavpr_ros" / "ros" / "vpr_node.py").read_text())
    ours = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module.startswith("selavpr_ros")}
    assert ours <= {"selavpr_ros.errors", "selavpr_ros.msg", "selavpr_ros.srv", "selavpr_ros.node.params",
                    "selavpr_ros.node.pipeline", "selavpr_ros.node.worker", "selavpr_ros.node.live_poses",
                    "selavpr_ros.types"}


def test_setup_installs_share_files_and_demo_data():
    setup = (ROOT / "setup.py").read_text()
    for folder in ("msg", "srv", "config", "launch"):
        assert f'glob("{folder}/' in setup
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "data/**/*" in cfg["options.package_data"]["selavpr_ros"]
    assert "selavpr-train = selavpr_ros.cli.train:main" in cfg["options.entry_points"]["console_scripts"]
