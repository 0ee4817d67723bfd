"""ROS 2 (rclpy) wiring; importable only where ROS 2 is installed."""
