"""Standard backbones for edgeml-bench (issue 9), built with onnx.helper from seeded random weights, with the layer
structure torchvision's and ultralytics' eval-mode ONNX exports have (torch and torchvision are not needed):

`resnet18`: torchvision's ResNet-18: 7x7/2 conv + ReLU, 3x3/2 MaxPool, four stages of two BasicBlocks (a 1x1/2
  downsample conv where the shape changes), GlobalAveragePool, Flatten, Gemm 512 -> 1000.
`mobilenet_v3_small`: torchvision's MobileNetV3-small config: HardSwish/HardSigmoid ops, depthwise convs (group=C),
  squeeze-excite (GlobalAveragePool, 1x1 conv, ReLU, 1x1 conv, HardSigmoid, Mul), 576 -> 1024 HardSwish -> 1000.
`yolov8n`: ultralytics' YOLOv8n (width 0.25, depth 0.33, 80 classes): Conv = Conv + SiLU (Sigmoid, Mul), C2f blocks
  (Split, Bottlenecks, Concat), SPPF (three 5x5 MaxPools), a top-down/bottom-up neck (Resize nearest x2, Concat) and
  the decoupled Detect head. The DFL and box decode are left out: the output `output0` (1, 144, anchors) is the raw
  head, 64 box-distribution + 80 class logits per anchor, of the three levels (strides 8, 16, 32) concatenated.

BatchNorm is folded into each Conv's bias, as torch's export of an eval model does. Weights are normal with a gain
per layer so activations stay O(1) through the network. Inputs are float32, batch 1: `input` (1, 3, size, size) for
the classifiers (output `logits` (1, 1000)), `images` for the detector. Opset 17, IR version 9.
"""
import numpy as np
from edgeml.onnx_builder import GraphBuilder

