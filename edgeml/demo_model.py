"""The project's own driving models, built with onnx.helper from seeded weights (the same bytes on every run):

`build`: the demo model, shaped like a supercombo-style driving network (the structure of ../shared's mini_drive):
  inputs  `input_imgs` (1, 12, H, W): two stacked YUV6 frames, 0..255; `desire` (1, 8); `state` (1, hidden)
  trunk   x / 128 - 1, a 3x3 stride-2 conv stem with SiLU, then seven EfficientNet-lite blocks (1x1 expand + SiLU,
          3x3 depthwise + SiLU, squeeze-excite, 1x1 project, residual Add where the shape allows), a 1x1 head + ReLU
  head    Flatten, Concat desire, Gemm + Elu, a GRU step (linear_before_reset) from `state`, then
  outputs `plan` (1, 2480): 5 hypotheses x 495 values and a Softmax over the 5 hypothesis weights
          `lane_lines` (1, 264): 4 lines x 33 points x (mean, exp(clip(log std, max 5)))
          `lead` (1, 18): Sigmoid;  `state_out` (1, hidden): the recurrent state a daemon feeds back as `state`
`build_small`: a one-conv, GRU-like cell model with the same inputs and `plan` (1, 32) / `state_out`, for tests that
need a model compiled in about a second.

`CONFIG` is the modeld config (compiled/modelconfig.py) both models use; `cache_key` names a build, so a caller can
reuse what it built while VERSION and the parameters are unchanged. onnx is imported only when a model is built.
"""
import hashlib
import json

import numpy as np
from edgeml.onnx_builder import GraphBuilder

VERSION = 1  # bump whenever `build` changes what it writes
DESIRE, PLAN_HYPOTHESES, PLAN_WIDTH, LANES, LANE_POINTS, LEAD = 8, 5, 496, 4, 33, 18
# (expanded channels, output channels, stride) of each block; the stem gives 24 channels at half resolution
BLOCKS = [(96, 24, 1), (96, 32, 2), (128, 48, 2), (192, 64, 2), (256, 64, 1), (256, 96, 2), (384, 128, 2)]
STEM, HEAD, SE_RATIO = 24, 32, 4
GAIN, PROJECT_GAIN = 1.5, 2.0  # weights are normal(0, gain / sqrt(fan in)): activations keep their scale
DOWNSCALE = 64  # input pixels per head cell along each axis

CONFIG = {"inputs": {"input_imgs": {"source": "road", "layout": "yuv6", "frames": 2},
                     "desire": {"source": "zeros"},
                     "state": {"recurrent": "state_out"}},
          "requires_calibration": False}


