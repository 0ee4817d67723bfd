"""Recorded data: reading images and poses from rosbag2 / ROS 1 bags, and writing bags."""

from selavpr_ros._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "BagImage": "selavpr_ros.bags.reader",
    "BagRecorder": "selavpr_ros.bags.writer",
    "PoseTrack": "selavpr_ros.bags.poses",
    "bag_path": "selavpr_ros.bags.reader",
    "check_overlap": "selavpr_ros.bags.poses",
    "image_connections": "selavpr_ros.bags.reader",
    "iter_images": "selavpr_ros.bags.reader",
    "load_pose_track": "selavpr_ros.bags.poses",
    "open_bags": "selavpr_ros.bags.reader",
    "topic_summary": "selavpr_ros.bags.reader",
    "write_image_bag": "selavpr_ros.bags.writer",
    "write_messages": "selavpr_ros.bags.writer",
    "write_topics": "selavpr_ros.bags.writer",
})
