"""The device runtime on the tiny three-kernel program: results against numpy, the three ways to run, the errors, the
allocation-free frame, timing, the binary cache, and that `import compiled` stays away from the compiler."""
import dataclasses
import os
import subprocess
import sys
import tracemalloc

import time

import numpy as np
import pytest

import compiled
from compiled.artifact import ArtifactError, write_artifact
from compiled.device import Device, default_device
from compiled.runtime import InputError, Program
from compiled.targets import TARGETS
from tiny_program import SOURCE, reference, tiny_spec

rng = np.random.default_rng(1)


def x_like() -> np.ndarray:
  return rng.standard_normal((1, 8), np.float32)


@pytest.fixture(scope="module")
def path(tmp_path_factory):
  p = tmp_path_factory.mktemp("rt") / "tiny.edgeml"
  write_artifact(tiny_spec(), p)
  return p


@pytest.fixture(scope="module")
def prog(path):
  return compiled.load(path)


def check(outputs: dict, x: np.ndarray, n_out: int = 16):
  want = reference(x, n_out)
  np.testing.assert_allclose(outputs["y"], want["y"], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(outputs["best"], want["best"])


def test_signature(prog):
  assert [(t.name, t.shape, t.dtype) for t in prog.inputs] == [("x", (1, 8), "float32")]
  assert [(t.name, t.shape, t.dtype) for t in prog.outputs] == [("y", (1, 16), "float32"), ("best", (1,), "int32")]


def test_run_feeds(prog):
  for _ in range(3):
    x = x_like()
    out = prog.run({"x": x})
    assert set(out) == {"y", "best"} and out["y"].dtype == np.float32 and out["best"].dtype == np.int32
    check(out, x)


def test_run_reads_feeds_as_they_are(prog):
  """run() uploads a feed straight from the caller's array (a strided view too), and leaves the input host array
  that execute() reads alone."""
  wide = rng.standard_normal((1, 16), np.float32)
  x = wide[:, ::2]
  assert not x.flags.c_contiguous
  check(prog.run({"x": x}), np.ascontiguousarray(x))
  held = x_like()
  prog.input_buffer("x")[:] = held
  prog.run({"x": x_like()})
  prog.execute()
  check({name: prog.output_buffer(name) for name in ("y", "best")}, held)

def test_run_onnxruntime_form(prog):
  x = x_like()
  best, y = prog.run(["best", "y"], {"x": x})
  check({"y": y, "best": best}, x)
  y2, best2 = prog.run(None, {"x": x})
  check({"y": y2, "best": best2}, x)


def test_single_input_takes_the_array(prog):
  x = x_like()
  check(prog.run(x), x)
  [y] = prog.run(["y"], x)
  np.testing.assert_allclose(y, reference(x)["y"], rtol=1e-5, atol=1e-6)
  with pytest.raises(InputError, match=r"input 'x' is float32\[1, 9\]"): prog.run(np.zeros((1, 9), np.float32))


def test_run_returns_copies(prog):
  a = prog.run({"x": x_like()})["y"]
  kept = a.copy()
  prog.run({"x": x_like()})
  np.testing.assert_array_equal(a, kept)


def test_preallocated_path(prog):
  x_buf, y_view = prog.input_buffer("x"), prog.output_buffer("y")
  for _ in range(3):
    x_buf[:] = x_like()
    prog.execute()
    assert prog.output_buffer("y") is y_view
    check({"y": y_view, "best": prog.output_buffer("best")}, x_buf)


@pytest.mark.parametrize("unified", [True, False])
def test_inputs_read_in_place_or_uploaded(path, unified, monkeypatch):
  """Where the device shares the host's memory the kernels read each input from the caller's array itself, else it
  is uploaded; either way every frame sees its own feed: a new array, the same array changed in between, a read-only
  array, one starting 4 bytes into its memory, and execute's input array."""
  import pyopencl as cl
  monkeypatch.setattr(cl.Device, "host_unified_memory", unified, raising=False)   # what the device says
  prog = compiled.load(path)
  x = x_like()
  check(prog.run({"x": x}), x)
  x[:] = x_like()
  check(prog.run({"x": x}), x)
  frozen = x_like()
  frozen.flags.writeable = False
  check(prog.run({"x": frozen}), frozen)
  shifted = np.empty(9, np.float32)[1:].reshape(1, 8)
  shifted[:] = x_like()
  check(prog.run({"x": shifted}), shifted)
  prog.input_buffer("x")[:] = held = x_like()
  prog.execute()
  check({name: prog.output_buffer(name) for name in ("y", "best")}, held)
  assert len(prog._fed) == unified   # the buffer over the last frame's array, held while kernels are bound to it


def test_an_input_fed_on_device_is_read_from_its_device_buffer(path):
  """After frames that read the input from the caller's arrays, feed_on_device points the kernels back at the
  program's device buffer."""
  import pyopencl as cl
  prog = compiled.load(path)
  prog.run({"x": x_like()})
  prog.feed_on_device("x")
  on_device = x_like()
  cl.enqueue_copy(prog.device.queue, prog.device_buffer("x"), on_device)
  prog.execute()
  check({name: prog.output_buffer(name) for name in ("y", "best")}, on_device)


def test_steady_state_allocates_nothing():
  """With a 16 KB output, one array made per frame would show in the peak."""
  prog = Program(tiny_spec(n_out=4096), default_device())
  prog.input_buffer("x")[:] = x = x_like()
  tracemalloc.start()
  try:
    for _ in range(100): prog.execute()  # warm-up under tracing: pyopencl frees its copy events lazily
    before, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    for _ in range(500): prog.execute()
    after, peak = tracemalloc.get_traced_memory()
  finally: tracemalloc.stop()
  assert after - before < 1024, f"{after - before} bytes kept after 500 frames"
  assert peak - before < 4096, f"peak {peak - before} bytes above the start during the frames"
  check({"y": prog.output_buffer("y"), "best": prog.output_buffer("best")}, x, n_out=4096)


def test_timing(prog):
  start = time.perf_counter()
  prog.run({"x": x_like()})
  wall = time.perf_counter() - start
  assert 0 < prog.last_gpu_time <= wall      # seconds, and the device cannot take longer than the synchronous run
  rows = prog.profile(5)
  assert [(name, size) for name, size, _ in rows] == [("dense_relu", (16,)), ("scale", (16,)), ("argmax", (1,))]
  assert all(s > 0 for _, _, s in rows)


def test_two_programs_keep_their_own_arguments(path):
  a, b = compiled.load(path), compiled.load(path)
  xa, xb = x_like(), x_like()
  a.input_buffer("x")[:], b.input_buffer("x")[:] = xa, xb
  b.execute(); a.execute()
  check({"y": a.output_buffer("y"), "best": a.output_buffer("best")}, xa)
  check({"y": b.output_buffer("y"), "best": b.output_buffer("best")}, xb)


@pytest.mark.parametrize("feeds, problem", [
  ({}, r"missing inputs \['x'\]"),
  ({"x": np.zeros((1, 8), np.float32), "z": 1}, r"unknown inputs \[.z.\]"),
  ({"X": np.zeros((1, 8), np.float32)}, r"missing inputs \[.x.\], unknown inputs \[.X.\]"),
  ({"x": np.zeros((8,), np.float32)}, r"input 'x' is float32\[8\]; the program takes 'x': float32\[1, 8\]"),
  ({"x": np.zeros((1, 8), np.float64)}, r"input 'x' is float64\[1, 8\]"),
])
def test_bad_feeds(prog, feeds, problem):
  with pytest.raises(InputError, match=problem): prog.run(feeds)


def test_unknown_names(prog):
  with pytest.raises(InputError, match="no output named 'z'"): prog.run(["z"], {"x": x_like()})
  with pytest.raises(InputError, match="no input named 'y'"): prog.input_buffer("y")


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_wrong_target(tmp_path, target):
  if target == default_device().target.name: pytest.skip("the default device's own target")
  p = tmp_path / f"{target}.edgeml"
  write_artifact(tiny_spec(target), p)
  with pytest.raises(ArtifactError, match=f"compiled for target '{target}', but the device is .*allow_target_mismatch"):
    compiled.load(p, default_device())
  x = x_like()
  check(compiled.load(p, default_device(), allow_target_mismatch=True).run({"x": x}), x)


def test_alignment_below_the_device_minimum():
  need = default_device().dev.mem_base_addr_align // 8
  with pytest.raises(ArtifactError, match=f"needs sub-buffers aligned to {need} bytes"):
    Program(tiny_spec(align=need // 2), default_device())


def test_kernel_mismatches():
  spec = tiny_spec()
  spec.kernels[1].name = "nowhere"
  with pytest.raises(ArtifactError, match="kernel 'nowhere' is not in the program source"): Program(spec, default_device())
  spec = tiny_spec()
  spec.kernels[1].args.pop()
  with pytest.raises(ArtifactError, match="kernel 'scale' takes 3 arguments, the artifact gives 2"):
    Program(spec, default_device())


def test_binary_cache(tmp_path, monkeypatch):
  """The driver-binary path, exercised on PoCL by pretending its binaries were machine code."""
  monkeypatch.setenv("EDGEML_CACHE_DIR", str(tmp_path))
  def fresh():
    dev = Device(default_device().dev)
    dev.target = dataclasses.replace(dev.target, cache_binaries=True)
    return dev
  fresh().build(SOURCE, "-DFIRST")
  [binary] = (tmp_path / "kernels").iterdir()
  prg = fresh().build(SOURCE, "-DFIRST")
  assert prg.get_info(__import__("pyopencl").program_info.SOURCE) == ""  # built from the binary, not the source
  binary.write_bytes(b"garbage")
  fresh().build(SOURCE, "-DFIRST")  # a rejected binary is rebuilt from source and replaced
  assert binary.read_bytes() != b"garbage" and len(list((tmp_path / "kernels").iterdir())) == 1


def test_import_compiled_stays_lean(path, tmp_path):
  code = ("import sys, os, numpy as np, compiled\n"
          f"p = compiled.load({str(path)!r})\n"
          "p.run({'x': np.zeros((1, 8), np.float32)})\n"
          "bad = [m for m in sys.modules if m.split('.')[0] in ('edgeml', 'onnx', 'onnxruntime')]\n"
          "assert not bad, bad\n"
          "print(os.environ['POCL_CACHE_DIR'])\n")
  env = {k: v for k, v in os.environ.items() if k != "POCL_CACHE_DIR"} | {"EDGEML_CACHE_DIR": str(tmp_path)}
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == str(tmp_path / "pocl")


CHILD_RUN = ("import sys, numpy as np, compiled\n"
             "p = compiled.load(sys.argv[1])\n"
             "x = np.arange(8, dtype=np.float32).reshape(1, 8)\n"
             "np.save(sys.argv[2], p.run({'x': x})['y'])\n")


def _run_child(path, tmp_path, **env) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ("POCL_CACHE_DIR", "EDGEML_DEBUG")} | env
  return subprocess.run([sys.executable, "-c", CHILD_RUN, str(path), str(tmp_path / "y.npy")], env=env,
                        capture_output=True, text=True, timeout=120)


def test_runs_without_a_writable_cache(path, tmp_path):
  """A read-only root filesystem: one warning naming the folder and the variable, and the program still runs."""
  (tmp_path / "file").write_text("")
  unwritable = tmp_path / "file" / "cache"   # under a regular file: no one can create it, root included
  result = _run_child(path, tmp_path, EDGEML_CACHE_DIR=str(unwritable))
  assert result.returncode == 0, result.stderr
  warnings = [line for line in result.stderr.splitlines() if "warning" in line]
  assert len(warnings) == 1 and str(unwritable) in warnings[0] and "EDGEML_CACHE_DIR" in warnings[0], result.stderr
  x = np.arange(8, dtype=np.float32).reshape(1, 8)
  np.testing.assert_allclose(np.load(tmp_path / "y.npy"), reference(x)["y"], rtol=1e-5, atol=1e-6)


def test_debug_prints_a_line_per_kernel_and_frame(path, tmp_path):
  result = _run_child(path, tmp_path, EDGEML_DEBUG="2")
  assert result.returncode == 0, result.stderr
  lines = result.stderr.splitlines()
  frames = 2   # the warm-up at load and the run
  for kernel in ("dense_relu", "scale", "argmax"):
    mine = [line for line in lines if line.startswith(kernel + " ")]
    assert len(mine) == frames and all("GFLOP/s" in line and "GB/s" in line for line in mine), result.stderr
  assert sum("3 kernels" in line and "ms on the device" in line for line in lines) == frames, result.stderr
  quiet = _run_child(path, tmp_path)
  assert quiet.returncode == 0 and "dense_relu" not in quiet.stderr
