"""The compiler runs on the host: constants stay numpy arrays until a kernel runs, constant folding evaluates the
primitive ops in numpy with the kernels' C semantics, and edgeml-compile works with no OpenCL platform at all,
writing the same bytes as with one (for every target)."""
import glob
import os
import subprocess
import sys
import numpy as np
import pytest
from compiled.targets import TARGETS
from edgeml.tensor import Tensor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared", "models")
I32 = np.iinfo(np.int32)


def _both(build):
  """(host, device) results of the graph `build()` makes: the same nodes realized by the numpy evaluator and by
  OpenCL kernels."""
  from edgeml.realize import realize
  host, device = build(), build()
  realize([host.node], host=True)
  realize([device.node])
  return host.numpy(), device.numpy()


INT_CASES = {
  "add wraps": lambda a, b: a + b, "mul wraps": lambda a, b: a * b, "neg wraps": lambda a, b: -a,
  "div truncates, /0 and INT_MIN/-1": lambda a, b: a.idiv(b), "fmod, %0 and %-1": lambda a, b: a.fmod(b),
  "floordiv": lambda a, b: a // b, "mod": lambda a, b: a % b, "max": lambda a, b: a.maximum(b),
  "min": lambda a, b: a.minimum(b), "lt": lambda a, b: a < b, "eq": lambda a, b: a.eq(b),
  "xor": lambda a, b: a ^ b, "to int8 keeps low bits": lambda a, b: a.cast(np.int8),
  "to uint8": lambda a, b: a.cast(np.uint8), "to float": lambda a, b: a.cast(np.float32) * 0.5,
  "sum": lambda a, b: (a * b).sum(0), "row max": lambda a, b: a.max(1), "where": lambda a, b: (a < b).where(a, b),
}


@pytest.mark.parametrize("case", INT_CASES)
def test_host_evaluator_matches_the_kernels_on_int32_edges(case):
  edges = np.array([I32.min, I32.min + 1, -7, -1, 0, 1, 3, 7, I32.max - 1, I32.max], np.int32)
  a, b = np.meshgrid(edges, edges, indexing="ij")
  host, device = _both(lambda: INT_CASES[case](Tensor(a), Tensor(b)))
  assert host.dtype == device.dtype and np.array_equal(host, device)


def test_host_evaluator_int_rules_against_numpy():
  """Independent reference for what numpy defines: wrapping add/mul, and C's truncating division and remainder."""
  rng = np.random.default_rng(0)
  a = rng.integers(I32.min, I32.max, 500, dtype=np.int64).astype(np.int32)
  b = rng.integers(-50, 50, 500).astype(np.int32)
  from edgeml.realize import realize
  for got_fn, want in ((lambda x, y: x + y, (a.astype(np.int64) + b) .astype(np.int32)),
                       (lambda x, y: x * y, (a.astype(np.int64) * b).astype(np.int32)),
                       (lambda x, y: x.idiv(y), np.where(b == 0, 0, np.trunc(a / np.where(b == 0, 1, b))).astype(np.int32)),
                       (lambda x, y: x.fmod(y), np.where(b == 0, 0, np.fmod(a, np.where(b == 0, 1, b))).astype(np.int32))):
    t = got_fn(Tensor(a), Tensor(b))
    realize([t.node], host=True)
    assert np.array_equal(t.numpy(), want)


def test_host_evaluator_float_to_int_casts_saturate():
  x = np.array([np.nan, np.inf, -np.inf, 3e9, -3e9, 2.9, -2.9, 0.5, -0.5, 127.7, -128.9, 300.0], np.float32)
  for dtype in (np.int32, np.int8, np.uint8, np.int16):
    host, device = _both(lambda: Tensor(x).cast(dtype))
    info = np.iinfo(dtype)
    wide = np.nan_to_num(x.astype(np.float64), nan=0, posinf=info.max, neginf=info.min)
    want = np.clip(np.trunc(wide), info.min, info.max)
    assert np.array_equal(host, want.astype(dtype)) and np.array_equal(host, device)


