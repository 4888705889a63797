#!/usr/bin/env bash
# The main job: prepares the checkout (scripts/setup.sh), then runs the end-to-end demo on the default OpenCL device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m tools.demo "$@"
