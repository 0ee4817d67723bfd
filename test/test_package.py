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
