"""Ahead-of-time compile: graphs and ONNX models to artifacts, run by the lean runtime, checked against numpy and
onnxruntime (the project's demo driving model always; ../shared/models too when it is beside the checkout); the arena
plan; constant folding; determinism; clean failures."""
import os
from pathlib import Path
import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
import compiled
from compiled.artifact import read_artifact, write_artifact
from edgeml import Tensor
from edgeml import demo_model
from edgeml.compile import compile_graph, placeholder
from edgeml.memplan import Interval, align_up, liveness_lower_bound, plan_arena
from edgeml.compile import compile_model
from tools.compile import parse_shapes

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"  # optional extra models beside the checkout
SHARED = [name for name in ("tiny_detector", "mini_drive") if (MODELS / f"{name}.onnx").exists()]


def test_graph_compiles_and_runs_without_the_compiler(tmp_path):
  rng = np.random.default_rng(0)
  w1, b1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
  w2 = rng.standard_normal((8 * 4 * 4, 5)).astype(np.float32)
  x = placeholder("image", (1, 3, 8, 8))
  h = x.conv2d(Tensor(w1), Tensor(b1), padding=1).relu().max_pool2d(2)
  out = {"logits": h.flatten(1) @ Tensor(w2), "pooled": h}
  result = compile_graph({"image": x}, out)
  path = tmp_path / "net.edgeml"
  write_artifact(result.spec, path)
  prog = compiled.load(path)
  image = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
  got = prog.run({"image": image})
  want = Tensor(image).conv2d(Tensor(w1), Tensor(b1), padding=1).relu().max_pool2d(2)   # eager edgeml, checked below
  ref_pool = want.numpy()
  conv = np.zeros((1, 8, 8, 8))
  xp = np.pad(image, ((0, 0), (0, 0), (1, 1), (1, 1)))
  for i in range(3):
    for j in range(3): conv += np.einsum("nchw,oc->nohw", xp[:, :, i:i + 8, j:j + 8], w1[:, :, i, j])
  numpy_pool = np.maximum(conv + b1.reshape(1, -1, 1, 1), 0).reshape(1, 8, 4, 2, 4, 2).max((3, 5))
  np.testing.assert_allclose(ref_pool, numpy_pool, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got["pooled"], numpy_pool, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got["logits"], numpy_pool.reshape(1, -1) @ w2, rtol=1e-4, atol=1e-4)


def test_weight_only_kernels_are_folded_at_compile_time(tmp_path):
  w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
  x = placeholder("x", (2, 3))
  scale = Tensor(w).sum(0, keepdim=True).exp()               # depends on weights only
  result = compile_graph({"x": x}, {"y": (x @ Tensor(w)) * scale})
  assert result.folded >= 1
  assert len(result.spec.kernels) == 1
  write_artifact(result.spec, tmp_path / "f.edgeml")
  xv = np.ones((2, 3), np.float32)
  got = compiled.load(tmp_path / "f.edgeml").run({"x": xv})["y"]
  np.testing.assert_allclose(got, (xv @ w) * np.exp(w.sum(0, keepdims=True)), rtol=1e-5)


def test_input_passed_straight_through_gets_its_own_output_buffer(tmp_path):
  x = placeholder("x", (4,))
  result = compile_graph({"x": x}, {"same": x, "double": x * 2})
  write_artifact(result.spec, tmp_path / "p.edgeml")
  got = compiled.load(tmp_path / "p.edgeml").run({"x": np.arange(4, dtype=np.float32)})
  np.testing.assert_array_equal(got["same"], np.arange(4))
  np.testing.assert_array_equal(got["double"], np.arange(4) * 2)



def test_output_reshaping_a_contiguous_is_written_by_its_kernel(tmp_path):
  """A recurrent state (a CONTIGUOUS, then reshaped to the output's shape, and read by another output) is written
  into the output buffer by the kernel computing it: no copy kernel; a second output naming the same state gets its
  own buffer; the values match numpy."""
  x, h = placeholder("x", (1, 6)), placeholder("h", (1, 6))
  state = (x * 0.5 + h.tanh()).contiguous()
  outs = {"state_out": state.reshape(6), "next": (state * 2).sum(1), "again": state.reshape(2, 3)}
  result = compile_graph({"x": x, "h": h}, outs)
  assert len(result.spec.kernels) == 3, [k.name for k in result.spec.kernels]   # state, next, a copy for "again"
  assert [t.shape for t in result.spec.outputs] == [(6,), (1,), (2, 3)]
  write_artifact(result.spec, tmp_path / "s.edgeml")
  xv, hv = np.arange(6, dtype=np.float32).reshape(1, 6), np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 6)
  got = compiled.load(tmp_path / "s.edgeml").run({"x": xv, "h": hv})
  want = xv * 0.5 + np.tanh(hv)
  np.testing.assert_allclose(got["state_out"], want.reshape(6), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["again"], want.reshape(2, 3), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["next"], (want * 2).sum(1), rtol=1e-5)

