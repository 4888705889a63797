"""What `edgeml-bus` shows a person looking at a bus: `list` names the bus it listens to and the other buses on the
machine (the demo runs on its own EDGEML_PREFIX), `echo modelOutput` prints each tensor's numbers, not its bytes."""
import os
import re
import subprocess
import sys
import time

import numpy as np

from ipc.messaging import PubMaster, new_message
from ipc.tensors import set_outputs
from ipc.testing import isolated_bus

BUS = [sys.executable, "-m", "tools.bus"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_list_names_its_bus_and_the_others():
  with isolated_bus() as other, PubMaster(["modelOutput"]):
    with isolated_bus() as mine:
      done = subprocess.run([*BUS, "list", "--time", "0.3"], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  assert f"bus EDGEML_PREFIX={mine}" in done.stdout and "no live services" in done.stdout
  assert re.search(rf"other buses here: .*\b{other}\b", done.stdout), done.stdout


def test_echo_prints_tensors_as_numbers():
  plan = np.array([0.5, -1.25, 3e-7, 1234.5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], np.float32)
  with isolated_bus(), PubMaster(["modelOutput"]) as pm:
    proc = subprocess.Popen([*BUS, "echo", "modelOutput", "-n", "1", "--time", "60"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
      while proc.poll() is None:  # until the subscriber has connected and taken one
        msg = new_message("modelOutput", frameId=7)
        set_outputs(msg.modelOutput, {"plan": plan, "lead": np.ones((2, 2), np.float32)})
        pm.send("modelOutput", msg)
        time.sleep(0.02)
      out, err = proc.communicate(timeout=60)
    finally:
      if proc.poll() is None: proc.kill()
  assert proc.returncode == 0, err
  assert "frameId = 7" in out and "\\000" not in out
  assert "data = [0.5, -1.25, 3e-07, 1234.5, ..., 13, 14, 15, 16]" in out, out  # long tensors: the ends
  assert "data = [1, 1, 1, 1]" in out, out
