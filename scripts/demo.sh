#!/usr/bin/env bash
# The main job: installs what is missing (idempotent), then runs `sf demo` end to end
# on this machine (simulated arms at the CAN level, test-video cameras, real ROS 2 on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( $$ % 100 + 1 ))}
exec .venv/bin/sf demo "$@"
