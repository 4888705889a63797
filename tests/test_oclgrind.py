"""The Oclgrind job: code run on Oclgrind, a simulated OpenCL device that checks every memory access and work-group race.

Each test runs a command through scripts/oclgrind.sh (Oclgrind as the only OpenCL platform, EDGEML_DEVICE=oclgrind),
which fails when the command fails or Oclgrind reports anything:
- deliberate out-of-bounds reads and writes and a data race are reported (the check can fail), the correct kernel is not;
- the tests marked `portable` pass under Oclgrind with nothing reported;
- a small CNN and the shared models (../shared/models, when present) compile for Oclgrind's target and their kernels,
  run with every buffer of the plan an allocation of its own (tests/oclgrind_run.py), match onnxruntime's outputs, with
  nothing reported; a kernel reading one element past its plan buffer is reported.
Skipped when Oclgrind is not installed (`apt-get install oclgrind`; scripts/setup.sh installs it).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "oclgrind.sh")
MODELS = os.path.join(ROOT, "..", "shared", "models")
RUNNER = os.path.join(ROOT, "tests", "oclgrind_run.py")

if os.environ.get("EDGEML_OCLGRIND_JOB"):   # the portable run below collects this file under Oclgrind: no recursion
  pytest.skip("already running under scripts/oclgrind.sh", allow_module_level=True)
if subprocess.run(["bash", SCRIPT, "--where"], capture_output=True).returncode != 0:
  pytest.skip("Oclgrind is not installed (apt-get install oclgrind; scripts/setup.sh installs it)", allow_module_level=True)


def under_oclgrind(*argv: str) -> subprocess.CompletedProcess:
  """`python argv...` through scripts/oclgrind.sh, in the repository root, output captured."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "EDGEML_DEVICE"))}
  return subprocess.run(["bash", SCRIPT, sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True)


def report(r: subprocess.CompletedProcess) -> str:
  return f"exit {r.returncode}\n--- stdout ---\n{r.stdout[-6000:]}\n--- stderr ---\n{r.stderr[-6000:]}"


# One kernel over n = 64 work items, y and x both 64 floats: `stmt` (argv[1]) is its body; prints whether y == x.
ONE_KERNEL = """
import sys
import numpy as np
from compiled.device import default_device
n, dev = 64, default_device()
print("device:", dev.name)
x = np.arange(n, dtype=np.float32)
xb, yb = dev.upload(x), dev.upload(np.zeros(n, np.float32))
k = dev.kernel("__kernel void one(__global float *y, __global const float *x) { int i = get_global_id(0); %s }"
               % sys.argv[1], "one")
k(dev.queue, (n,), (16,), yb, xb)
print("y == x:", bool(np.array_equal(dev.download(yb, (n,), np.float32), x)))
"""
KERNELS = {   # body, what Oclgrind must report (None: nothing)
  "in_bounds": ("y[i] = x[i];", None),
  "read_past_end": ("y[i] = x[i + 1];", "Invalid read of size 4"),
  "write_past_end": ("y[i + 1] = x[i];", "Invalid write of size 4"),
  "write_write_race": ("y[i / 2] = x[i];", "Write-write data race"),
}


@pytest.mark.parametrize("case", list(KERNELS))
def test_deliberate_errors_are_reported(case):
  stmt, expected = KERNELS[case]
  r = under_oclgrind("-c", ONE_KERNEL, stmt)
  assert "device: Oclgrind" in r.stdout, report(r)
  if expected is None:
    assert r.returncode == 0 and "y == x: True" in r.stdout, report(r)
  else:
    assert r.returncode == 1 and expected in r.stderr and "Kernel: one" in r.stderr, report(r)
    assert "oclgrind.sh: Oclgrind reported" in r.stderr, report(r)


def test_portable_tests_pass_under_oclgrind():
  # --capture=sys: Oclgrind writes to file descriptor 2 directly, which then reaches the scan in scripts/oclgrind.sh
  r = under_oclgrind("-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys", "-m", "portable", "tests")
  if r.returncode == 5: pytest.skip("no test is marked portable")
  assert r.returncode == 0, report(r)
  assert " passed" in r.stdout, report(r)


def small_cnn(path: str) -> None:
  """conv 3x3 pad 1 -> relu -> maxpool 2 -> conv 3x3 stride 2 pad 1 -> relu -> flatten -> gemm, on a 30x44 image (rows
  that end mid-vector), as ONNX (IR 8, opset 17: onnxruntime 1.17 and newer load it)."""
  from onnx import TensorProto, helper, numpy_helper, save
  rng = np.random.default_rng(8)
  def init(name, *shape): return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)
  nodes = [
    helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["c1"], ["r1"]),
    helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
    helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
    helper.make_node("Relu", ["c2"], ["r2"]),
    helper.make_node("Flatten", ["r2"], ["f"]),
    helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
  ]
  graph = helper.make_graph(
    nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 30, 44])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
    [init("w1", 8, 3, 3, 3), init("b1", 8), init("w2", 16, 8, 3, 3), init("b2", 16), init("wf", 10, 16 * 8 * 11),
     init("bf", 10)])
  save(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]), path)


FP16_TOLERANCE = ("--rtol", "1e-2", "--atol", "1e-2")   # float16 weights: looser bounds than float32's 1e-3 / 1e-4


