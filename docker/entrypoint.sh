#!/usr/bin/env bash
# Entrypoint of both images: set up ROS (if present), the workspace and the venv, then run the
# command (`bash` by default). `exec` replaces this shell, so the signal `docker stop` sends
# (compose sets SIGINT, Ctrl-C's) reaches ros2 launch / sf directly and they stop their nodes
# cleanly: the arm drivers disable the arms, the recorder commits or discards its episode.
# shellcheck disable=SC1091
source /opt/sf/docker/env.sh
exec "$@"