def _conv_np(x, w, stride=1, pad=0, groups=1):
  """A reference conv in numpy: x (1, C, H, W), w (O, C/groups, k, k)."""
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  o, cg, k, _ = w.shape
  h, wd = (xp.shape[2] - k) // stride + 1, (xp.shape[3] - k) // stride + 1
  out = np.zeros((1, o, h, wd))
  for g in range(groups):
    og = o // groups
    for i in range(k):
      for j in range(k):
        win = xp[:, g * cg:(g + 1) * cg, i:i + stride * h:stride, j:j + stride * wd:stride]
        out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", win, w[g * og:(g + 1) * og, :, i, j])
  return out


@settings(max_examples=6, deadline=None)
@given(c=st.sampled_from([3, 8, 13]), side=st.sampled_from([(16, 16), (8, 32), (32, 32), (12, 20)]),
       stride=st.sampled_from([1, 2]))
def test_activations_with_planes_of_whole_kib_are_stored_apart(tmp_path_factory, c, side, stride):
  """Activations whose channel planes are a multiple of 1 KiB are stored with one cache line between planes (a plane
  pitch in the artifact; others row-major), and every kind of reader still gets the right values: a 1x1 conv
  (channel tiles), a depthwise 3x3 conv (stride 1 and 2), a flatten into a matmul, a transpose and a concatenation
  along channels; checked against numpy."""
  rng = np.random.default_rng(c * 100 + side[0] + stride)
  h, w = side
  w1, w2 = rng.standard_normal((c + 2, c, 1, 1)).astype(np.float32), rng.standard_normal((c + 2, 1, 3, 3)).astype(np.float32)
  x = placeholder("x", (1, c, h, w))
  a = x.conv2d(Tensor(w1)).silu()                                   # an activation read by every reader below
  dw = a.conv2d(Tensor(w2), stride=stride, padding=1, groups=c + 2)
  hd, wd = dw.shape[2:]
  fc = rng.standard_normal(((c + 2) * hd * wd, 5)).astype(np.float32)
  outs = {"dw": dw, "fc": dw.flatten(1) @ Tensor(fc), "t": a.transpose(2, 3) * 1.0, "cat": a.cat(a * 2, axis=1).sum(1)}
  result = compile_graph({"x": x}, outs)
  plane = h * w * 4
  pitched = [b for b in result.spec.buffers if b.plane_pitch]
  assert bool(pitched) == (plane % 1024 == 0)
  assert all(b.kind == "arena" and b.plane_bytes % 1024 == 0 and b.plane_pitch == b.plane_bytes + 64 for b in pitched)
  path = tmp_path_factory.mktemp("pitch") / "p.edgeml"
  write_artifact(result.spec, path)
  assert [(b.plane_bytes, b.plane_pitch) for b in read_artifact(path).buffers] == \
      [(b.plane_bytes, b.plane_pitch) for b in result.spec.buffers]
  xv = rng.standard_normal((1, c, h, w)).astype(np.float32)
  got = compiled.load(path).run({"x": xv})
  av = _conv_np(xv, w1)
  av = av / (1 + np.exp(-av))
  dv = _conv_np(av, w2, stride, 1, c + 2)
  np.testing.assert_allclose(got["dw"], dv, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got["fc"], dv.reshape(1, -1) @ fc, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(got["t"], av.transpose(0, 1, 3, 2), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got["cat"], 3 * av.sum(1), rtol=1e-4, atol=1e-4)


def test_placeholder_cannot_run_eagerly():
  with pytest.raises(ValueError, match="placeholder"):
    (placeholder("x", (2,)) + 1).numpy()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 12), st.integers(0, 6)), min_size=1, max_size=25))
def test_arena_plan_never_overlaps_live_buffers(raw):
  intervals = [Interval(n, first, first + length) for n, first, length in raw]
  offsets, size = plan_arena(intervals, 64)
  assert all(o % 64 == 0 for o in offsets)
  for i, a in enumerate(intervals):
    assert offsets[i] + a.nbytes <= size
    for j, b in enumerate(intervals[:i]):
      if a.first <= b.last and b.first <= a.last:
        assert offsets[i] + align_up(a.nbytes, 64) <= offsets[j] or offsets[j] + align_up(b.nbytes, 64) <= offsets[i]
  assert size >= liveness_lower_bound(intervals, 64)


