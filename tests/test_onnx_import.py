"""The ONNX importer against references: the demo driving model (and ../shared's models when present) and small
hand-built graphs run through onnxruntime, for ops the node conformance cases cover thinly (recurrent ops, Resize
linear, auto_pad, the Conv+BatchNormalization fold), plus the importer's errors."""
from pathlib import Path
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from edgeml.onnx import OnnxModel
from edgeml.tensor import Tensor

SHARED = Path(__file__).resolve().parents[2] / "shared"   # ../shared beside the repository


def test_demo_model(tmp_path):
  """The project's own driving model (small size) against onnxruntime."""
  import onnxruntime as ort
  from edgeml.demo_model import build
  path = tmp_path / "demo.onnx"
  build(str(path), 64, 64, hidden=16)
  sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  feeds = {i.name: rng.uniform(0, 255, i.shape).astype(np.float32) if i.name == "input_imgs"
           else rng.standard_normal(i.shape).astype(np.float32) for i in sess.get_inputs()}
  names = [o.name for o in sess.get_outputs()]
  outs = OnnxModel(path)(feeds)
  for name, want in zip(names, sess.run(names, feeds)):
    np.testing.assert_allclose(outs[name].numpy(), want, rtol=1e-3, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("name", ["mini_drive", "tiny_detector"])
def test_shared_model(name):
  """../shared's models against their stored onnxruntime outputs when they are beside the checkout; without them (a
  bare clone) nothing to check here: test_demo_model covers the importer on a model of mini_drive's structure."""
  path = SHARED / "models" / f"{name}.onnx"
  if not path.exists(): return
  ref = np.load(path.with_suffix(".npz"))
  model = OnnxModel(path)
  outs = model({n: ref[n] for n, _, _ in model.inputs})
  assert set(outs) == set(model.outputs)
  for n, t in outs.items():
    np.testing.assert_allclose(t.numpy(), ref[n], rtol=1e-3, atol=1e-4, err_msg=n)


def _model(nodes, inputs, outputs, inits=(), opset=17):
  graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                            [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits])
  return helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", opset)])


def _check(model, feeds, rtol=1e-3, atol=1e-4, **kw):
  import onnxruntime as ort
  sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
  expected = sess.run(None, feeds)
  outs = OnnxModel(model, **kw)({k: Tensor(v) for k, v in feeds.items()})
  for name, e in zip([o.name for o in model.graph.output], expected):
    np.testing.assert_allclose(outs[name].numpy(), e, rtol=rtol, atol=atol, err_msg=name)


rng = np.random.default_rng(0)
def _r(*shape): return rng.standard_normal(shape).astype(np.float32)


def _recurrent(op, seq, direction, batch, inp, hid, h0=True, c0=True, **kw):
  """A one-node GRU or LSTM model (weights, biases, optional initial state and LSTM peepholes as initializers)."""
  d, g = (2 if direction == "bidirectional" else 1), {"GRU": 3, "LSTM": 4}[op]
  ins, outs = ["x", "w", "r", "b", "", "h0" if h0 else ""], ["y", "yh"]
  inits = [("w", _r(d, g * hid, inp)), ("r", _r(d, g * hid, hid)), ("b", _r(d, 2 * g * hid))]
  inits += [("h0", _r(d, batch, hid))] if h0 else []
  if op == "LSTM":
    ins, outs = ins + ["c0" if c0 else "", "p"], outs + ["yc"]
    inits += ([("c0", _r(d, batch, hid))] if c0 else []) + [("p", _r(d, 3 * hid))]
  node = helper.make_node(op, ins, outs, hidden_size=hid, direction=direction, **kw)
  return _model([node], [("x", [seq, batch, inp])], outs, inits)


def _kernels_per_step(op, direction, batch, inp, hid, **kw):
  """Kernels one more time step adds, per direction: the input projection of all steps is one kernel up front, so
  this is what each step of the recurrence costs."""
  from edgeml.schedule import schedule
  def count(seq):
    outs = OnnxModel(_recurrent(op, seq, direction, batch, inp, hid, **kw))({"x": Tensor(_r(seq, batch, inp))})
    return len(schedule([t.node for t in outs.values()]))
  return (count(4) - count(3)) / (2 if direction == "bidirectional" else 1)


@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("seq,batch,h0", [(4, 2, True), (3, 1, False), (1, 3, True)])
def test_gru(linear_before_reset, direction, seq, batch, h0):
  """GRU against onnxruntime, and at most two kernels a time step: [z r] (matmul, sigmoid fused), then the
  candidate with the state update (linear_before_reset=0: the (r*h) @ Rh matmul with tanh and the update fused;
  1: h @ R for all gates is kernel one, the rest elementwise)."""
  inp, hid = 3, 5
  model = _recurrent("GRU", seq, direction, batch, inp, hid, h0, linear_before_reset=linear_before_reset)
  _check(model, {"x": _r(seq, batch, inp)})
  assert _kernels_per_step("GRU", direction, batch, inp, hid, h0=h0, linear_before_reset=linear_before_reset) <= 2


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("seq,batch,h0", [(3, 2, True), (4, 1, False), (1, 3, True)])
def test_lstm(direction, seq, batch, h0):
  """LSTM (with peepholes) against onnxruntime, and at most two kernels a time step: the four gates in one matmul,
  then the cell and hidden state elementwise into one [c, h] buffer."""
  inp, hid = 4, 3
  _check(_recurrent("LSTM", seq, direction, batch, inp, hid, h0, h0), {"x": _r(seq, batch, inp)})
  assert _kernels_per_step("LSTM", direction, batch, inp, hid, h0=h0, c0=h0) <= 2


