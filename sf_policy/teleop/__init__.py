"""Teleoperation: the software master-puppet link and the episode-control keys (no ROS).

``link``: master arm samples in, rate- and velocity-limited puppet commands out.
``keys``: key names, key maps (keyboard, foot pedal) and a terminal key reader.
``episode_keys``: which recorder command a key action sends, and the status line.
"""