def _demo_frames(onnx_path, frames: int, seed: int = 0):
  """(feeds, onnxruntime outputs) for `frames` consecutive frames of the demo model, each frame's state_out fed back
  as the next frame's state."""
  import onnxruntime
  session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
  shapes, names = {i.name: i.shape for i in session.get_inputs()}, [o.name for o in session.get_outputs()]
  rng, state = np.random.default_rng(seed), np.zeros(shapes["state"], np.float32)
  for _ in range(frames):
    feeds = {"input_imgs": rng.integers(0, 256, shapes["input_imgs"]).astype(np.float32),
             "desire": rng.standard_normal(shapes["desire"]).astype(np.float32), "state": state}
    want = dict(zip(names, session.run(names, feeds)))
    yield feeds, want
    state = want["state_out"]


@pytest.mark.parametrize("name", ["demo_drive", *SHARED])
def test_driving_models_compile_load_and_match_onnxruntime(name, tmp_path):
  """The demo model (mini_drive's structure: depthwise convs, squeeze-excite, GRU, Softmax/Clip/Exp heads) over two
  frames with its recurrent state fed back; the ../shared models against their stored onnxruntime outputs."""
  onnx_path = tmp_path / "demo_drive.onnx" if name == "demo_drive" else MODELS / f"{name}.onnx"
  if name == "demo_drive": demo_model.build(str(onnx_path))
  path = tmp_path / f"{name}.edgeml"
  result = compile_model(str(onnx_path), str(path), log=lambda *_: None)
  assert result.planned <= 1.1 * result.lower_bound, (result.planned, result.lower_bound)
  assert result.planned < result.unplanned
  prog = compiled.load(path)
  if name == "mini_drive": assert len(prog.kernels) <= 40, [k.name for k in prog.kernels]   # launches, chains as one
  if name == "demo_drive": cases = list(_demo_frames(onnx_path, 2))
  else:
    with np.load(MODELS / f"{name}.npz") as ref: cases = [({s.name: ref[s.name] for s in prog.inputs}, dict(ref))]
  for frame, (feeds, want) in enumerate(cases):
    got = prog.run(feeds)
    for s in prog.outputs:
      np.testing.assert_allclose(got[s.name], want[s.name], rtol=1e-3, atol=1e-4, err_msg=f"{s.name}, frame {frame}")


def test_same_model_gives_byte_identical_artifacts(tmp_path):
  demo_model.build(str(tmp_path / "demo.onnx"), 64, 64, hidden=16)
  a, b = tmp_path / "a.edgeml", tmp_path / "b.edgeml"
  for p in (a, b): compile_model(str(tmp_path / "demo.onnx"), str(p), log=lambda *_: None)
  assert a.read_bytes() == b.read_bytes()


def test_failed_compile_leaves_nothing(tmp_path):
  node = onnx.helper.make_node("NoSuchOp", ["x"], ["y"])
  graph = onnx.helper.make_graph([node], "bad", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                                 [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
  model_path = tmp_path / "bad.onnx"
  onnx.save(onnx.helper.make_model(graph, ir_version=9, opset_imports=[onnx.helper.make_opsetid("", 17)]), model_path)
  with pytest.raises((NotImplementedError, ValueError), match="NoSuchOp"):
    compile_model(str(model_path), str(tmp_path / "bad.edgeml"), log=lambda *_: None)
  assert sorted(os.listdir(tmp_path)) == ["bad.onnx"]


def test_shape_flags_are_parsed_or_rejected_clearly():
  assert parse_shapes(["input=1x3x224x224", "b=7"]) == {"input": (1, 3, 224, 224), "b": (7,)}
  with pytest.raises(SystemExit, match="NAME=D0xD1"):
    parse_shapes(["input:1x3"])


def test_fp16_weights_halve_the_bytes_and_stay_close(tmp_path):
  """Half-precision weight storage: expected error is float16 rounding of the weights (rel ~1e-3 per weight)."""
  rng = np.random.default_rng(1)
  w = rng.standard_normal((64, 32)).astype(np.float32)
  results = {}
  for fp16 in (False, True):
    x = placeholder("x", (4, 64))
    results[fp16] = compile_graph({"x": x}, {"y": (x @ Tensor(w)).relu()}, fp16=fp16)
  assert len(results[True].spec.weights) * 2 <= len(results[False].spec.weights) + 1024
  write_artifact(results[True].spec, tmp_path / "h.edgeml")
  xv = rng.standard_normal((4, 64)).astype(np.float32)
  got = compiled.load(tmp_path / "h.edgeml").run({"x": xv})["y"]
  np.testing.assert_allclose(got, np.maximum(xv @ w, 0), rtol=1e-2, atol=2e-2)
  np.testing.assert_allclose(got, np.maximum(xv @ w.astype(np.float16).astype(np.float32), 0), rtol=1e-4, atol=1e-4)
