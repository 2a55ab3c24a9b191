"""Thin ROS 2 nodes around sf_policy: parameters in, sf_policy objects in the middle, messages out."""