OPSET, IR_VERSION = 17, 9
HARDSWISH_GAIN, SILU_GAIN = 1.45, 1.46  # gains before those activations (ReLU: sqrt(2)), so that activations
# stay O(1) through the seed-0 networks (their stds stay within 0.3..1.5); other seeds drift more but stay finite
# MobileNetV3-small: (kernel, expanded, out, squeeze-excite, HardSwish, stride) of each inverted residual block
MNV3_SMALL = [(3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
              (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
              (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
              (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1)]


def _make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision's channel rounding (the squeeze-excite width)."""
  new = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


class _Graph(GraphBuilder):
  """GraphBuilder with He-normal convs (gain sqrt 2) and the model's ONNX framing."""
  def conv(self, *args, gain: float = 2 ** 0.5, **kwargs) -> str:
    return super().conv(*args, gain=gain, **kwargs)

  def model(self, name: str, inputs: list, outputs: list, doc: str):
    """inputs and outputs: (name, shape) pairs, float32."""
    h = self.helper
    info = lambda pairs: [h.make_tensor_value_info(n, h.TensorProto.FLOAT, list(s)) for n, s in pairs]
    graph = h.make_graph(self.nodes, name, info(inputs), info(outputs), self.inits)
    return h.make_model(graph, ir_version=IR_VERSION, opset_imports=[h.make_opsetid("", OPSET)],
                        producer_name="edgeml.model_zoo", doc_string=doc)


def resnet18(size: int = 224, seed: int = 0):
  """torchvision.models.resnet18 (eval mode, BatchNorm folded), input `input` (1, 3, size, size), `logits` (1, 1000)."""
  g = _Graph(seed)
  x = g.op("Relu", [g.conv("input", 3, 64, 7, 2)])
  x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
  cin = 64
  for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
    for block in range(2):
      s = stride if block == 0 else 1
      y = g.conv(g.op("Relu", [g.conv(x, cin, cout, 3, s)]), cout, cout, 3, gain=0.5)  # small: the sums stay O(1)
      identity = g.conv(x, cin, cout, 1, s, gain=1.0, pad=0) if (s, cin) != (1, cout) else x
      x, cin = g.op("Relu", [g.op("Add", [y, identity])]), cout
  x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
  g.gemm(x, 512, 1000, out=["logits"])
  return g.model("resnet18", [("input", (1, 3, size, size))], [("logits", (1, 1000))], resnet18.__doc__)


def mobilenet_v3_small(size: int = 224, seed: int = 0):
  """torchvision.models.mobilenet_v3_small (eval mode, BatchNorm folded, Dropout gone), input `input`
  (1, 3, size, size), `logits` (1, 1000)."""
  g = _Graph(seed)
  x, cin = g.op("HardSwish", [g.conv("input", 3, 16, 3, 2, gain=HARDSWISH_GAIN)]), 16
  for k, expanded, cout, se, hardswish, stride in MNV3_SMALL:
    act = lambda t: g.op("HardSwish" if hardswish else "Relu", [t])
    gain = HARDSWISH_GAIN if hardswish else 2 ** 0.5
    y = act(g.conv(x, cin, expanded, 1, gain=gain)) if expanded != cin else x
    y = act(g.conv(y, expanded, expanded, k, stride, group=expanded, gain=gain))
    if se:
      squeeze = _make_divisible(expanded // 4)
      s = g.op("Relu", [g.conv(g.op("GlobalAveragePool", [y]), expanded, squeeze, 1)])
      s = g.op("HardSigmoid", [g.conv(s, squeeze, expanded, 1, gain=1.0)], alpha=1 / 6, beta=0.5)
      y = g.op("Mul", [y, s])
    y = g.conv(y, expanded, cout, 1, gain=2.0 if se else 1.0)  # squeeze-excite's gate is about 0.5
    x, cin = (g.op("Add", [y, x]) if stride == 1 and cin == cout else y), cout
  x = g.op("HardSwish", [g.conv(x, cin, 6 * cin, 1, gain=HARDSWISH_GAIN)])
  x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
  x = g.op("HardSwish", [g.gemm(x, 6 * cin, 1024, gain=HARDSWISH_GAIN)])
  g.gemm(x, 1024, 1000, out=["logits"])
  return g.model("mobilenet_v3_small", [("input", (1, 3, size, size))], [("logits", (1, 1000))],
                 mobilenet_v3_small.__doc__)


def yolov8n(size: int = 320, seed: int = 0):
  """ultralytics YOLOv8n (eval mode, BatchNorm folded), input `images` (1, 3, size, size) with size a multiple of 32;
  output `output0` (1, 144, anchors): the raw Detect head (64 DFL box bins + 80 class logits per anchor, no DFL, no
  box decode, no Sigmoid) of strides 8, 16 and 32 concatenated, anchors = sum((size / stride) ** 2)."""
  if size % 32: raise ValueError(f"yolov8n: size must be a multiple of 32, got {size}")
  g = _Graph(seed)
  conv = lambda x, cin, cout, k=1, s=1: g.silu(g.conv(x, cin, cout, k, s, gain=SILU_GAIN))

  def c2f(x, cin, cout, n, shortcut):
    c = cout // 2
    y = list(g.op("Split", [conv(x, cin, 2 * c), g.const([c, c], "split", np.int64)], 2, axis=1))
    for _ in range(n):
      t = conv(conv(y[-1], c, c, 3), c, c, 3)
      y.append(g.op("Add", [y[-1], t]) if shortcut else t)
    return conv(g.op("Concat", y, axis=1), (2 + n) * c, cout)

  def sppf(x, cin, cout):
    y = [conv(x, cin, cin // 2)]
    for _ in range(3): y.append(g.op("MaxPool", [y[-1]], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2]))
    return conv(g.op("Concat", y, axis=1), cin // 2 * 4, cout)

  up = lambda x: g.op("Resize", [x, "", g.const([1, 1, 2, 2], "scales")], mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")
  cat = lambda *xs: g.op("Concat", list(xs), axis=1)
  x = conv(conv("images", 3, 16, 3, 2), 16, 32, 3, 2)
  x = c2f(x, 32, 32, 1, True)
  p3 = c2f(conv(x, 32, 64, 3, 2), 64, 64, 2, True)
  p4 = c2f(conv(p3, 64, 128, 3, 2), 128, 128, 2, True)
  p5 = sppf(c2f(conv(p4, 128, 256, 3, 2), 256, 256, 1, True), 256, 256)
  n4 = c2f(cat(up(p5), p4), 384, 128, 1, False)
  o3 = c2f(cat(up(n4), p3), 192, 64, 1, False)
  o4 = c2f(cat(conv(o3, 64, 64, 3, 2), n4), 192, 128, 1, False)
  o5 = c2f(cat(conv(o4, 128, 128, 3, 2), p5), 384, 256, 1, False)
  heads = []
  for x, ch in ((o3, 64), (o4, 128), (o5, 256)):
    box = g.conv(conv(conv(x, ch, 64, 3), 64, 64, 3), 64, 64, 1, gain=1.0)
    cls = g.conv(conv(conv(x, ch, 80, 3), 80, 80, 3), 80, 80, 1, gain=1.0)
    heads.append(g.op("Reshape", [cat(box, cls), g.const([1, 144, -1], "shape", np.int64)]))
  g.op("Concat", heads, ["output0"], axis=2)
  anchors = sum((size // s) ** 2 for s in (8, 16, 32))
  return g.model("yolov8n", [("images", (1, 3, size, size))], [("output0", (1, 144, anchors))], yolov8n.__doc__)


ZOO = {"resnet18": resnet18, "mobilenet_v3_small": mobilenet_v3_small, "yolov8n": yolov8n}


def write(name: str, path: str, **params) -> str:
  """Build ZOO[name](**params) and save it to `path`; returns the path."""
  import onnx
  if name not in ZOO: raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
  onnx.save(ZOO[name](**params), path)
  return path
