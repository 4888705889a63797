"""OpenCL device selection: deterministic order, EDGEML_DEVICE by substring or index, clear errors."""
import os
import subprocess
import sys

import pytest

from compiled.device import list_devices, select_device, describe, DeviceError


def test_order_is_deterministic_and_default_is_first():
  assert [describe(d) for d in list_devices()] == [describe(d) for d in list_devices()]
  assert describe(select_device("")) == describe(list_devices()[0])


def test_selection_by_index_and_substring():
  devs = list_devices()
  for i, d in enumerate(devs):
    assert describe(select_device(str(i))) == describe(d)
  first = devs[0]
  assert describe(select_device(first.platform.name.split()[0].lower())) == describe(first)


def test_unknown_device_names_the_choices():
  with pytest.raises(DeviceError) as info:
    select_device("no-such-device-xyz")
  assert "no-such-device-xyz" in str(info.value) and describe(list_devices()[0]) in str(info.value)
  with pytest.raises(DeviceError):
    select_device("999")


def test_environment_variable_is_honoured():
  code = "from compiled.device import default_device; print(default_device().name)"
  out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, EDGEML_DEVICE="0"), capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == describe(list_devices()[0])
  bad = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, EDGEML_DEVICE="nonexistent-gpu"),
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "nonexistent-gpu" in bad.stderr


def test_no_platform_gives_install_hint():
  code = "from compiled.device import select_device; select_device()"
  out = subprocess.run([sys.executable, "-c", code], env={"OCL_ICD_VENDORS": "/nonexistent", "OPENCL_VENDOR_PATH": "/nonexistent"},
                       capture_output=True, text=True, timeout=120)
  if out.returncode == 0: pytest.skip("an OpenCL platform is visible even without ICD files (bundled driver)")
  assert "apt-get install pocl-opencl-icd" in out.stderr
