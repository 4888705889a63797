"""The installed console scripts (the venv's bin/edgeml-*) on bad input: one line on stderr naming the problem, no
traceback, a non-zero exit. A file that is not ONNX, an output path that cannot be written (refused before any compile
work), a missing output folder (created, and said so), Ctrl-C during compile and tune (exit 130), a missing log or
video, and a reader that closes the pipe of `edgeml-bus echo`."""
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, save

from edgeml.demo_model import build, build_small
from ipc.messaging import PubMaster, new_message
from ipc.tensors import set_outputs
from ipc.testing import isolated_bus

BIN = Path(sys.executable).parent
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def script(name: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
  path = BIN / name
  assert path.exists(), f"{path} is not installed: run `pip install -e .` (scripts/setup.sh does)"
  return subprocess.run([str(path), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV)


def one_line(done: subprocess.CompletedProcess, code: int, *words: str) -> str:
  """The single stderr line of a run that exited with `code`; it holds each of `words`."""
  assert "Traceback" not in done.stderr + done.stdout, done.stderr
  assert done.returncode == code, (done.returncode, done.stderr)
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1, done.stderr
  for word in words: assert word in lines[0], (word, lines[0])
  return lines[0]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
  path = tmp_path_factory.mktemp("errors") / "small.onnx"
  build_small(str(path), 16, 32, hidden=8)
  return path


@pytest.fixture(params=[b"hello, not a model\n", bytes(range(256)) * 8, b""], ids=["text", "binary", "empty"])
def not_onnx(request, tmp_path) -> Path:
  path = tmp_path / "model.onnx"
  path.write_bytes(request.param)
  return path


def test_compile_refuses_a_file_that_is_not_onnx(not_onnx, tmp_path):
  one_line(script("edgeml-compile", not_onnx, "-o", tmp_path / "out.edgeml"), 1, str(not_onnx), "not an ONNX model")
  assert not (tmp_path / "out.edgeml").exists()


def test_validate_refuses_a_file_that_is_not_onnx(not_onnx, tmp_path):
  one_line(script("edgeml-validate", not_onnx, tmp_path / "any.edgeml"), 1, str(not_onnx), "not an ONNX model")


@pytest.mark.parametrize("where", ["under_a_file", "under_a_file_deeper"])
def test_compile_refuses_an_unwritable_output_before_compiling(small_model, tmp_path, where):
  """A path below a regular file cannot be written by anyone, root included (as a read-only mount)."""
  blocker = tmp_path / "afile"
  blocker.write_text("")
  out = blocker / "out.edgeml" if where == "under_a_file" else blocker / "sub" / "out.edgeml"
  done = script("edgeml-compile", small_model, "-o", out)
  one_line(done, 1, "edgeml-compile: cannot", str(blocker))
  assert "[1/3]" not in done.stdout  # refused before the import, let alone the compile


def test_compile_creates_a_missing_output_folder_and_says_so(small_model, tmp_path):
  out = tmp_path / "new" / "folder" / "small.edgeml"
  done = script("edgeml-compile", small_model, "-o", out)
  assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
  assert f"created the output folder {out.parent}" in done.stdout and out.is_file()


def test_unknown_dims_name_the_command_line_flag(tmp_path):
  value = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
  graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [value("x", ["batch", 3])], [value("y", None)])
  save(helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
  one_line(script("edgeml-compile", tmp_path / "m.onnx", "-o", tmp_path / "m.edgeml"), 1, "'x'", "--shape x=")


@pytest.mark.parametrize("tune", [False, True], ids=["compile", "tune"])
def test_ctrl_c_during_compile_says_interrupted(tmp_path, tune):
  """SIGINT once the import is done (or the tuner has started): "interrupted", exit 130, no artifact left."""
  build(str(tmp_path / "demo.onnx"), 64, 64, hidden=16)
  out = tmp_path / "demo.edgeml"
  proc = subprocess.Popen([str(BIN / "edgeml-compile"), str(tmp_path / "demo.onnx"), "-o", str(out),
                           *(["--tune"] if tune else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
  try:
    marker, seen, deadline = b"tuning" if tune else b"[1/3]", b"", time.monotonic() + 300
    while marker not in seen and time.monotonic() < deadline and proc.poll() is None:
      if select.select([proc.stdout], [], [], 1)[0]: seen += os.read(proc.stdout.fileno(), 4096)
    assert marker in seen, seen
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None: proc.kill()
  done = subprocess.CompletedProcess(proc.args, proc.returncode, (seen + stdout).decode(), stderr.decode())
  assert one_line(done, 130) == "edgeml-compile: interrupted"
  assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["demo.onnx"]


def test_bus_replay_of_a_missing_log(tmp_path):
  one_line(script("edgeml-bus", "replay", tmp_path / "none.log"), 1, str(tmp_path / "none.log"), "No such file")


def test_camerad_with_a_missing_video(tmp_path):
  one_line(script("edgeml-camerad", "--video", tmp_path / "none.y4m", "--frames", "1"), 1,
           str(tmp_path / "none.y4m"), "No such file")


def test_bus_echo_into_a_closed_pipe_stops_quietly():
  """`edgeml-bus echo modelOutput | head -n 1`: once the reader is gone the next write fails; the tool stops without
  a word on stderr and exits 141 (128 + SIGPIPE, as a command killed by the signal)."""
  with isolated_bus():
    proc = subprocess.Popen([str(BIN / "edgeml-bus"), "echo", "modelOutput"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(ENV, EDGEML_PREFIX=os.environ["EDGEML_PREFIX"]))
    pm = PubMaster(["modelOutput"])
    try:
      deadline, first = time.monotonic() + 60, b""
      while proc.poll() is None and time.monotonic() < deadline:
        msg = new_message("modelOutput", frameId=1)
        set_outputs(msg.modelOutput, {"plan": np.arange(4, dtype=np.float32)})
        pm.send("modelOutput", msg)
        if not first and select.select([proc.stdout], [], [], 0.05)[0]:
          first = os.read(proc.stdout.fileno(), 4096)
          proc.stdout.close()  # the reader goes away, as head does after its lines
        time.sleep(0.02)
      assert b"modelOutput = (" in first and b"data = [0, 1, 2, 3]" in first, first
      assert proc.wait(10) == 141
      stderr = proc.stderr.read().decode()
      assert stderr == "", stderr
    finally:
      pm.close()
      if proc.poll() is None: proc.kill()
      proc.wait()
      proc.stderr.close()
