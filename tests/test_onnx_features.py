"""ONNX import features real models need (issue 13), each against onnxruntime: declared dims <= 0 as unknown,
constant-exponent Pow, If (folded, selected or refused), inputs fixed at compile time (--const), Loop unrolled,
TopK, NonMaxSuppression with fixed buffers, GridSample."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
import compiled
from edgeml.lazy import Node
from edgeml.onnx import OnnxModel
from edgeml.ops import Op
from edgeml.tensor import Tensor
from tools.compile import main as compile_main, parse_consts, parse_shapes
try: from edgeml.compile import compile_model
except ImportError: from tools.compile import compile_model   # before compile_model moved into edgeml/compile.py

rng = np.random.default_rng(13)
F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17):
  """inputs: (name, shape) or (name, shape, elem type); outputs: names (float) or (name, elem type); inits: (name,
  array) kept in their dtype."""
  graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(i[0], i[2] if len(i) > 2 else F, i[1]) for i in inputs],
                            [helper.make_tensor_value_info(*((o, F) if isinstance(o, str) else o), None) for o in outputs],
                            [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
  return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", opset)])


def _ort(model, feeds):
  import onnxruntime as ort
  sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
  return dict(zip([o.name for o in model.graph.output], sess.run(None, feeds)))


def _check(model, feeds, rtol=1e-4, atol=1e-5, **kw):
  expected = _ort(model, feeds)
  m = OnnxModel(model, **kw)
  outs = m({k: Tensor(v) for k, v in feeds.items() if k in {n for n, _, _ in m.inputs}})
  for name, e in expected.items():
    got = outs[name].numpy()
    assert got.dtype == e.dtype and got.shape == e.shape, (name, got.dtype, got.shape, e.dtype, e.shape)
    np.testing.assert_allclose(got, e, rtol=rtol, atol=atol, err_msg=name)
  return m


def _ops(t: Tensor) -> set:
  seen, stack, ops = set(), [t.node], set()
  while stack:
    n = stack.pop()
    if id(n) in seen: continue
    seen.add(id(n))
    ops.add(n.op)
    stack += [s for s in n.src if isinstance(s, Node)]
  return ops


# ---------------------------------------------------------------- dims <= 0
def test_negative_dims_are_unknown():
  zero = _model([helper.make_node("Relu", ["x"], ["y"])], [("x", [-1, 3, 0])], ["y"])
  with pytest.raises(ValueError, match=r"unknown dims \('\?', 3, '\?'\).*--shape x="): OnnxModel(zero)
  assert OnnxModel(zero, shapes={"x": (2, 3, 4)}).inputs[0][1] == (2, 3, 4)
  model = _model([helper.make_node("Relu", ["x"], ["y"])], [("x", [-1, 3, 4])], ["y"])
  with pytest.raises(ValueError, match="negative size"): OnnxModel(model, shapes={"x": (-1, 3, 4)})
  with pytest.raises(ValueError, match="does not fit"): OnnxModel(model, shapes={"x": (2, 4, 4)})
  _check(model, {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)}, shapes={"x": (2, 3, 4)})


@pytest.mark.parametrize("bad", ["x=-1x3x48x192", "x=0x3", "x=2xx3", "=1x2"])
def test_shape_flag_refuses_bad_sizes(bad, capsys):
  with pytest.raises(SystemExit) as e: parse_shapes([bad])
  assert "--shape" in str(e.value) and "\n" not in str(e.value)
  assert parse_shapes(["x=1x3x48x192"]) == {"x": (1, 3, 48, 192)}


# ---------------------------------------------------------------- Pow
@pytest.mark.parametrize("y", [2.0, 0.5, -0.5, 3.0, 1.0, 0.0, -1.0, -2.0, 0.75, 2.5, -1.5, 5.0, -3.0, 1 / 3, 17.0, 20.0])
def test_pow_constant_exponent(y):
  x = np.array([[-3, -2.5, -1, -0.5, 0, 0.5, 1, 2, 3.7]], np.float32)
  model = _model([helper.make_node("Pow", ["x", "y"], ["z"])], [("x", [1, 9])], ["z"], [("y", np.float32(y))])
  out = OnnxModel(model)({"x": Tensor(x)})["z"]
  assert Op.POW not in _ops(out)   # specialized: no generic pow() left
  expected = _ort(model, {"x": x})["z"]
  np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.isnan(out.numpy()), np.isnan(expected))


def test_pow_broadcast_constant_and_tensor_exponent():
  x = np.abs(rng.standard_normal((2, 3)).astype(np.float32)) + 0.1
  model = _model([helper.make_node("Pow", ["x", "y"], ["z"]), helper.make_node("Pow", ["x", "e"], ["w"])],
                 [("x", [2, 3]), ("e", [2, 3])], ["z", "w"], [("y", np.full((4, 1, 1), 2, np.float32))])
  _check(model, {"x": x, "e": rng.standard_normal((2, 3)).astype(np.float32)})


# ---------------------------------------------------------------- If
def _branch(name, nodes, out, inits=(), elem=F):
  return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, elem, None)],
                           [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])


def test_if_on_shape_folds_at_import():
  """The PyTorch shape check: If(Shape(x)[0] == 2) chooses a branch that reads outer values."""
  then = _branch("then", [helper.make_node("Mul", ["x", "two"], ["t"])], "t", [("two", np.float32(2))])
  other = _branch("else", [helper.make_node("Neg", ["x"], ["e"])], "e")
  nodes = [helper.make_node("Shape", ["w"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["d"], axis=0),
           helper.make_node("Equal", ["d", "two_i"], ["c"]),
           helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
  inits = [("w", np.zeros((2, 5), np.float32)), ("zero", np.int64(0)), ("two_i", np.int64(2))]
  model = _model(nodes, [("x", [2, 3])], ["y"], inits)
  m = _check(model, {"x": rng.standard_normal((2, 3)).astype(np.float32)})
  assert [n.op for n in m.nodes] == ["Mul", "Identity"]


def test_if_on_input_shape_folds_at_import():
  """The check PyTorch exports for recurrent models: If(Shape(x)[1] == 3), x a graph input whose shape is fixed."""
  then = _branch("then", [helper.make_node("Relu", ["x"], ["t"])], "t")
  other = _branch("else", [helper.make_node("Neg", ["x"], ["e"])], "e")
  nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "one"], ["d"], axis=0),
           helper.make_node("Equal", ["d", "three"], ["c"]),
           helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
  model = _model(nodes, [("x", ["batch", 3])], ["y"], [("one", np.int64(1)), ("three", np.int64(3))])
  m = _check(model, {"x": rng.standard_normal((2, 3)).astype(np.float32)}, shapes={"x": (2, 3)})
  assert [n.op for n in m.nodes] == ["Relu", "Identity"]


def _if_model(same_shape=True):
  then = _branch("then", [helper.make_node("Add", ["x", "one"], ["t"])], "t", [("one", np.float32(1))])
  other = _branch("else", [helper.make_node("Mul", ["x", "x"], ["e"])] if same_shape else
                  [helper.make_node("ReduceSum", ["x"], ["e"], keepdims=0)], "e")
  return _model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="gate")],
                [("x", [2, 3]), ("c", [], TensorProto.BOOL)], ["y"])


@pytest.mark.parametrize("cond", [True, False])
def test_if_on_input_selects(cond):
  _check(_if_model(), {"x": rng.standard_normal((2, 3)).astype(np.float32), "c": np.array(cond)})


def test_if_on_input_with_different_shapes_is_refused_or_fixed():
  model = _if_model(same_shape=False)
  x = rng.standard_normal((2, 3)).astype(np.float32)
  with pytest.raises(ValueError, match=r"If node 'gate'.*condition 'c'.*--const"): OnnxModel(model)({"x": x, "c": np.array(True)})
  for cond in (True, False):
    m = _check(model, {"x": x, "c": np.array(cond)}, consts={"c": np.array(cond)})
    assert [n for n, _, _ in m.inputs] == ["x"]


# ---------------------------------------------------------------- --const
def _sample_rate_model():
  """The whole network under If(sr == 16000), as in a voice-activity export; `n` reshapes at a shape read from an
  input."""
  then = _branch("then", [helper.make_node("Mul", ["x", "k"], ["t"])], "t", [("k", np.float32(3))])
  other = _branch("else", [helper.make_node("ReduceMean", ["x"], ["e"], keepdims=0)], "e")
  nodes = [helper.make_node("Equal", ["sr", "sr16"], ["c"]),
           helper.make_node("If", ["c"], ["y0"], then_branch=then, else_branch=other),
           helper.make_node("Reshape", ["y0", "shape"], ["y"])]
  return _model(nodes, [("x", [2, 3]), ("sr", [], TensorProto.INT64), ("shape", [2], TensorProto.INT64)], ["y"],
                [("sr16", np.int64(16000))])


def test_const_inputs_compile_to_an_artifact(tmp_path):
  model = _sample_rate_model()
  path = tmp_path / "m.onnx"
  path.write_bytes(model.SerializeToString())
  x = rng.standard_normal((2, 3)).astype(np.float32)
  expected = _ort(model, {"x": x, "sr": np.array(16000, np.int64), "shape": np.array([3, 2], np.int64)})["y"]
  consts = parse_consts(["sr=16000", "shape=3,2"])
  compile_model(str(path), str(tmp_path / "m.edgeml"), consts=consts, log=lambda *_: None)
  prog = compiled.load(tmp_path / "m.edgeml")
  assert [t.name for t in prog.inputs] == ["x"]
  np.testing.assert_allclose(prog.run({"x": x})["y"], expected, rtol=1e-5)
  # the same through the command line, with the values from an .npz
  np.savez(tmp_path / "feeds.npz", sr=np.array(16000), shape=np.array([6, 1]))
  compile_main([str(path), "-o", str(tmp_path / "f.edgeml"), "--const-file", str(tmp_path / "feeds.npz")])
  got = compiled.load(tmp_path / "f.edgeml").run({"x": x})["y"]
  np.testing.assert_allclose(got, expected.reshape(6, 1), rtol=1e-5)


def test_const_errors(tmp_path):
  model = _sample_rate_model()
  with pytest.raises(ValueError, match="'nope', which is not a graph input"): OnnxModel(model, consts={"nope": 1})
  with pytest.raises(ValueError, match="'shape' has shape \\(3,\\)"): OnnxModel(model, consts={"shape": [1, 2, 3]})
  for bad in (["sr"], ["sr=abc"], ["=3"]):
    with pytest.raises(SystemExit, match="--const"): parse_consts(bad)
  with pytest.raises(SystemExit, match="--const-file"): parse_consts([], str(tmp_path / "missing.npz"))
  (tmp_path / "bad.npz").write_bytes(b"not a zip")
  with pytest.raises(SystemExit, match="--const-file"): parse_consts([], str(tmp_path / "bad.npz"))


# ---------------------------------------------------------------- Loop
def test_loop_constant_trip_count_unrolled():
  """Carried state (an accumulator updated from an outer value) and a scan output, 4 iterations."""
  body = helper.make_graph(
    [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
     helper.make_node("Cast", ["i"], ["fi"], to=TensorProto.FLOAT),
     helper.make_node("Mul", ["x", "fi"], ["step"]),
     helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
     helper.make_node("Tanh", ["acc_out"], ["scan"])], "body",
    [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
     helper.make_tensor_value_info("acc_in", F, [2, 3])],
    [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("acc_out", F, [2, 3]),
     helper.make_tensor_value_info("scan", F, [2, 3])])
  model = _model([helper.make_node("Loop", ["m", "", "acc0"], ["acc", "scans"], body=body)], [("x", [2, 3]), ("acc0", [2, 3])],
                 ["acc", "scans"], [("m", np.int64(4))])
  _check(model, {"x": rng.standard_normal((2, 3)).astype(np.float32), "acc0": rng.standard_normal((2, 3)).astype(np.float32)})


# ---------------------------------------------------------------- TopK, NonMaxSuppression, GridSample
@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("axis", [-1, 1])
def test_topk(largest, axis):
  x = rng.integers(-4, 4, (2, 7, 5)).astype(np.float32)   # ties: the lower index comes first
  model = _model([helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=axis, largest=largest)], [("x", [2, 7, 5])],
                 ["v", ("i", TensorProto.INT64)], [("k", np.array([3], np.int64))])
  _check(model, {"x": x})


def _nms_model(center=0, score_threshold=None):
  inputs = ["boxes", "scores", "max_out", "iou"] + (["thr"] if score_threshold is not None else [])
  inits = [("max_out", np.array([5], np.int64)), ("iou", np.array([0.4], np.float32))]
  inits += [("thr", np.array([score_threshold], np.float32))] if score_threshold is not None else []
  return _model([helper.make_node("NonMaxSuppression", inputs, ["sel"], center_point_box=center)],
                [("boxes", [2, 6, 4]), ("scores", [2, 2, 6])], [("sel", TensorProto.INT64)], inits)


@pytest.mark.parametrize("center,score_threshold", [(0, None), (0, 0.6), (1, 0.0)])
def test_nms_fixed_buffer(center, score_threshold):
  """The first rows are onnxruntime's selection in its order; the rest of the B*C*max rows are -1."""
  corner = rng.uniform(0, 4, (2, 6, 2)).astype(np.float32)
  boxes = np.concatenate([corner, corner + rng.uniform(0.5, 3, (2, 6, 2)).astype(np.float32)], -1)
  boxes[:, 3], boxes[:, 5] = boxes[:, 2] + 0.05, boxes[:, 1] - 0.05   # near-duplicates, suppressed
  if center: boxes = np.concatenate([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)[..., [1, 0, 3, 2]]
  scores = rng.uniform(0, 1, (2, 2, 6)).astype(np.float32)
  model = _nms_model(center, score_threshold)
  expected = _ort(model, {"boxes": boxes, "scores": scores})["sel"]
  got = OnnxModel(model)({"boxes": Tensor(boxes), "scores": Tensor(scores)})["sel"].numpy()
  assert got.shape == (2 * 2 * 5, 3) and got.dtype == np.int64
  count = int((got[:, 0] >= 0).sum())
  assert 0 < count < len(got)   # something selected, something suppressed
  np.testing.assert_array_equal(got[:count], expected)
  assert (got[count:] == -1).all()


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample(mode, padding, align):
  x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
  grid = rng.uniform(-1.3, 1.3, (2, 4, 7, 2)).astype(np.float32)
  model = _model([helper.make_node("GridSample", ["x", "grid"], ["y"], mode=mode, padding_mode=padding, align_corners=align)],
                 [("x", [2, 3, 5, 6]), ("grid", [2, 4, 7, 2])], ["y"])
  _check(model, {"x": x, "grid": grid}, rtol=1e-4, atol=1e-5)