def test_host_evaluator_float_math_is_close_to_the_kernels_and_numpy():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((6, 40)).astype(np.float32)
  def graph(): t = Tensor(x); return ((t.exp() + t.abs().sqrt() - (t * t + 1).log()) * t.sin()).softmax(1).sum(0) / 3
  host, device = _both(graph)
  v = (np.exp(x) + np.sqrt(np.abs(x)) - np.log(x * x + 1)) * np.sin(x)
  e = np.exp(v - v.max(1, keepdims=True))
  want = (e / e.sum(1, keepdims=True)).sum(0) / 3
  np.testing.assert_allclose(host, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(host, device, rtol=1e-5, atol=1e-6)


def test_host_evaluator_bool_and_half():
  x = np.array([[-1.5, 0.0, 2.25], [3.0, -0.0, 65504.0]], np.float32)
  host, device = _both(lambda: (Tensor(x).cast(np.float16).cast(np.float32) > 0).logical_xor(Tensor(x) < 3))
  assert host.dtype == np.bool_ and np.array_equal(host, device)
  host, device = _both(lambda: Tensor(x).cast(np.float16) * 2)   # math in float32, rounded once when stored as half
  assert host.dtype == np.float16 and np.array_equal(host, device)


def test_tensor_data_stays_on_the_host_until_a_kernel_reads_it():
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  t = Tensor(a)
  assert isinstance(t.node.buffer, np.ndarray) and t.node.buffer is not a   # a private copy, no upload
  a[0, 0] = 100                                                            # later changes to the caller's array do not leak in
  assert t.numpy()[0, 0] == 0
  out = (t * 2).numpy()                                                     # a kernel runs: the data is uploaded once
  assert np.array_equal(out, np.arange(6, dtype=np.float32).reshape(2, 3) * 2)
  assert not isinstance(t.node.buffer, np.ndarray) and t.node.host is not None   # the host copy is kept for compile


# ---- edgeml-compile without any OpenCL platform

def _models(tmp_path_factory) -> list[str]:
  from edgeml import demo_model
  folder = tmp_path_factory.mktemp("models")
  demo = str(folder / "demo.onnx")
  demo_model.build(demo)
  return [demo] + sorted(glob.glob(os.path.join(SHARED, "*.onnx")))


CHILD = r"""
import os, sys
from edgeml.compile import compile_model
model, folder = sys.argv[1], sys.argv[2]
for target in sys.argv[3:]:
  compile_model(model, os.path.join(folder, target + ".edgeml"), target=target, log=lambda line: None)
  if target == "pocl": compile_model(model, os.path.join(folder, "pocl.fp16.edgeml"), target=target, fp16=True, log=lambda line: None)
print("device module imported:", "compiled.device" in sys.modules)
"""


def _no_opencl_env(tmp_path) -> dict:
  empty = tmp_path / "no-vendors"
  empty.mkdir(exist_ok=True)
  return {**os.environ, "OCL_ICD_VENDORS": str(empty), "OPENCL_VENDOR_PATH": str(empty), "PYTHONPATH": REPO}


@pytest.fixture(scope="module")
def models(tmp_path_factory): return _models(tmp_path_factory)


SHARED_MODELS = [os.path.basename(p)[:-5] for p in sorted(glob.glob(os.path.join(SHARED, "*.onnx")))]


@pytest.mark.parametrize("index", range(1 + len(SHARED_MODELS)), ids=["demo", *SHARED_MODELS])
def test_compile_without_opencl_writes_the_same_bytes_for_every_target(models, index, tmp_path):
  model = models[index]
  runs, procs = {}, {}
  for name, env in (("device", {**os.environ, "PYTHONPATH": REPO}), ("none", _no_opencl_env(tmp_path))):
    runs[name] = tmp_path / name
    runs[name].mkdir()
    procs[name] = subprocess.Popen([sys.executable, "-c", CHILD, model, str(runs[name]), *TARGETS], env=env, cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, err[-2000:]
    if name == "none": assert "device module imported: False" in out
  for target in [*TARGETS, "pocl.fp16"]:
    with open(runs["device"] / f"{target}.edgeml", "rb") as f: with_device = f.read()
    with open(runs["none"] / f"{target}.edgeml", "rb") as f: without = f.read()
    assert with_device == without, f"{os.path.basename(model)} for {target}: the artifacts differ"


def test_no_opencl_import_works_and_auto_target_asks_for_a_target(tmp_path):
  env = _no_opencl_env(tmp_path)
  done = subprocess.run([sys.executable, "-c", "import edgeml, edgeml.compile, edgeml.onnx, sys; "
                         "print('compiled.device' in sys.modules)"], env=env, cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
  from edgeml import demo_model
  model = str(tmp_path / "small.onnx")
  demo_model.build_small(model)
  done = subprocess.run([sys.executable, "-m", "tools.compile", model, "-o", str(tmp_path / "x.edgeml")], env=env, cwd=REPO,
                        capture_output=True, text=True)
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
  assert len(done.stderr.strip().splitlines()) == 1 and "--target" in done.stderr
  done = subprocess.run([sys.executable, "-m", "tools.compile", model, "-o", str(tmp_path / "x.edgeml"), "--target", "adreno"],
                        env=env, cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 0 and os.path.getsize(tmp_path / "x.edgeml") > 0, done.stderr
