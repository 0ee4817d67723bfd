"""selavpr_ros: deep visual place recognition and loop closure for ROS 2 robots.

Under colcon, rosidl writes an empty ``selavpr_ros/__init__.py`` beside the
generated ``msg``/``srv`` modules, so nothing may rely on this file's content.
"""

from selavpr_ros._version import __version__

__all__ = ["__version__"]