def models():
  """(model, edgeml-compile options, oclgrind_run tolerance options). Oclgrind's own target (auto) and the GPU targets,
  whose grouped reduces use __local memory and barriers (the race check's ground). Only with EDGEML_OCLGRIND_SLOW=1
  (CPU time in the simulator, measured here): tiny_detector for nvidia (~105 s) and mini_drive (~3 min); the default
  models take ~60 s in all."""
  cases = [pytest.param("small_cnn", (), (), id="small_cnn"),
           pytest.param("small_cnn", ("--target", "nvidia"), (), id="small_cnn-nvidia"),
           pytest.param("small_cnn", ("--target", "adreno", "--fp16"), FP16_TOLERANCE, id="small_cnn-adreno-fp16")]
  for name, options in (("tiny_detector", ()), ("tiny_detector", ("--target", "nvidia")), ("mini_drive", ())):
    onnx_path = os.path.join(MODELS, f"{name}.onnx")
    if not (os.path.isfile(onnx_path) and os.path.isfile(onnx_path[:-5] + ".npz")): continue   # ../shared is optional
    marks = []
    if name == "mini_drive" or options:
      marks.append(pytest.mark.skipif(not os.environ.get("EDGEML_OCLGRIND_SLOW"), reason="slow under Oclgrind; "
                                      "EDGEML_OCLGRIND_SLOW=1 runs it"))
    cases.append(pytest.param(name, options, (), id="-".join((name, *options[1:])), marks=marks))
  return cases


@pytest.mark.parametrize("name,options,tolerance", models())
def test_model_artifact_matches_reference_under_oclgrind(name, options, tolerance, tmp_path):
  """Compiled (on Oclgrind), the kernels run with every plan buffer an allocation of its own (exact bounds,
  tests/oclgrind_run.py) and match onnxruntime's outputs; the small CNN for Oclgrind's target also runs through
  edgeml-validate (the runtime itself, its arena of sub-buffers)."""
  if name == "small_cnn":
    import onnxruntime
    onnx_path, reference = str(tmp_path / "small_cnn.onnx"), str(tmp_path / "small_cnn.npz")
    small_cnn(onnx_path)
    x = np.random.default_rng(1).standard_normal((1, 3, 30, 44)).astype(np.float32)
    y, = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(["y"], {"x": x})
    np.savez(reference, x=x, y=y)
  else:
    onnx_path = os.path.join(MODELS, f"{name}.onnx")
    reference = onnx_path[:-5] + ".npz"
  artifact = str(tmp_path / f"{name}.edgeml")
  r = under_oclgrind("-m", "tools.compile", onnx_path, "-o", artifact, *options)   # no --target: Oclgrind's own
  assert r.returncode == 0, report(r)
  r = under_oclgrind(RUNNER, artifact, reference, *tolerance)
  assert r.returncode == 0 and "0 mismatch" in r.stdout, report(r)
  if name == "small_cnn" and not options:
    r = under_oclgrind("-m", "tools.validate", onnx_path, artifact, "--inputs", reference)
    assert r.returncode == 0 and "0 failed" in r.stdout, report(r)


# tests/tiny_program.py's program, its first kernel reading its weights SHIFT (argv[1]) elements on, run through
# tests/oclgrind_run.py's separate allocations (in-process: the artifact loader would refuse the read past the end).
SHIFTED_TINY_PROGRAM = """
import dataclasses, sys
import numpy as np
sys.path.insert(0, "tests")
from oclgrind_run import run_separately
from tiny_program import N_IN, reference, tiny_spec
spec = tiny_spec(target="generic")
spec = dataclasses.replace(spec, source=spec.source.replace("w[i * n + k]", "w[i * n + k + %s]" % sys.argv[1]))
x = np.random.default_rng(2).standard_normal((1, N_IN)).astype(np.float32)
got, want = run_separately(spec, {"x": x}), reference(x)
print("outputs match:", all(np.allclose(got[k], want[k], rtol=1e-5, atol=1e-5) for k in want))
"""


@pytest.mark.parametrize("shift", [0, 1])
def test_read_past_a_plan_buffer_is_reported(shift):
  """One element past the end of a plan buffer lies inside the runtime's weights allocation, where Oclgrind cannot see
  it; with every buffer an allocation of its own (tests/oclgrind_run.py) it is reported."""
  r = under_oclgrind("-c", SHIFTED_TINY_PROGRAM, str(shift))
  if shift == 0:
    assert r.returncode == 0 and "outputs match: True" in r.stdout, report(r)
  else:
    assert r.returncode == 1, report(r)
    assert "Invalid read of size 4" in r.stderr and "Kernel: dense_relu" in r.stderr, report(r)


def test_chains_run_without_races_under_oclgrind(tmp_path):
  """A squeeze-excite block and a head compiled into chains (compiled/chain.py): each chain one work-group whose
  members meet at barriers; Oclgrind checks the races between its work items (it reports them when the barriers are
  left out) and the outputs match numpy."""
  from compiled.artifact import write_artifact
  from edgeml.compile import compile_graph
  from test_chain import rng, squeeze_excite_head
  inputs, outputs, reference = squeeze_excite_head(12, 5, 4, 3)
  spec = compile_graph(inputs, outputs, target="generic").spec
  write_artifact(spec, tmp_path / "se.edgeml")
  x, v = rng(1, 12, 5, 5, seed=1), rng(1, 3, seed=2)
  np.savez(tmp_path / "se.npz", x=x, v=v, **{k: a.astype(np.float32) for k, a in reference(x, v).items()})
  r = under_oclgrind(RUNNER, str(tmp_path / "se.edgeml"), str(tmp_path / "se.npz"))
  assert r.returncode == 0 and "0 mismatch" in r.stdout, report(r)
  assert f"{len(spec.kernels)} kernels in {len(spec.kernels) - sum(k.with_previous for k in spec.kernels)} launches" in r.stdout
  assert any(k.with_previous for k in spec.kernels)
