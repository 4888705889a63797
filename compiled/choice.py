"""The tools' --device and --allow-target-mismatch flags: which OpenCL device a process opens (the EDGEML_DEVICE
choice: a name substring or an index into compiled.device.list_devices()), set before any device is opened, so
programs started from here (edgeml-bench starts edgeml-compile) inherit it. Importing this opens nothing."""
import os
import sys

DEVICE_HELP = ("the OpenCL device to use: a name substring (pocl, nvidia) or an index into the device list "
               "(default: EDGEML_DEVICE, else the first GPU, else the CPU)")
MISMATCH_HELP = "run an artifact compiled for another target on this device (for checking it on a workstation)"


def add_device_arguments(ap, mismatch: bool = True) -> None:
  """--device (and, with `mismatch`, --allow-target-mismatch) on an argparse parser."""
  ap.add_argument("--device", metavar="NAME|INDEX", help=DEVICE_HELP)
  if mismatch: ap.add_argument("--allow-target-mismatch", action="store_true", help=MISMATCH_HELP)


def use_device(spec: str | None) -> None:
  """Make `spec` the device this process (and its children) opens; None keeps the current choice."""
  if spec is None: return
  os.environ["EDGEML_DEVICE"] = spec
  device = sys.modules.get("compiled.device")
  if device is not None: device.default_device.cache_clear()   # a device opened before the choice is forgotten
