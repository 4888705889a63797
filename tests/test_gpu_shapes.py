"""GPU-shaped launches, tested without a GPU: for the GPU-like targets (nvidia, adreno) every kernel of 1 MFLOP or more
launches at least 4,096 work items in work-groups of at least 64 (compile only, on the shared models and the demo
model); the artifacts load; grouped reduces (a reduce split across a work-group, combined in __local memory) compute
numpy's answer on this device (PoCL runs any target's code), including the whole models against onnxruntime."""
import math
from pathlib import Path
import numpy as np
import pyopencl as cl
import pytest
from hypothesis import given, settings, strategies as st
import compiled
from compiled.artifact import write_artifact
from compiled.device import default_device
from compiled.targets import TARGETS
from edgeml import Tensor, demo_model
from edgeml.codegen import kernel_name, program_source, render, render_shape
from edgeml.host_eval import device_buffer
from edgeml.opt import MIN_GPU_ITEMS, KernelShape
from edgeml.realize import realize
from edgeml.schedule import schedule
from edgeml.compile import compile_model

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
SHARED = [MODELS / f"{n}.onnx" for n in ("tiny_detector", "mini_drive") if (MODELS / f"{n}.onnx").exists()]


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("demo") / "demo.onnx"
  demo_model.build(str(path))
  return path


def violations(spec) -> list:
  return [(k.name, k.flops, k.global_size, k.local_size) for k in spec.kernels
          if k.flops >= 1_000_000 and (math.prod(k.global_size) < MIN_GPU_ITEMS or math.prod(k.local_size) < 64)]


@pytest.mark.parametrize("target", ["nvidia", "adreno"])
@pytest.mark.parametrize("model", ["demo", *[p.stem for p in SHARED]])
def test_gpu_targets_launch_enough_work_items(model, target, demo_path, tmp_path):
  path = demo_path if model == "demo" else MODELS / f"{model}.onnx"
  out = tmp_path / "m.edgeml"
  result = compile_model(str(path), str(out), target=target, log=lambda *a: None)
  assert not violations(result.spec), violations(result.spec)
  prog = compiled.load(out, allow_target_mismatch=True)   # the loader accepts grouped launches
  assert not violations(prog), violations(prog)   # nor does a chain of small kernels hold 1 MFLOP


def test_pocl_keeps_cpu_shapes():
  """A GEMV on a CPU target keeps its tiles and has no grouped reduce (the GPU rule is for GPU-like targets)."""
  x, w = Tensor(np.ones((1, 512), np.float32)), Tensor(np.ones((256, 512), np.float32))
  item = schedule([x.linear(w).node])[-1]
  assert "get_local_id" not in render(item, target=TARGETS["pocl"]).source
  k = render(item, target=TARGETS["nvidia"])
  assert "barrier(CLK_LOCAL_MEM_FENCE)" in k.source and math.prod(k.global_size) >= MIN_GPU_ITEMS


def run_last_kernel(out: Tensor, kernel_of) -> np.ndarray:
  items = schedule([out.node])
  realize([it.out for it in items[:-1]])
  item = schedule([out.node])[-1]
  k = kernel_of(item)
  dev = default_device()
  buf, args = dev.alloc(k.out.nbytes), [device_buffer(n) for n in k.loads]
  cl.Kernel(dev.build(program_source([k])), k.name)(dev.queue, k.global_size, k.local_size, buf, *args)
  return dev.download(buf, k.out.shape, k.out.dtype), k


rng = np.random.default_rng(1)
GEMV_X, GEMV_W, GEMV_B = (rng.standard_normal(s).astype(np.float32) for s in ((1, 700), (37, 700), (37,)))
POOL = rng.standard_normal((1, 13, 9, 7)).astype(np.float32)
ROWS = rng.standard_normal((3, 1000)).astype(np.float32)
CASES = {   # the nvidia heuristic's choice for kernels with few outputs and long reduces: grouped
  "gemv_bias_relu": (lambda: Tensor(GEMV_X).linear(Tensor(GEMV_W), Tensor(GEMV_B)).relu(),
                     lambda: np.maximum(GEMV_X.astype(np.float64) @ GEMV_W.T + GEMV_B, 0)),
  "global_mean_pool": (lambda: Tensor(POOL).mean((2, 3), keepdim=True), lambda: POOL.astype(np.float64).mean((2, 3), keepdims=True)),
  "row_max": (lambda: Tensor(ROWS).max(1), lambda: ROWS.max(1)),
  "softmax_denominator": (lambda: (Tensor(ROWS) - Tensor(ROWS).max(1, keepdim=True)).exp().sum(1).log(),
                          lambda: np.log(np.exp(ROWS - ROWS.max(1, keepdims=True)).sum(1))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_grouped_reduces_match_numpy(case):
  make, reference = CASES[case]
  got, k = run_last_kernel(make(), lambda item: render(item, target=TARGETS["nvidia"]))
  np.testing.assert_allclose(got.reshape(reference().shape), reference(), rtol=1e-4, atol=1e-5)
  assert "barrier(CLK_LOCAL_MEM_FENCE)" in k.source and k.local_size[0] >= 64


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=2, max_size=4), data=st.data(),
       group=st.sampled_from([2, 4, 8, 16, 64]), op=st.sampled_from(["sum", "max", "isum"]))
def test_grouped_reduce_any_shape(shape, data, group, op):
  """Any axes of any shape, reduce lengths that are not multiples of the group, int sums; with an epilogue."""
  axes = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
  x = np.random.default_rng(len(shape) * 7 + group).standard_normal(shape).astype(np.float32)
  if op == "isum":
    xi = (x * 100).astype(np.int32)
    t, want = Tensor(xi).sum(axes, keepdim=True) * 3, xi.sum(axes, keepdims=True) * 3
  elif op == "sum": t, want = (Tensor(x).sum(axes, keepdim=True) + 1.0).exp(), np.exp(x.astype(np.float64).sum(axes, keepdims=True) + 1)
  else: t, want = Tensor(x).max(axes, keepdim=True) * 2.0, x.max(axes, keepdims=True) * 2
  if t.node.op.name == "BUFFER": return
  got, k = run_last_kernel(t, lambda item: render_shape(item, KernelShape(group=group, local=group), kernel_name(item)))
  np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", ["nvidia", "adreno"])
@pytest.mark.parametrize("model", [p.stem for p in SHARED])
def test_gpu_artifact_matches_onnxruntime_on_this_device(model, target, tmp_path):
  """A shared model compiled for a GPU target (grouped reduces, flat launches; adreno: image weights), run here
  (PoCL runs its code), against the stored onnxruntime outputs."""
  out = tmp_path / "m.edgeml"
  result = compile_model(str(MODELS / f"{model}.onnx"), str(out), target=target, log=lambda *a: None)
  if model == "mini_drive": assert "barrier(CLK_LOCAL_MEM_FENCE)" in result.spec.source   # its GEMVs are grouped
  prog = compiled.load(out, allow_target_mismatch=True)
  with np.load(MODELS / f"{model}.npz") as ref:
    got = prog.run({s.name: ref[s.name] for s in prog.inputs})
    for s in prog.outputs: np.testing.assert_allclose(got[s.name], ref[s.name], rtol=1e-3, atol=1e-4, err_msg=s.name)
