#!/usr/bin/env bash
# Prepares this checkout on a fresh Debian machine: a .venv with the project and its dependencies, an OpenCL
# platform (PoCL from Debian's packages when none is found), and Oclgrind (the simulated device of the Oclgrind tests,
# scripts/oclgrind.sh). Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -q >/dev/null; apt_updated=1; }
  local log   # apt's notes (debconf) only when the install fails
  log=$(as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" 2>&1 >/dev/null) || { echo "$log" >&2; return 1; }
}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  python3 -m venv .venv 2>/dev/null || { rm -rf .venv; apt_install python3-venv; python3 -m venv .venv; }
fi
. .venv/bin/activate
stamp=".venv/.installed-$(cat setup.py | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python dependencies" >&2
  python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  PYTHONWARNINGS=ignore python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" >&2 || true  # no BuildBackendWarning
  python -c "import numpy, pyopencl, zmq, capnp, onnx, onnxruntime, pytest, hypothesis" || { echo "setup: pip install failed" >&2; exit 1; }
  touch "$stamp"
fi
command -v ld >/dev/null || { echo "setup: installing binutils (PoCL needs ld)" >&2; apt_install binutils; }
if ! python -c "import sys; from compiled.device import list_devices; sys.exit(0 if list_devices() else 1)" 2>/dev/null; then
  echo "setup: no OpenCL platform found, installing PoCL (pocl-opencl-icd)" >&2
  apt_install pocl-opencl-icd ocl-icd-libopencl1 binutils
  python -c "from compiled.device import select_device, describe; print('setup: OpenCL device:', describe(select_device()))" >&2
fi
if ! bash scripts/oclgrind.sh --where >/dev/null 2>&1; then
  echo "setup: installing Oclgrind (oclgrind), the simulated OpenCL device of tests/test_oclgrind.py" >&2
  apt_install oclgrind || echo "setup: could not install oclgrind; tests/test_oclgrind.py will be skipped" >&2
fi
