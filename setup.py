"""pip / setuptools entry point. Metadata lives in setup.cfg; colcon builds with CMakeLists.txt."""

from glob import glob

from setuptools import setup

PACKAGE = "selavpr_ros"

setup(
    data_files=[
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/msg", glob("msg/*.msg")),
        (f"share/{PACKAGE}/srv", glob("srv/*.srv")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/config/models", glob("config/models/*.yaml")),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
    ],
)