def test_rnn():
  node = helper.make_node("RNN", ["x", "w", "r", "b"], ["y", "yh"], hidden_size=4, activations=["Relu"])
  inits = [("w", _r(1, 4, 3)), ("r", _r(1, 4, 4) * 0.3), ("b", _r(1, 8))]
  _check(_model([node], [("x", [5, 2, 3])], ["y", "yh"], inits), {"x": _r(5, 2, 3)})


@pytest.mark.parametrize("ctm", ["half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel"])
@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
def test_resize(mode, ctm):
  node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode, coordinate_transformation_mode=ctm)
  inits = [("scales", np.array([1, 1, 2.0, 0.5]))]
  _check(_model([node], [("x", [1, 2, 5, 8])], ["y"], inits), {"x": _r(1, 2, 5, 8)})


def test_resize_sizes_linear():
  node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear")
  graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 6])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                            [numpy_helper.from_array(np.array([1, 1, 7, 3], np.int64), "sizes")])
  _check(helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 13)]), {"x": _r(1, 1, 4, 6)})


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_auto_pad(auto_pad):
  node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=auto_pad, strides=[2, 2])
  _check(_model([node], [("x", [1, 3, 7, 8])], ["y"], [("w", _r(4, 3, 3, 3))]), {"x": _r(1, 3, 7, 8)})


def test_batchnorm_folds_into_conv():
  nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], group=2),
           helper.make_node("BatchNormalization", ["c", "s", "o", "m", "v"], ["y"], epsilon=1e-3)]
  inits = [("w", _r(4, 2, 3, 3)), ("b", _r(4)), ("s", _r(4)), ("o", _r(4)), ("m", _r(4)), ("v", np.abs(_r(4)) + 0.5)]
  model = _model(nodes, [("x", [1, 4, 6, 6])], ["y"], inits)
  assert [n.op for n in OnnxModel(model).nodes] == ["Conv"]
  _check(model, {"x": _r(1, 4, 6, 6)})


def test_batchnorm_kept_when_conv_output_is_shared():
  nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("BatchNormalization", ["c", "s", "o", "m", "v"], ["y"]),
           helper.make_node("Add", ["c", "y"], ["z"])]
  inits = [("w", _r(2, 2, 1, 1)), ("s", _r(2)), ("o", _r(2)), ("m", _r(2)), ("v", np.abs(_r(2)) + 0.5)]
  model = _model(nodes, [("x", [1, 2, 3, 3])], ["z"], inits)
  assert [n.op for n in OnnxModel(model).nodes] == ["Conv", "BatchNormalization", "Add"]
  _check(model, {"x": _r(1, 2, 3, 3)})


def test_shape_arithmetic_is_folded():
  """Shape -> Gather -> Concat -> Reshape on constants ends up as one static Reshape (nothing else left to run)."""
  nodes = [helper.make_node("Shape", ["w"], ["s"]), helper.make_node("Gather", ["s", "i"], ["g"], axis=0),
           helper.make_node("Concat", ["g", "minus1"], ["shape"], axis=0), helper.make_node("Reshape", ["x", "shape"], ["y"])]
  graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 4])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                            [numpy_helper.from_array(np.zeros((3, 8), np.float32), "w"),
                             numpy_helper.from_array(np.array([0], np.int64), "i"),
                             numpy_helper.from_array(np.array([-1], np.int64), "minus1")])
  model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)])
  assert [n.op for n in OnnxModel(model).nodes] == ["Reshape"]
  _check(model, {"x": _r(6, 4)})


def test_symbolic_dims_need_shapes():
  node = helper.make_node("Relu", ["x"], ["y"])
  graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
  model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)])
  with pytest.raises(ValueError, match="'x'"): OnnxModel(model)
  with pytest.raises(ValueError, match="'x'"): OnnxModel(model, shapes={"x": (2, 4)})
  m = OnnxModel(model, shapes={"x": (2, 3)})
  assert m.inputs == [("x", (2, 3), np.dtype(np.float32))]
  with pytest.raises(ValueError, match="'x'"): m({"x": np.zeros((1, 3), np.float32)})
  _check(model, {"x": _r(2, 3)}, shapes={"x": (2, 3)})


def test_unsupported_op_is_named():
  node = helper.make_node("DeformConv", ["x", "s"], ["y"], name="dc_1")
  model = _model([node], [("x", [1, 4, 4]), ("s", [1, 1, 4])], ["y"])
  with pytest.raises(NotImplementedError, match="DeformConv.*dc_1.*opset 17"): OnnxModel(model)
