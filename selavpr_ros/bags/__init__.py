"""Recorded data: reading images and poses from rosbag2 / ROS 1 bags, and writing bags."""
