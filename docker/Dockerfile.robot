# syntax=docker/dockerfile:1
#
# The robot PC: ROS 2 Jazzy (Ubuntu 24.04, Python 3.12), CUDA torch, this repository and
# its ROS workspace built with colcon: the drivers, the recorder and the policy node.
#
#   docker build -f docker/Dockerfile.robot -t sf-robot .          # from the repository root
#   docker compose -f docker/compose.yaml build robot               # the same, through compose
#
# The install is the README's "On a robot PC with ROS 2" section, step for step:
#   source /opt/ros/$ROS_DISTRO/setup.bash; scripts/setup.sh; cd ros2_ws && colcon build --symlink-install
# with two additions, both made before scripts/setup.sh runs so that it finds them in place:
#   - the venv is created here (--system-site-packages, as setup.sh makes it when ROS is
#     sourced), and
#   - torch comes from PyTorch's CUDA wheel index at the version requirements/torch-cpu.txt
#     pins, so setup.sh's `torch==<pin>` is already satisfied and never swaps in the CPU build.
# tests/test_docker.py checks that these steps and the README stay the same.

ARG ROS_DISTRO=jazzy
FROM ros:${ROS_DISTRO}-ros-base

# PyTorch's wheel index for the CUDA build. cu130 (CUDA 13.0, the build PyPI ships for
# torch 2.13) needs an NVIDIA driver >= 580; for an older driver pass e.g.
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 (if that index carries the pin).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    SF_VENV=/opt/sf/.venv \
    MUJOCO_GL=egl

# System packages:
#   python3-venv            the venv (Ubuntu 24.04's Python is "externally managed", PEP 668)
#   can-utils iproute2 ethtool   bring the CAN buses up and watch them (scripts/can_setup.sh, candump)
#   usbutils v4l-utils      lsusb / v4l2-ctl to find cameras
#   libusb-1.0-0            pyrealsense2 (FACTS.md: Cameras)
#   libegl1 ... libosmesa6  offscreen MuJoCo for the twin (sim:=true); the list scripts/setup.sh installs
# FFmpeg is not needed: PyAV's wheel carries its own.
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3-venv python3-pip \
        can-utils iproute2 ethtool usbutils v4l-utils \
        libusb-1.0-0 libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/sf

# A venv that also sees the system site-packages, i.e. rclpy and the message packages of
# /opt/ros once ROS is sourced. The alternative, pip --break-system-packages into the system
# Python, would let pip replace Debian-owned packages that ROS itself imports.
RUN python3 -m venv --system-site-packages "$SF_VENV"

# CUDA torch at the repository's pin (read from the CPU pin file: one number to change).
COPY requirements/torch-cpu.txt requirements/torch-cpu.txt
RUN TORCH_VERSION=$(sed -n 's/^torch==\([0-9][0-9.]*\).*/\1/p' requirements/torch-cpu.txt) \
    && test -n "$TORCH_VERSION" \
    && "$SF_VENV/bin/pip" install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX"

# The other requirements in a layer of their own, so that a change to the source does not
# reinstall them (scripts/setup.sh below finds them satisfied).
COPY requirements/ requirements/
RUN "$SF_VENV/bin/pip" install --upgrade pip wheel "setuptools>=77,<80" \
    && "$SF_VENV/bin/pip" install -r requirements/base.txt

# The repository (.dockerignore keeps .venv, outputs and build products out), then the
# README's robot-PC install: setup.sh with ROS sourced (it sees the venv and the CUDA torch),
# and the workspace built with colcon.
COPY . .
RUN source "/opt/ros/$ROS_DISTRO/setup.bash" \
    && scripts/setup.sh \
    && "$SF_VENV/bin/python" -c "import torch, sf_policy; print('torch', torch.__version__)"
RUN source "/opt/ros/$ROS_DISTRO/setup.bash" \
    && source "$SF_VENV/bin/activate" \
    && cd ros2_ws && colcon build --symlink-install

# `ros2` from /opt/ros starts with #!/usr/bin/python3, which cannot import sf_policy from the
# venv, yet `ros2 launch` imports it to evaluate our launch files. This shim runs the same
# ros2 CLI under the venv's interpreter; it shadows /opt/ros/.../bin/ros2 on PATH.
COPY docker/ros2-venv.sh "$SF_VENV/bin/ros2"
RUN chmod +x "$SF_VENV/bin/ros2" docker/entrypoint.sh docker/env.sh scripts/can_setup.sh \
    && echo 'source /opt/sf/docker/env.sh' >> /root/.bashrc

# The NVIDIA container toolkit mounts the driver when these are set (torch's wheels bring
# the CUDA libraries themselves, so the base image needs no CUDA).
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

ENTRYPOINT ["/opt/sf/docker/entrypoint.sh"]
CMD ["bash"]