def cache_key(**params) -> str:
  """A short name for (VERSION, parameters): equal keys mean byte-identical models."""
  text = json.dumps({"version": VERSION, **params}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def _block(g: GraphBuilder, x: str, cin: int, expand: int, cout: int, stride: int) -> str:
  h = g.silu(g.conv(x, cin, expand, gain=GAIN))
  h = g.silu(g.conv(h, expand, expand, 3, stride, group=expand, gain=GAIN))
  squeezed = g.op("ReduceMean", [h], axes=[2, 3], keepdims=1)
  s = g.silu(g.conv(squeezed, expand, expand // SE_RATIO))
  h = g.op("Mul", [h, g.op("Sigmoid", [g.conv(s, expand // SE_RATIO, expand)])])
  y = g.conv(h, expand, cout, gain=PROJECT_GAIN)
  return g.op("Add", [x, y]) if stride == 1 and cin == cout else y


def model(height: int = 128, width: int = 256, hidden: int = 256, seed: int = 0):
  """The demo model as an onnx ModelProto; `height` and `width` are multiples of 64 (the input is half the warped
  camera image of twice that size)."""
  import onnx
  from onnx import TensorProto
  if height % DOWNSCALE or width % DOWNSCALE or height <= 0 or width <= 0:
    raise ValueError(f"the demo model's height and width must be positive multiples of {DOWNSCALE}, "
                     f"not {height}x{width}")
  g = GraphBuilder(seed)
  x = g.op("Sub", [g.op("Div", ["input_imgs", g.const(128.0)]), g.const(1.0)])
  x, channels = g.silu(g.conv(x, 12, STEM, 3, 2, gain=GAIN)), STEM
  for expand, cout, stride in BLOCKS:
    x, channels = _block(g, x, channels, expand, cout, stride), cout
  x = g.op("Relu", [g.conv(x, channels, HEAD, gain=GAIN)])
  features = HEAD * (height // DOWNSCALE) * (width // DOWNSCALE)
  x = g.op("Concat", [g.op("Flatten", [x], axis=1), "desire"], axis=1)
  x = g.op("Elu", [g.gemm(x, features + DESIRE, hidden, gain=GAIN)], alpha=1.0)
  scale = GAIN / np.sqrt(hidden)
  gru_w = g.const(g.rng.standard_normal((1, 3 * hidden, hidden)) * scale)
  gru_r = g.const(g.rng.standard_normal((1, 3 * hidden, hidden)) * scale)
  gru_b = g.const(g.rng.standard_normal((1, 6 * hidden)) * 0.05)
  sequence, initial = g.op("Unsqueeze", [x, g.ints([0])]), g.op("Unsqueeze", ["state", g.ints([0])])
  _, h = g.op("GRU", [sequence, gru_w, gru_r, gru_b, "", initial], 2, hidden_size=hidden, linear_before_reset=1)
  state = g.op("Squeeze", [h, g.ints([0])], ["state_out"])
  plan = g.gemm(state, hidden, PLAN_HYPOTHESES * PLAN_WIDTH)
  plan = g.op("Reshape", [plan, g.ints([1, PLAN_HYPOTHESES, PLAN_WIDTH])])
  axis2, one = g.ints([2]), g.ints([1])
  values = g.op("Slice", [plan, g.ints([0]), g.ints([-1]), axis2, one])
  weights = g.op("Softmax", [g.op("Slice", [plan, g.ints([-1]), g.ints([np.iinfo(np.int64).max]), axis2, one])], axis=1)
  g.op("Reshape", [g.op("Concat", [values, weights], axis=2), g.ints([1, -1])], ["plan"])
  lanes = g.op("Reshape", [g.gemm(state, hidden, LANES * LANE_POINTS * 2), g.ints([1, LANES, LANE_POINTS, 2])])
  axis3 = g.ints([3])
  mean = g.op("Slice", [lanes, g.ints([0]), one, axis3, one])
  log_std = g.op("Slice", [lanes, one, g.ints([np.iinfo(np.int64).max]), axis3, one])
  std = g.op("Exp", [g.op("Clip", [log_std, "", g.const(5.0)])])
  g.op("Reshape", [g.op("Concat", [mean, std], axis=3), g.ints([1, -1])], ["lane_lines"])
  g.op("Sigmoid", [g.gemm(state, hidden, LEAD)], ["lead"])
  io = lambda name, *shape: g.helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, *shape])
  graph = g.helper.make_graph(g.nodes, "demo_drive",
                              [io("input_imgs", 12, height, width), io("desire", DESIRE), io("state", hidden)],
                              [io("plan", PLAN_HYPOTHESES * (PLAN_WIDTH - 1) + PLAN_HYPOTHESES),
                               io("lane_lines", LANES * LANE_POINTS * 2), io("lead", LEAD), io("state_out", hidden)],
                              g.inits)
  proto = g.helper.make_model(graph, ir_version=9, opset_imports=[g.helper.make_opsetid("", 17)],
                              producer_name="edgeml.demo_model", producer_version=str(VERSION))
  onnx.checker.check_model(proto)
  return proto


def build(path: str, height: int = 128, width: int = 256, hidden: int = 256, seed: int = 0) -> None:
  """Write the demo model to `path` (the same bytes for the same arguments and VERSION)."""
  import onnx
  onnx.save(model(height, width, hidden, seed), str(path))


def build_small(path: str, height: int = 32, width: int = 64, hidden: int = 16, seed: int = 0) -> None:
  """A small model with the demo's inputs, for quick tests; `height` and `width` are multiples of 4:
      f = relu(conv4x4/4(input_imgs / 255)),  a = [flatten(f), desire, state]
      z = sigmoid(a Wz + bz),  c = tanh(a Wc + bc),  state_out = (1 - z) * state + z * c,  plan = state_out Wp + bp
  Outputs `plan` (1, 32) and `state_out` (1, hidden)."""
  import onnx
  from onnx import TensorProto, helper, numpy_helper
  rng, conv_out, stride, plan = np.random.default_rng(seed), 4, 4, 32
  features = conv_out * (height // stride) * (width // stride) + DESIRE + hidden

  def weight(name, *shape, scale=1.0):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale / np.sqrt(shape[0])).astype(np.float32), name)

  inits = [numpy_helper.from_array(np.array(1 / 255, np.float32), "inv255"),
           numpy_helper.from_array(np.array(1, np.float32), "one"),
           weight("conv_w", conv_out, 12, stride, stride, scale=0.5), weight("conv_b", conv_out, scale=0.1),
           weight("wz", features, hidden, scale=2.0), weight("bz", hidden, scale=0.1),
           weight("wc", features, hidden, scale=2.0), weight("bc", hidden, scale=0.1),
           weight("wp", hidden, plan), weight("bp", plan, scale=0.1)]
  node = helper.make_node
  nodes = [node("Mul", ["input_imgs", "inv255"], ["x"]),
           node("Conv", ["x", "conv_w", "conv_b"], ["conv"], strides=[stride, stride]),
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
                            [io("plan", plan), io("state_out", hidden)], inits)
  proto = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)])
  onnx.checker.check_model(proto)
  onnx.save(proto, str(path))
