#!/usr/bin/env bash
# Installs everything the project needs, idempotently, on Debian/Ubuntu with Python >= 3.10.
#   - Debian packages (only the missing ones): libusb for pyrealsense2, Mesa EGL/OSMesa for MuJoCo.
#   - A virtual environment in .venv (override with SF_VENV).
#   - ROS 2 from the ros-kilted-* PyPI wheels, unless a sourced ROS 2 install is found
#     (then the venv is created with --system-site-packages so it sees that rclpy).
#   - CPU torch, and this repository in editable mode (sf_policy and the ROS node package).
# Re-running it does nothing when everything is in place (a stamp of the inputs is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SF_VENV:-$ROOT/.venv}
PY=${SF_PYTHON:-python3}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- Debian packages ---------------------------------------------------------------
DEB_PKGS=(libusb-1.0-0 libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6)
missing=()
if command -v dpkg-query >/dev/null; then
  for p in "${DEB_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- virtual environment -------------------------------------------------------------
ROS_FROM_SYSTEM=0
if [ -n "${ROS_DISTRO:-}" ] && "$PY" -c 'import rclpy' 2>/dev/null; then
  ROS_FROM_SYSTEM=1
  log "using the sourced ROS 2 install ($ROS_DISTRO)"
fi
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  if ((ROS_FROM_SYSTEM)); then "$PY" -m venv --system-site-packages "$VENV"; else "$PY" -m venv "$VENV"; fi
fi

# With a system ROS, `ros2` runs under /usr/bin/python3, which cannot import sf_policy from the
# venv that `ros2 launch sf_bringup ...` needs: the venv gets a `ros2` running the same CLI
# under its own Python (docker/ros2-venv.sh says more).
if ((ROS_FROM_SYSTEM)) && [ ! -x "$VENV/bin/ros2" ]; then
  install -m 755 docker/ros2-venv.sh "$VENV/bin/ros2"
fi

stamp="$VENV/.sf-installed"
want=$(cat requirements/*.txt pyproject.toml ros2_ws/src/*/setup.py 2>/dev/null | sha256sum | cut -c1-16)-ros$ROS_FROM_SYSTEM
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

PIP=(pip_quiet "$VENV/bin/python" -m pip install -q --disable-pip-version-check)
PIP_LOG="$VENV/setup.log"
: > "$PIP_LOG"
# pip's chatter goes to a log; on failure its tail is shown.
pip_quiet() {
  if ! "$@" >>"$PIP_LOG" 2>&1; then
    echo "[setup] failed: ${*:2}" >&2; tail -n 30 "$PIP_LOG" >&2; exit 1
  fi
}
log "installing Python packages into $VENV (first run takes a few minutes; log: $PIP_LOG)"
# setuptools < 80: colcon-core 0.21 refuses newer ones.
"${PIP[@]}" --upgrade pip wheel "setuptools>=77,<80"
# CPU torch first: asked for by exact version so pip takes the local CPU build, never a CUDA one.
"${PIP[@]}" -r requirements/torch-cpu.txt
if ((ROS_FROM_SYSTEM == 0)); then
  "${PIP[@]}" -r requirements/ros-wheels.txt
fi
"${PIP[@]}" -r requirements/base.txt
"${PIP[@]}" --no-deps -e . -e ros2_ws/src/sf_nodes
echo "$want" > "$stamp"
log "done"
