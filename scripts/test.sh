#!/usr/bin/env bash
# The test command: installs what is missing (scripts/setup.sh, idempotent), then runs pytest.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k arm -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# DDS stays on this machine; each run gets its own domain so parallel runs never meet.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( $$ % 100 + 1 ))}
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest "$@"
