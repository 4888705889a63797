"""A small driving-model-shaped ONNX network built with onnx.helper: the demo's fallback when the shared mini_drive
model is absent, and the model of the daemon tests.

Inputs as mini_drive: `input_imgs` (1, 12, H, W) two stacked YUV6 frames (0..255), `desire` (1, 8), `state`
(1, hidden). A strided conv reads the image, a GRU-like cell updates the state:
    f = relu(conv(input_imgs / 255)),  a = [flatten(f), desire, state]
    z = sigmoid(a Wz + bz),  c = tanh(a Wc + bc),  state_out = (1 - z) * state + z * c,  plan = state_out Wp + bp
Outputs `plan` (1, 32) and `state_out` (1, hidden), the recurrent state a daemon feeds back as `state`.
"""
import numpy as np

DESIRE, PLAN, CONV_OUT, STRIDE = 8, 32, 4, 4

CONFIG = {"inputs": {"input_imgs": {"source": "road", "layout": "yuv6", "frames": 2},
                     "desire": {"source": "zeros"},
                     "state": {"recurrent": "state_out"}},
          "requires_calibration": False}


def build(path: str, height: int = 32, width: int = 64, hidden: int = 16, seed: int = 0) -> None:
  """Write the model to `path`; `height` and `width` (multiples of 4) are the input's, half the warped image's."""
  import onnx
  from onnx import TensorProto, helper, numpy_helper
  rng = np.random.default_rng(seed)
  features = CONV_OUT * (height // STRIDE) * (width // STRIDE) + DESIRE + hidden

  def weight(name, *shape, scale=1.0):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale / np.sqrt(shape[0])).astype(np.float32), name)

  inits = [numpy_helper.from_array(np.array(1 / 255, np.float32), "inv255"),
           numpy_helper.from_array(np.array(1, np.float32), "one"),
           weight("conv_w", CONV_OUT, 12, STRIDE, STRIDE, scale=0.5), weight("conv_b", CONV_OUT, scale=0.1),
           weight("wz", features, hidden, scale=2.0), weight("bz", hidden, scale=0.1),
           weight("wc", features, hidden, scale=2.0), weight("bc", hidden, scale=0.1),
           weight("wp", hidden, PLAN), weight("bp", PLAN, scale=0.1)]
  node = helper.make_node
  nodes = [node("Mul", ["input_imgs", "inv255"], ["x"]),
           node("Conv", ["x", "conv_w", "conv_b"], ["conv"], strides=[STRIDE, STRIDE]),
           node("Relu", ["conv"], ["f"]), node("Flatten", ["f"], ["flat"]),
           node("Concat", ["flat", "desire", "state"], ["a"], axis=1),
           node("Gemm", ["a", "wz", "bz"], ["zl"]), node("Sigmoid", ["zl"], ["z"]),
           node("Gemm", ["a", "wc", "bc"], ["cl"]), node("Tanh", ["cl"], ["c"]),
           node("Sub", ["one", "z"], ["keep"]), node("Mul", ["keep", "state"], ["old"]),
           node("Mul", ["z", "c"], ["new"]), node("Add", ["old", "new"], ["state_out"]),
           node("Gemm", ["state_out", "wp", "bp"], ["plan"])]
  io = lambda name, *shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, *shape])
  graph = helper.make_graph(nodes, "drive_model",
                            [io("input_imgs", 12, height, width), io("desire", DESIRE), io("state", hidden)],
                            [io("plan", PLAN), io("state_out", hidden)], inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
  onnx.checker.check_model(model)
  onnx.save(model, path)
