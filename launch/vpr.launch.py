"""Launch vpr_node: ``ros2 launch selavpr_ros vpr.launch.py image_topic:=/cam/image_raw map:=~/maps/lab``.

Launch arguments override the parameter file (``params_file``, default the
package's config/vpr.yaml); empty values keep the file's setting.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ARGUMENTS = {
    "image_topic": ("", "camera topic (sensor_msgs/Image, or CompressedImage with compressed:=true)"),
    "compressed": ("", "true to subscribe to sensor_msgs/CompressedImage"),
    "map": ("", "map directory (created in mapping mode)"),
    "checkpoint": ("", "model checkpoint (.ckpt) or ONNX file; empty = built-in demo model"),
    "mode": ("", "mapping or localization"),
    "device": ("", "auto, cpu or cuda"),
    "namespace": ("", "namespace of the node and its relative topics"),
}
PARAMETER_OF = {"map": "map_path"}


def _node(context, *_):
    params_file = LaunchConfiguration("params_file").perform(context)
    overrides = {}
    for name in ARGUMENTS:
        value = LaunchConfiguration(name).perform(context)
        if value and name != "namespace":
            overrides[PARAMETER_OF.get(name, name)] = value.lower() == "true" if name == "compressed" else value
    return [Node(
        package="selavpr_ros",
        executable="vpr_node",
        name="vpr_node",
        namespace=LaunchConfiguration("namespace").perform(context),
        parameters=[params_file, overrides],
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description() -> LaunchDescription:
    default_params = str(Path(get_package_share_directory("selavpr_ros")) / "config" / "vpr.yaml")
    args = [DeclareLaunchArgument("params_file", default_value=default_params, description="ROS 2 parameter file")]
    args += [DeclareLaunchArgument(name, default_value=default, description=text)
             for name, (default, text) in ARGUMENTS.items()]
    return LaunchDescription([*args, OpaqueFunction(function=_node)])
