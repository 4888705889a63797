#!/usr/bin/env bash
# The test command: prepares the checkout (scripts/setup.sh), then runs the whole suite on the default OpenCL device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m pytest -q -n 2 tests "$@"
