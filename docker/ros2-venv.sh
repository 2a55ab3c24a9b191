#!/usr/bin/env bash
# `ros2` under the venv's Python. Installed as $SF_VENV/bin/ros2 in the robot image (and usable
# the same way in a native install: `install -m 755 docker/ros2-venv.sh .venv/bin/ros2`).
#
# Why: the ros2 CLI from /opt/ros starts with #!/usr/bin/python3, and that interpreter cannot
# import sf_policy from the venv, which `ros2 launch sf_bringup ...` needs to evaluate our
# launch files (ros2/ros2#1094 and ros2/ros2cli#1024 are the general venv + ROS 2 problem).
# The venv's python (the same 3.12, --system-site-packages, ROS on PYTHONPATH once sourced)
# runs the very same CLI and sees both. Node executables are unaffected: colcon, run from the
# venv, already wrote the venv's python into their #! line.
exec "$(dirname "$0")/python" "/opt/ros/${ROS_DISTRO:?source /opt/ros/<distro>/setup.bash first}/bin/ros2" "$@"
