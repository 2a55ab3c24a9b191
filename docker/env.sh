# The environment of every command in the images: sourced by docker/entrypoint.sh (for
# `docker compose run/up`) and by /root/.bashrc (for `docker compose exec <service> bash`,
# which bypasses the entrypoint). No `set -e`/`-u`: ROS's setup files are not written for them.

SF_ROOT=${SF_ROOT:-/opt/sf}
SF_VENV=${SF_VENV:-$SF_ROOT/.venv}

# ROS 2 and our workspace (the robot image only; the training image has neither).
if [ -n "${ROS_DISTRO:-}" ] && [ -f "/opt/ros/$ROS_DISTRO/setup.bash" ]; then
  # shellcheck disable=SC1090
  source "/opt/ros/$ROS_DISTRO/setup.bash"
  if [ -f "$SF_ROOT/ros2_ws/install/setup.bash" ]; then
    # shellcheck disable=SC1091
    source "$SF_ROOT/ros2_ws/install/setup.bash"
  fi
fi

# The venv last, so its bin/ (sf, colcon, the ros2 shim) comes first on PATH.
if [ -f "$SF_VENV/bin/activate" ]; then
  VIRTUAL_ENV_DISABLE_PROMPT=1
  # shellcheck disable=SC1091
  source "$SF_VENV/bin/activate"
fi

cd "$SF_ROOT" 2>/dev/null || true
