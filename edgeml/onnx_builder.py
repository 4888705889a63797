"""GraphBuilder: ONNX graphs written by hand with onnx.helper (the demo model, the model zoo): nodes and seeded
initializers, named as they are added."""
import numpy as np


class GraphBuilder:
  """Nodes, initializers and seeded weights (normal, gain / sqrt(fan in)), named as they are added."""
  def __init__(self, seed: int):
    from onnx import helper, numpy_helper
    self.helper, self.numpy_helper = helper, numpy_helper
    self.rng, self.nodes, self.inits, self.count = np.random.default_rng(seed), [], [], 0

  def name(self, base: str) -> str:
    self.count += 1
    return f"{base}_{self.count}"

  def const(self, value, base="const", dtype=np.float32) -> str:
    name = self.name(base)
    self.inits.append(self.numpy_helper.from_array(np.asarray(value, dtype), name))
    return name

  def weight(self, shape, fan_in: int, gain: float = 1.0, base="w") -> str:
    return self.const(self.rng.standard_normal(shape) * gain / np.sqrt(fan_in), base)

  def bias(self, n: int, scale: float = 0.05, base="b") -> str:
    return self.const(self.rng.standard_normal(n) * scale, base)

  def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs):
    names = outputs if isinstance(outputs, list) else [self.name(op_type.lower()) for _ in range(outputs)]
    self.nodes.append(self.helper.make_node(op_type, inputs, names, **attrs))
    return names[0] if len(names) == 1 else names

  def conv(self, x: str, cin: int, cout: int, k: int = 1, stride: int = 1, group: int = 1, gain: float = 1.0,
           pad: int | None = None) -> str:
    """Conv with a bias (a folded BatchNorm), padding k // 2 unless given."""
    w = self.weight((cout, cin // group, k, k), cin // group * k * k, gain)
    return self.op("Conv", [x, w, self.bias(cout)], kernel_shape=[k, k], strides=[stride, stride],
                   pads=[k // 2 if pad is None else pad] * 4, group=group)

  def silu(self, x: str) -> str:
    return self.op("Mul", [x, self.op("Sigmoid", [x])])

  def gemm(self, x: str, n_in: int, n_out: int, gain: float = 1.0, out: list[str] | None = None) -> str:
    w = self.weight((n_out, n_in), n_in, gain)
    return self.op("Gemm", [x, w, self.bias(n_out)], out or 1, transB=1)

  def ints(self, values) -> str:
    return self.const(values, "shape", np.int64)
