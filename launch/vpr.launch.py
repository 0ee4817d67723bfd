"""Launch vpr_node: ``ros2 launch selavpr_ros vpr.launch.py image_topic:=/cam/image_raw map:=~/maps/lab``.

Launch arguments override the parameter file (``params_file``, default the
package's config/vpr.yaml); empty values keep the file's setting.
``image_topic`` remaps the node's relative ``image`` topic and
``camera_info_topic`` its ``camera_info`` (default: ``camera_info`` beside
the image, as image_transport pairs them), so namespaces
and further remappings behave as in any ROS 2 node. Each argument is checked
against the node's parameter table before the node starts: a bad value is
reported by the argument's name.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from selavpr_ros.bags.reader import camera_info_topic
from selavpr_ros.errors import ConfigError
from selavpr_ros.node.params import SPECS, parse_overrides

ARGUMENTS = {
    "image_topic": ("", "camera topic, remapped onto the node's 'image' (sensor_msgs/Image, or CompressedImage "
                        "with compressed:=true)"),
    "camera_info_topic": ("", "sensor_msgs/CameraInfo topic, remapped onto 'camera_info' (geometric stage); "
                              "empty = camera_info beside image_topic (/cam/image_raw -> /cam/camera_info)"),
    "depth_topic": ("", "registered depth image (16UC1 mm / 32FC1 m), remapped onto 'depth'; sets depth:=true"),
    "compressed": ("", "true to subscribe to sensor_msgs/CompressedImage"),
    "map": ("", "map directory (created in mapping mode)"),
    "checkpoint": ("", "model checkpoint (.ckpt) or ONNX file; empty = built-in demo model"),
    "mode": ("", "mapping or localization"),
    "device": ("", "auto, cpu or cuda"),
    "pose_source": ("", "none, tf or odom: where keyframe poses come from"),
    "namespace": ("", "namespace of the node and its relative topics"),
}
PARAMETER_OF = {"map": "map_path"}
NOT_PARAMETERS = ("namespace", "image_topic", "camera_info_topic", "depth_topic")


def _overrides(context) -> dict:
    """Parameter values from the launch arguments, checked like ``-p NAME:=VALUE``."""
    overrides = {}
    for name in ARGUMENTS:
        value = LaunchConfiguration(name).perform(context)
        if not value or name in NOT_PARAMETERS:
            continue
        param = PARAMETER_OF.get(name, name)
        try:
            overrides.update(parse_overrides([f"{param}:={value}"]))
        except ConfigError as exc:
            choices = SPECS[param].choices
            hint = f" (one of {', '.join(choices)})" if choices else ""
            raise ConfigError(f"launch argument '{name}:={value}' is invalid{hint}: {exc}") from None
    return overrides


def _node(context, *_):
    params_file = LaunchConfiguration("params_file").perform(context)
    if not Path(params_file).expanduser().is_file():
        raise ConfigError(f"launch argument 'params_file:={params_file}': no such file")
    image_topic = LaunchConfiguration("image_topic").perform(context)
    info_topic = LaunchConfiguration("camera_info_topic").perform(context) or \
        (camera_info_topic(image_topic) if image_topic else "")
    depth_topic = LaunchConfiguration("depth_topic").perform(context)
    remaps = [(name, topic) for name, topic in (("image", image_topic), ("camera_info", info_topic),
                                                ("depth", depth_topic)) if topic]
    return [Node(
        package="selavpr_ros",
        executable="vpr_node",
        name="vpr_node",
        namespace=LaunchConfiguration("namespace").perform(context),
        parameters=[params_file, {**_overrides(context), **({"depth": True} if depth_topic else {})}],
        remappings=remaps,
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description() -> LaunchDescription:
    default_params = str(Path(get_package_share_directory("selavpr_ros")) / "config" / "vpr.yaml")
    args = [DeclareLaunchArgument("params_file", default_value=default_params, description="ROS 2 parameter file")]
    args += [DeclareLaunchArgument(name, default_value=default, description=text)
             for name, (default, text) in ARGUMENTS.items()]
    return LaunchDescription([*args, OpaqueFunction(function=_node)])
