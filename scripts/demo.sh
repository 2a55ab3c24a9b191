#!/usr/bin/env bash
# The main job: installs what is missing (idempotent), then runs `sf demo`: the whole loop on
# this machine's CPU (record the MuJoCo twin through ROS 2 on loopback -> train tiny SF and
# baseline policies -> closed-loop evaluation in the twin -> replay report). README says more.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( $$ % 100 + 1 ))}
exec .venv/bin/sf demo "$@"
