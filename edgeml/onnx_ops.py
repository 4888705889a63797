"""ONNX op implementations for edgeml/onnx.py: OPS maps an op type to a short function of one `Call`.

A value is a numpy array while it is constant and a Tensor once it depends on a graph input. `Call.arrays()` hands an
op its inputs all as numpy (then the op folds with numpy) or all as Tensors; `Call.static(i)` always gives numpy
(shapes, axes, pads: reading a Tensor there realizes it, which only happens for data-dependent arguments);
`Call.tensor(i)` always gives a Tensor, and during import-time folding it refuses, leaving the node for run time.
"""
from __future__ import annotations
import math
import operator
from functools import reduce
import numpy as np
import onnx
from onnx import helper, numpy_helper
from edgeml.tensor import Tensor

OPS: dict = {}


class NotFoldable(Exception):
  """Raised while folding constants when an op needs device Tensors."""


def op(*names):
  def register(fn):
    for name in names: OPS[name] = fn
    return fn
  return register


def onnx_dtype(elem_type: int) -> np.dtype:
  return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def attribute_value(a):
  v = helper.get_attribute_value(a)
  if isinstance(v, bytes): return v.decode()
  if isinstance(v, onnx.TensorProto): return numpy_helper.to_array(v)
  if isinstance(v, list): return [x.decode() if isinstance(x, bytes) else x for x in v]
  return v


def is_tensor(x) -> bool: return isinstance(x, Tensor)


def as_tensor(x) -> Tensor | None:
  if x is None or isinstance(x, Tensor): return x
  return Tensor(np.require(x, requirements='C'))


class Call:
  """One node being run: its inputs, attributes, opset and how many outputs it names."""

  def __init__(self, op_type, name, inputs, attrs, opset, n_out, fold=False):
    self.op, self.name, self.inputs, self.attrs, self.opset, self.n_out, self.fold = \
      op_type, name, inputs, attrs, opset, n_out, fold

  def has(self, i) -> bool: return i < len(self.inputs) and self.inputs[i] is not None
  def get(self, key, default=None): return self.attrs.get(key, default)

  def tensor(self, i) -> Tensor | None:
    if not self.has(i): return None
    if self.fold and not is_tensor(self.inputs[i]): raise NotFoldable(self.op)
    return as_tensor(self.inputs[i])

  def static(self, i, default=None):
    if not self.has(i): return default
    x = self.inputs[i]
    return x.numpy() if is_tensor(x) else np.asarray(x)

  def ints(self, i, attr=None, default=None):
    """An int list read from input i when present, else from attribute `attr`."""
    if self.has(i): return [int(v) for v in self.static(i).reshape(-1)]
    return list(self.get(attr, default)) if attr and self.get(attr, default) is not None else default

  def arrays(self, numpy_ok=True) -> list:
    xs = [x for x in self.inputs if x is not None]
    if any(is_tensor(x) for x in xs) or not numpy_ok:
      if self.fold: raise NotFoldable(self.op)
      return [as_tensor(x) for x in xs]
    return [np.asarray(x) for x in xs]


def axis_of(axis, ndim) -> int:
  if not -max(ndim, 1) <= axis < max(ndim, 1): raise ValueError(f"axis {axis} out of range for rank {ndim}")
  return axis % max(ndim, 1)


# ---------------------------------------------------------------- generic helpers (numpy or Tensor)
def cast(x, dtype):
  return x.cast(dtype) if is_tensor(x) else np.asarray(x).astype(dtype)


def cat(xs, axis):
  return Tensor.cat(*xs, axis=axis) if is_tensor(xs[0]) else np.concatenate(xs, axis)


def permute(x, perm):
  return x.permute(perm) if is_tensor(x) else np.transpose(x, perm)


def where(c, a, b):
  return c.where(a, b) if is_tensor(c) else np.where(c, a, b)


def take(x, idx, axis):
  """x's entries along `axis` at integer positions idx (negatives wrap); idx numpy or Tensor."""
  n = x.shape[axis]
  if not is_tensor(x) and not is_tensor(idx): return np.take(x, np.where(idx < 0, idx + n, idx), axis)
  if not is_tensor(idx):
    idx = np.where(idx < 0, idx + n, idx)
    if idx.size <= 8:   # a few slices beat a one-hot compare
      parts = [x.shrink([(int(i), int(i) + 1) if a == axis else (0, s) for a, s in enumerate(x.shape)]) for i in idx.reshape(-1)]
      out = Tensor.cat(*parts, axis=axis) if parts else None
      if out is not None: return out.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])
  idx = as_tensor(idx)
  idx = (idx < 0).where(idx + n, idx)
  x = as_tensor(x)
  rest = x.ndim - axis - 1
  hot = idx.reshape(*[1] * axis, *idx.shape, *[1] * rest, 1).eq(Tensor.arange(n).cast(idx.dtype))
  data = x.permute([a for a in range(x.ndim) if a != axis] + [axis])
  data = data.reshape(*x.shape[:axis], *[1] * idx.ndim, *x.shape[axis + 1:], n)
  return select_sum(hot, data)


def select_sum(hot: Tensor, data: Tensor) -> Tensor:
  """sum(where(hot, data, 0)) over the last axis, keeping data's dtype."""
  picked = hot.where(data, Tensor.full((), 0, data.dtype))
  return picked.sum(-1).cast(data.dtype)


# ---------------------------------------------------------------- elementwise
def _int_div(a, b):
  """Integer division truncating toward zero, 0 for a zero divisor, INT_MIN / -1 wrapping (as Tensor.idiv)."""
  if is_tensor(a): return a.idiv(b)
  with np.errstate(all="ignore"): q, r = np.floor_divide(a, b), np.remainder(a, b)   # np.abs(INT_MIN) would overflow
  return (q + ((r != 0) & ((a < 0) != (b < 0)))).astype(np.result_type(a, b))


BINARY = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul,
          "Equal": operator.eq, "Less": operator.lt, "Greater": operator.gt, "LessOrEqual": operator.le,
          "GreaterOrEqual": operator.ge, "And": operator.and_, "Or": operator.or_, "Xor": operator.xor,
          "BitwiseAnd": operator.and_, "BitwiseOr": operator.or_, "BitwiseXor": operator.xor}
for _name, _fn in BINARY.items(): OPS[_name] = lambda n, fn=_fn: fn(*n.arrays())


@op("Div")
def div(n):
  a, b = n.arrays()
  return a / b if np.dtype(a.dtype).kind == "f" else _int_div(a, b)


@op("Mod")
def mod(n):
  a, b = n.arrays()
  if is_tensor(a): return a.fmod(b) if n.get("fmod", 0) else a % b
  with np.errstate(all="ignore"): return np.fmod(a, b) if n.get("fmod", 0) else a % b   # a zero int divisor gives 0


@op("Pow")
def pow_(n):
  if is_tensor(n.inputs[0]) and not is_tensor(n.inputs[1]) and n.inputs[0].dtype.kind == "f":
    a, b = n.inputs[0], np.asarray(n.inputs[1])
    if b.size and np.all(b == b.reshape(-1)[0]):
      shape = np.broadcast_shapes(a.shape, b.shape)
      return pow_const(a, float(b.reshape(-1)[0])).expand_to(shape)
  a, b = n.arrays()
  return cast(a.pow(b) if is_tensor(a) else np.power(a.astype(np.float64), b), a.dtype)


def _int_power(x: Tensor, k: int) -> Tensor:
  """x**k for an integer k >= 1 by repeated squaring (k=5: x2=x*x, x4=x2*x2, x4*x)."""
  out, square = None, x
  while k:
    if k & 1: out = square if out is None else out * square
    k >>= 1
    if k: square = square * square
  return out


def pow_const(x: Tensor, y: float) -> Tensor:
  """x**y for a float Tensor x and an exponent known at compile time, without a generic pow(): 2 -> x*x,
  0.5 -> sqrt, small integers -> multiplications, otherwise exp(y*log|x|) with numpy's sign rules (a negative base
  gives a signed result for an integral exponent and NaN otherwise)."""
  if not math.isfinite(y): return x.pow(y)
  if y == 0: return Tensor.full(x.shape, 1, x.dtype)
  if y == 1: return x
  if y == 0.5: return x.sqrt().cast(x.dtype)
  if y == -0.5: return x.sqrt().reciprocal().cast(x.dtype)
  if y == int(y) and abs(y) <= 16:
    p = _int_power(x, abs(int(y)))
    return p if y > 0 else p.reciprocal().cast(x.dtype)
  magnitude = (x.abs().log() * y).exp().cast(x.dtype)
  negative = x < 0
  if y != int(y): return negative.where(Tensor.full((), math.nan, x.dtype), magnitude)
  return negative.where(-magnitude, magnitude) if int(y) % 2 else magnitude


@op("BitShift")
def bitshift(n):
  """Exact integer shifts (Tensor.lshift/rshift); amounts of the bit width or more give 0, as in numpy (ONNX and C
  leave them undefined)."""
  x, y = n.arrays()
  left = n.get("direction") == "LEFT"
  if is_tensor(x): return x.lshift(y) if left else x.rshift(y)
  bits, y = x.dtype.itemsize * 8, y.astype(x.dtype)
  shifted = (np.left_shift if left else np.right_shift)(x, np.minimum(y, bits - 1))
  return np.where(y < bits, shifted, 0).astype(x.dtype)


@op("Sum", "Mean", "Max", "Min")
def variadic(n):
  xs = n.arrays()
  if is_tensor(xs[0]): fn = {"Sum": operator.add, "Mean": operator.add, "Max": Tensor.maximum, "Min": Tensor.minimum}[n.op]
  else: fn = {"Sum": np.add, "Mean": np.add, "Max": np.maximum, "Min": np.minimum}[n.op]
  out = reduce(fn, xs)
  return cast(out / len(xs), xs[0].dtype) if n.op == "Mean" else out


# Tensor versions of unary ops; NUMPY_UNARY lets constant inputs fold.
UNARY = {"Abs": Tensor.abs, "Neg": Tensor.neg, "Exp": Tensor.exp, "Log": Tensor.log, "Sqrt": Tensor.sqrt,
         "Reciprocal": Tensor.reciprocal, "Floor": Tensor.floor, "Ceil": Tensor.ceil, "Round": Tensor.round,
         "Sign": Tensor.sign, "Sin": Tensor.sin, "Cos": Tensor.cos, "Tan": Tensor.tan, "Sigmoid": Tensor.sigmoid,
         "Tanh": Tensor.tanh, "Relu": Tensor.relu, "Erf": Tensor.erf, "Not": Tensor.logical_not,
         "BitwiseNot": lambda x: x ^ Tensor.full((), -1, x.dtype) if x.dtype.kind == "i" else
         x ^ Tensor.full((), np.iinfo(x.dtype).max, x.dtype),
         "Identity": lambda x: x, "Softsign": lambda x: x / (x.abs() + 1),
         "Softplus": lambda x: (x.exp() + 1).log() if x.dtype.itemsize > 4 else x.softplus(),
         "Sinh": lambda x: (x.exp() - (-x).exp()) * 0.5, "Cosh": lambda x: (x.exp() + (-x).exp()) * 0.5,
         "Asinh": lambda x: (x + (x * x + 1).sqrt()).log(), "Acosh": lambda x: (x + (x * x - 1).sqrt()).log(),
         "Atanh": lambda x: ((1 + x) / (1 - x)).log() * 0.5, "IsNaN": lambda x: x.ne(x),
         "HardSwish": Tensor.hardswish, "Mish": lambda x: x * x.softplus().tanh()}
NUMPY_UNARY = {"Abs": np.abs, "Neg": np.negative, "Exp": np.exp, "Log": np.log, "Sqrt": np.sqrt, "Floor": np.floor,
               "Ceil": np.ceil, "Sign": np.sign, "Not": np.logical_not, "Identity": lambda x: x, "Relu": lambda x: np.maximum(x, 0),
               "Reciprocal": lambda x: (1 / x).astype(x.dtype), "Round": np.round}
for _name in UNARY:
  OPS[_name] = lambda n, name=_name: (NUMPY_UNARY[name](*n.arrays()) if name in NUMPY_UNARY and not is_tensor(n.inputs[0])
                                      else cast(UNARY[name](n.tensor(0)), n.inputs[0].dtype))
OPS["IsNaN"] = lambda n: n.tensor(0).ne(n.tensor(0))


@op("IsInf")
def isinf(n):
  x = n.tensor(0)
  pos, neg = x.eq(math.inf), x.eq(-math.inf)
  if not n.get("detect_negative", 1): return pos
  return neg if not n.get("detect_positive", 1) else pos.logical_or(neg)


@op("Cast")
def cast_op(n, dtype=None):
  """Float to int truncates; out of range saturates and NaN gives 0, on the device (Tensor.cast) and when folded
  (numpy's own result there is platform-specific)."""
  x, dtype = n.arrays()[0], np.dtype(dtype or onnx_dtype(n.get("to")))
  if is_tensor(x) or x.dtype.kind != "f" or dtype.kind not in "iu": return cast(x, dtype)
  info, x = np.iinfo(dtype), np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=np.inf, neginf=-np.inf)
  high, low = x >= float(info.max), x <= float(info.min)
  return np.where(high, info.max, np.where(low, info.min, np.trunc(np.where(high | low, 0, x)).astype(dtype))).astype(dtype)


@op("CastLike")
def castlike(n): return cast_op(n, n.inputs[1].dtype)


@op("Where")
def where_op(n): return where(*n.arrays())


@op("Clip")
def clip(n):
  x = n.arrays()[0]
  lo = n.inputs[1] if n.has(1) else n.get("min")
  hi = n.inputs[2] if n.has(2) else n.get("max")
  if not is_tensor(x): return np.clip(x, lo, hi).astype(x.dtype)
  lo, hi = (v if v is None or is_tensor(v) else np.asarray(v, x.dtype).item() for v in (lo, hi))
  return x.clip(lo, hi)


# ---------------------------------------------------------------- activations
def _act(fn):
  return lambda n: fn(n.tensor(0), n)


OPS.update({
  "LeakyRelu": _act(lambda x, n: x.leaky_relu(n.get("alpha", 0.01))),
  "Elu": _act(lambda x, n: x.elu(n.get("alpha", 1.0))),
  "Selu": _act(lambda x, n: x.selu(n.get("alpha", 1.67326319217681884765625), n.get("gamma", 1.05070102214813232421875))),
  "Celu": _act(lambda x, n: x.maximum(0) + ((x / n.get("alpha", 1.0)).exp() - 1).minimum(0) * n.get("alpha", 1.0)),
  "ThresholdedRelu": _act(lambda x, n: (x > n.get("alpha", 1.0)).where(x, 0.0)),
  "HardSigmoid": _act(lambda x, n: x.hardsigmoid(n.get("alpha", 0.2), n.get("beta", 0.5))),
  "Gelu": _act(lambda x, n: x.gelu(n.get("approximate", "none"))),
  "Shrink": _act(lambda x, n: (x < -n.get("lambd", 0.5)).where(x + n.get("bias", 0.0),
                                                               (x > n.get("lambd", 0.5)).where(x - n.get("bias", 0.0), 0.0))),
  "Swish": _act(lambda x, n: x * (x * n.get("alpha", 1.0)).sigmoid()),
  "PRelu": lambda n: (n.tensor(0) < 0).where(n.tensor(0) * n.tensor(1), n.tensor(0)),
})


def _flat2d(n, x, fn):
  """Softmax-like ops: one axis from opset 13, before that the input flattened to 2-d at `axis`."""
  if n.opset >= 13: return fn(x, axis_of(n.get("axis", -1), x.ndim))
  axis = axis_of(n.get("axis", 1), x.ndim)
  return fn(x.reshape(math.prod(x.shape[:axis]), -1), 1).reshape(x.shape)


def hardmax(x, axis):
  return x.argmax(axis, keepdim=True).eq(Tensor.arange(x.shape[axis]).reshape([-1 if a == axis else 1 for a in range(x.ndim)])).cast(x.dtype)


OPS["Softmax"] = lambda n: _flat2d(n, n.tensor(0), Tensor.softmax)
OPS["LogSoftmax"] = lambda n: _flat2d(n, n.tensor(0), Tensor.log_softmax)
OPS["Hardmax"] = lambda n: _flat2d(n, n.tensor(0), hardmax)


# ---------------------------------------------------------------- shapes and constants
@op("Constant")
def constant(n):
  for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
    if key in n.attrs:
      v = n.attrs[key]
      return np.asarray(v, np.float32 if "float" in key else np.int64 if "int" in key else None)
  raise NotImplementedError(f"Constant with attributes {list(n.attrs)}")


@op("Shape")
def shape(n):
  return np.array(n.inputs[0].shape[n.get("start", 0):n.get("end", None)], np.int64)


@op("Size")
def size(n): return np.array(math.prod(n.inputs[0].shape), np.int64)


@op("ConstantOfShape")
def constant_of_shape(n):
  value = n.get("value", np.zeros(1, np.float32)).reshape(-1)
  shape = tuple(n.ints(0))
  return Tensor.full(shape, value[0].item(), value.dtype) if not n.fold and math.prod(shape) > 4096 else \
    np.full(shape, value[0], value.dtype)


@op("Range")
def range_(n):
  start, limit, delta = (n.static(i).reshape(-1)[0] if n.static(i).size == 1 else n.static(i) for i in range(3))
  count = max(int(math.ceil((limit - start) / delta)), 0)
  return (start + np.arange(count) * delta).astype(start.dtype)


@op("EyeLike")
def eyelike(n):
  shape = n.inputs[0].shape
  dtype = onnx_dtype(n.get("dtype")) if n.get("dtype") is not None else n.inputs[0].dtype
  return np.eye(shape[0], shape[1], k=n.get("k", 0), dtype=dtype)


@op("Reshape")
def reshape(n):
  x, target = n.arrays()[0], n.ints(1, "shape")
  if not n.get("allowzero", 0): target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
  return x.reshape(target)


@op("Flatten")
def flatten(n):
  x = n.arrays()[0]
  axis = n.get("axis", 1) + (x.ndim if n.get("axis", 1) < 0 else 0)
  return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@op("Squeeze")
def squeeze(n):
  x = n.arrays()[0]
  axes = n.ints(1, "axes")
  axes = [axis_of(a, x.ndim) for a in axes] if axes is not None else [i for i, s in enumerate(x.shape) if s == 1]
  return x.reshape([s for i, s in enumerate(x.shape) if i not in axes])


@op("Unsqueeze")
def unsqueeze(n):
  x = n.arrays()[0]
  out_rank = x.ndim + len(n.ints(1, "axes"))
  axes = sorted(axis_of(a, out_rank) for a in n.ints(1, "axes"))
  shape = list(x.shape)
  for a in axes: shape.insert(a, 1)
  return x.reshape(shape)


@op("Transpose")
def transpose(n):
  x = n.arrays()[0]
  return permute(x, n.get("perm", list(range(x.ndim))[::-1]))


@op("Concat")
def concat(n):
  xs = n.arrays()
  return cat(xs, axis_of(n.get("axis"), xs[0].ndim))


@op("Split")
def split(n):
  x = n.arrays()[0]
  axis = axis_of(n.get("axis", 0), x.ndim)
  sizes, dim = n.ints(1, "split"), x.shape[axis]
  if sizes is None:
    parts = n.get("num_outputs", n.n_out)
    step = -(-dim // parts)
    sizes = [min(step, dim - i * step) for i in range(parts)]
  bounds = np.cumsum([0] + list(sizes))
  return [x[(slice(None),) * axis + (slice(int(a), int(b)),)] for a, b in zip(bounds[:-1], bounds[1:])]


@op("Slice")
def slice_(n):
  x = n.arrays()[0]
  starts, ends = n.ints(1, "starts"), n.ints(2, "ends")
  axes = n.ints(3, "axes", list(range(len(starts))))
  steps = n.ints(4, None, [1] * len(starts))
  index = [slice(None)] * x.ndim
  for s, e, a, st in zip(starts, ends, axes, steps):
    dim = x.shape[axis_of(a, x.ndim)]
    s, e = s + dim if s < 0 else s, e + dim if e < 0 else e
    if st > 0: s, e = min(max(s, 0), dim), min(max(e, 0), dim)
    else: s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
    index[axis_of(a, x.ndim)] = slice(s, e if e >= 0 else None, st)
  return x[tuple(index)]


@op("Gather")
def gather(n):
  x, idx = n.inputs[0], n.inputs[1]
  if is_tensor(x) or is_tensor(idx):
    if n.fold: raise NotFoldable(n.op)
    x = as_tensor(x)
  return take(x, idx, axis_of(n.get("axis", 0), x.ndim))


@op("GatherElements")
def gather_elements(n):
  x, idx = n.tensor(0), n.tensor(1)
  axis, dim = axis_of(n.get("axis", 0), x.ndim), x.shape[axis_of(n.get("axis", 0), x.ndim)]
  idx = (idx < 0).where(idx + dim, idx)
  hot = idx.unsqueeze(-1).eq(Tensor.arange(dim).cast(idx.dtype))
  data = x.permute([a for a in range(x.ndim) if a != axis] + [axis]).unsqueeze(axis)
  data = data.shrink([(0, s) for s in idx.shape] + [(0, dim)])
  return select_sum(hot, data.expand_to(idx.shape + (dim,)))


@op("GatherND")
def gather_nd(n):
  x, idx = n.tensor(0), (n.tensor(1) if is_tensor(n.inputs[1]) else n.static(1))
  b = n.get("batch_dims", 0)
  m = idx.shape[-1]
  lead, inner, rest = x.shape[:b], x.shape[b:b + m], x.shape[b + m:]
  if is_tensor(idx):   # indices known only at run time: the flat position as a Tensor, then a one-hot take
    idx = idx.cast(np.int64)
    flat = None
    for i in range(m):
      part = idx[..., i]
      part = ((part < 0).where(part + inner[i], part)) * math.prod(inner[i + 1:])
      flat = part if flat is None else flat + part
    data = x.reshape(math.prod(lead), math.prod(inner), *rest)
    flat = flat.reshape(math.prod(lead), -1)
    out = Tensor.stack([take(data[i], flat[i], 0) for i in range(flat.shape[0])], 0)
    return out.reshape(*idx.shape[:-1], *rest)
  idx = np.where(idx < 0, idx + np.array(inner), idx)
  flat = (idx * np.array([math.prod(inner[i + 1:]) for i in range(m)])).sum(-1)   # (*lead, *mid)
  data = x.reshape(math.prod(lead), math.prod(inner), *rest)
  flat = flat.reshape(math.prod(lead), -1)
  out = Tensor.stack([take(data[i], flat[i], 0) for i in range(flat.shape[0])], 0)
  return out.reshape(*idx.shape[:-1], *rest)


@op("ScatterElements", "Scatter")
def scatter_elements(n):
  x, idx, upd = n.tensor(0), n.tensor(1), n.tensor(2)
  axis = axis_of(n.get("axis", 0), x.ndim)
  dim, red = x.shape[axis], n.get("reduction", "none")
  idx = (idx < 0).where(idx + dim, idx)
  # hot[..., j(axis)..., k] = idx == k, with k moved to the scatter axis and j summed
  hot = idx.unsqueeze(axis + 1).eq(Tensor.arange(dim).cast(idx.dtype).reshape([dim if a == axis + 1 else 1 for a in range(x.ndim + 1)]))
  pad = [(0, 0)] * (x.ndim + 1)
  for a in range(x.ndim):
    if a != axis: pad[a if a < axis else a + 1] = (0, x.shape[a] - idx.shape[a])
  hot = hot.pad(pad) if any(p != (0, 0) for p in pad) else hot
  vals = upd.unsqueeze(axis + 1).pad(pad) if any(p != (0, 0) for p in pad) else upd.unsqueeze(axis + 1)
  hot_any = hot.cast(np.int32).sum(axis).cast(np.bool_)
  to_last = [a for a in range(x.ndim + 1) if a != axis] + [axis]   # the summed (update) axis goes last
  summed = select_sum(hot.permute(to_last), vals.expand_to(hot.shape).permute(to_last)) if red in ("none", "add") else None
  if red == "none": new = summed
  elif red == "add": return x + summed
  elif red == "mul": return x * hot.where(vals, Tensor.full((), 1, x.dtype)).prod(axis).cast(x.dtype)
  else:
    lo = -math.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    new = hot.where(vals, lo).max(axis) if red == "max" else -(hot.where(-vals, lo).max(axis))
    new = x.maximum(new) if red == "max" else x.minimum(new)
  return hot_any.where(new, x)


def _scatter_nd_dynamic(n, x: Tensor, idx: Tensor, upd: Tensor) -> Tensor:
  """ScatterND with indices known only at run time: row r of x (flattened over the indexed axes) takes the updates
  whose index is r, by a one-hot compare over the updates (duplicate indices combine by the reduction)."""
  m = idx.shape[-1]
  inner, rest = x.shape[:m], x.shape[m:]
  idx, flat = idx.cast(np.int64), None
  for i in range(m):
    part = idx[..., i]
    part = ((part < 0).where(part + inner[i], part)) * math.prod(inner[i + 1:])
    flat = part if flat is None else flat + part
  rows, count = math.prod(inner), math.prod(idx.shape[:-1])
  hot = flat.reshape(1, count).eq(Tensor(np.arange(rows, dtype=np.int64).reshape(-1, 1)))      # (R, J)
  hot = hot.reshape(rows, *[1] * len(rest), count)
  vals = upd.reshape(count, *rest).permute(*range(1, len(rest) + 1), 0).unsqueeze(0)           # (1, *rest, J)
  vals = vals.expand(rows, *rest, count)
  data = x.reshape(rows, *rest)
  hit = hot.cast(np.int32).max(-1) > 0
  red = n.get("reduction", "none")
  if red in ("none", "add"):
    summed = select_sum(hot, vals)
    return (hit.where(summed, data) if red == "none" else data + summed).reshape(x.shape)
  if red == "mul": return (data * hot.where(vals, Tensor.full((), 1, x.dtype)).prod(-1).cast(x.dtype)).reshape(x.shape)
  lo = -math.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
  hi = math.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).max
  if red == "max": return hit.where(data.maximum(hot.where(vals, lo).max(-1)), data).reshape(x.shape)
  return hit.where(data.minimum(hot.where(vals, hi).min(-1)), data).reshape(x.shape)


@op("ScatterND")
def scatter_nd(n):
  if is_tensor(n.inputs[1]): return _scatter_nd_dynamic(n, n.tensor(0), n.tensor(1), n.tensor(2))
  x, idx, upd = n.tensor(0), n.static(1), n.tensor(2)
  m = idx.shape[-1]
  inner = x.shape[:m]
  flat = (np.where(idx < 0, idx + np.array(inner), idx) * np.array([math.prod(inner[i + 1:]) for i in range(m)])).sum(-1).reshape(-1)
  data = x.reshape(math.prod(inner), *x.shape[m:])
  upd = upd.reshape(len(flat), *x.shape[m:])
  rows = []
  for r in range(data.shape[0]):
    row = data[r]
    for j in np.nonzero(flat == r)[0]:
      u = upd[int(j)]
      row = {"none": lambda a, b: b, "add": operator.add, "mul": operator.mul, "max": Tensor.maximum,
             "min": Tensor.minimum}[n.get("reduction", "none")](row, u)
    rows.append(row)
  return Tensor.stack(rows, 0).reshape(x.shape)


@op("Expand")
def expand(n):
  x, shape = n.arrays()[0], n.ints(1)
  ndim = max(x.ndim, len(shape))
  xs, ss = (1,) * (ndim - x.ndim) + tuple(x.shape), (1,) * (ndim - len(shape)) + tuple(shape)
  out = tuple(a if b == 1 else b for a, b in zip(xs, ss))
  return x.expand_to(out) if is_tensor(x) else np.broadcast_to(x, out).copy()


@op("Tile")
def tile(n):
  x, reps = n.arrays()[0], n.ints(1)
  return x.repeat(reps) if is_tensor(x) else np.tile(x, reps)


@op("Pad")
def pad(n):
  x = n.tensor(0)
  pads = n.ints(1, "pads")
  value = n.static(2).item() if n.has(2) and n.static(2).size else n.get("value", 0.0)
  axes = [axis_of(a, x.ndim) for a in n.ints(3, None, list(range(x.ndim)))]
  per_axis = [(0, 0)] * x.ndim
  for i, a in enumerate(axes): per_axis[a] = (pads[i], pads[i + len(axes)])
  return pad_mode(x, per_axis, n.get("mode", "constant"), value)


def pad_mode(x: Tensor, pads, mode, value=0.0) -> Tensor:
  if mode == "constant": return x.pad(pads, value=value)
  x = x.pad([(min(b, 0), min(a, 0)) for b, a in pads])
  for axis, (b, a) in enumerate(pads):
    b, a, dim = max(b, 0), max(a, 0), x.shape[axis]
    if not b and not a: continue
    ix = np.arange(-b, dim + a)
    if mode == "edge": ix = np.clip(ix, 0, dim - 1)
    elif mode == "wrap": ix = ix % dim
    elif mode == "reflect":
      period = 2 * (dim - 1)
      ix = np.abs(ix) % period if period else np.zeros_like(ix)
      ix = np.where(ix >= dim, period - ix, ix)
    else: raise NotImplementedError(f"Pad mode {mode!r}")
    x = take_runs(x, ix, axis)
  return x


def take_runs(x: Tensor, ix: np.ndarray, axis: int) -> Tensor:
  """x[..., ix, ...] for static indices, as slices over runs of consecutive (or reversed) indices."""
  parts, start = [], 0
  while start < len(ix):
    end, step = start + 1, 1
    if end < len(ix) and abs(int(ix[end]) - int(ix[start])) == 1: step = int(ix[end]) - int(ix[start])
    while end < len(ix) and int(ix[end]) - int(ix[end - 1]) == step: end += 1
    lo, hi = int(ix[start]), int(ix[end - 1])
    index = [slice(None)] * x.ndim
    index[axis] = slice(lo, hi + 1) if step == 1 else slice(lo, hi - 1 if hi > 0 else None, -1)
    parts.append(x[tuple(index)])
    start = end
  return Tensor.cat(*parts, axis=axis) if len(parts) > 1 else parts[0]


@op("Trilu")
def trilu(n):
  x, k = n.tensor(0), int(n.static(1, np.array(0)))
  rows, cols = x.shape[-2:]
  mask = np.triu(np.ones((rows, cols), bool), k) if n.get("upper", 1) else np.tril(np.ones((rows, cols), bool), k)
  return Tensor(mask).where(x, Tensor.full((), 0, x.dtype))


@op("OneHot")
def onehot(n):
  idx, depth, values = n.tensor(0), int(n.static(1).item()), n.tensor(2)
  axis = axis_of(n.get("axis", -1), idx.ndim + 1)
  idx = (idx < 0).where(idx + depth, idx)
  hot = idx.unsqueeze(axis).eq(Tensor.arange(depth).cast(idx.dtype).reshape([depth if a == axis else 1 for a in range(idx.ndim + 1)]))
  return hot.where(values[1], values[0])


@op("CumSum")
def cumsum(n):
  x = n.tensor(0)
  axis = axis_of(int(n.static(1).item()), x.ndim)
  if n.get("reverse", 0): x = x.flip(axis)
  out = x.cumsum(axis)
  if n.get("exclusive", 0): out = out.pad([(0, 0)] * axis + [(1, -1)])
  return (out.flip(axis) if n.get("reverse", 0) else out).cast(x.dtype)


@op("NonZero")
def nonzero(n): return np.array(np.nonzero(n.static(0)), np.int64)


@op("Compress")
def compress(n):
  x, cond = n.tensor(0), n.static(1)
  if n.get("axis") is None: x, axis = x.reshape(-1), 0
  else: axis = axis_of(n.get("axis"), x.ndim)
  return take(x, np.nonzero(cond)[0], axis)


@op("DepthToSpace")
def depth_to_space(n):
  x, b = n.tensor(0), n.get("blocksize")
  N, C, H, W = x.shape
  if n.get("mode", "DCR") == "DCR": y = x.reshape(N, b, b, C // b ** 2, H, W).permute(0, 3, 4, 1, 5, 2)
  else: y = x.reshape(N, C // b ** 2, b, b, H, W).permute(0, 1, 4, 2, 5, 3)
  return y.reshape(N, C // b ** 2, H * b, W * b)


@op("SpaceToDepth")
def space_to_depth(n):
  x, b = n.tensor(0), n.get("blocksize")
  N, C, H, W = x.shape
  order = (0, 1, 3, 5, 2, 4) if n.get("mode", "DCR") == "CRD" else (0, 3, 5, 1, 2, 4)
  return x.reshape(N, C, H // b, b, W // b, b).permute(order).reshape(N, C * b * b, H // b, W // b)


@op("CenterCropPad")
def center_crop_pad(n):
  x, target = n.tensor(0), n.ints(1)
  axes = [axis_of(a, x.ndim) for a in n.get("axes", list(range(x.ndim)))]
  pads = [(0, 0)] * x.ndim
  for a, t in zip(axes, target):
    diff = t - x.shape[a]
    pads[a] = (diff // 2, diff - diff // 2) if diff >= 0 else (-((-diff) // 2), -((-diff) - (-diff) // 2))
  return x.pad(pads)


@op("ReverseSequence")
def reverse_sequence(n):
  x = n.tensor(0)
  bax, tax = n.get("batch_axis", 1), n.get("time_axis", 0)
  if is_tensor(n.inputs[1]):   # lengths known only at run time: each (batch, time) reads time L-1-t below L
    lens, steps = n.tensor(1).cast(np.int64), x.shape[tax]
    rest = [a for a in range(x.ndim) if a not in (bax, tax)]
    xp = x.permute(bax, *rest, tax)                                             # (B, *rest, T')
    t = Tensor(np.arange(steps, dtype=np.int64)).reshape(1, -1)
    src = (t < lens.reshape(-1, 1)).where(lens.reshape(-1, 1) - 1 - t, t)      # (B, T)
    hot = src.unsqueeze(-1).eq(Tensor(np.arange(steps, dtype=np.int64)))       # (B, T, T')
    hot = hot.reshape(hot.shape[0], steps, *[1] * len(rest), steps)
    out = select_sum(hot, xp.unsqueeze(1).expand(hot.shape[0], steps, *xp.shape[1:]))   # (B, T, *rest)
    order = [bax, tax, *rest]
    return out.permute(*[order.index(a) for a in range(x.ndim)])
  lens = n.static(1)
  rows = []
  for b, L in enumerate(lens):
    row = x[(slice(None),) * bax + (slice(b, b + 1),)]
    ix = np.concatenate([np.arange(L)[::-1], np.arange(L, x.shape[tax])]).astype(int)
    rows.append(take_runs(row, ix, tax))
  return Tensor.cat(*rows, axis=bax)


# ---------------------------------------------------------------- reductions
def _reduce_axes(n, x):
  axes = n.ints(1, "axes")
  if not axes:
    return None if n.get("noop_with_empty_axes", 0) else tuple(range(x.ndim))
  return tuple(axis_of(a, x.ndim) for a in axes)


REDUCE = {
  "ReduceSum": (lambda x, ax: x.sum(ax, keepdim=True), np.sum, 0),
  "ReduceMean": (lambda x, ax: x.mean(ax, keepdim=True), np.mean, math.nan),
  "ReduceMax": (lambda x, ax: x.max(ax, keepdim=True), np.max, -math.inf),
  "ReduceMin": (lambda x, ax: x.min(ax, keepdim=True), np.min, math.inf),
  "ReduceProd": (lambda x, ax: x.prod(ax, keepdim=True), np.prod, 1),
  "ReduceL1": (lambda x, ax: x.abs().sum(ax, keepdim=True), lambda x, axis, keepdims: np.abs(x).sum(axis, keepdims=keepdims), 0),
  "ReduceL2": (lambda x, ax: (x * x).sum(ax, keepdim=True).sqrt(), None, 0),
  "ReduceSumSquare": (lambda x, ax: (x * x).sum(ax, keepdim=True), None, 0),
  "ReduceLogSum": (lambda x, ax: x.sum(ax, keepdim=True).log(), None, -math.inf),
  "ReduceLogSumExp": (lambda x, ax: (lambda m: (x - m).exp().sum(ax, keepdim=True).log() + m)(x.max(ax, keepdim=True)),
                      None, -math.inf),
}


@op(*REDUCE)
def reduce_op(n):
  tensor_fn, numpy_fn, empty = REDUCE[n.op]
  x = n.inputs[0]
  axes = _reduce_axes(n, x)
  if axes is None: return x
  keep = n.get("keepdims", 1)
  out_shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
  if not keep: out_shape = tuple(s for i, s in enumerate(x.shape) if i not in axes)
  if any(x.shape[a] == 0 for a in axes):
    if x.dtype.kind == "b": empty = empty > 0
    elif x.dtype.kind != "f" and not math.isfinite(empty):
      empty = np.iinfo(x.dtype).min if empty < 0 else np.iinfo(x.dtype).max
    return np.full(out_shape, empty, x.dtype)
  if numpy_fn is not None and not is_tensor(x): return np.asarray(numpy_fn(x, axis=axes, keepdims=bool(keep))).astype(x.dtype)
  x = n.tensor(0)
  out = tensor_fn(x if x.dtype.kind != "b" else x.cast(np.int32), axes).cast(x.dtype)
  return out.reshape(out_shape)


@op("ArgMax", "ArgMin")
def argmax(n):
  x = n.tensor(0)
  axis = axis_of(n.get("axis", 0), x.ndim)
  if n.op == "ArgMin": x = -x if x.dtype.kind != "u" else -(x.cast(np.int64))
  if n.get("select_last_index", 0): out = (x.shape[axis] - 1) - x.flip(axis).argmax(axis, keepdim=True)
  else: out = x.argmax(axis, keepdim=True)
  out = out.cast(np.int64)
  return out if n.get("keepdims", 1) else out.squeeze(axis)


# ---------------------------------------------------------------- linear algebra
@op("MatMul")
def matmul(n):
  a, b = n.arrays()
  return a @ b if is_tensor(a) else np.matmul(a, b)


@op("Gemm")
def gemm(n):
  a, b = n.tensor(0), n.inputs[1]
  if n.get("transA", 0): a = a.T
  if n.get("transB", 0): b = np.ascontiguousarray(b.T) if not is_tensor(b) else b.T
  out = a @ as_tensor(b)
  if n.get("alpha", 1.0) != 1.0: out = out * n.get("alpha", 1.0)
  if n.has(2): out = out + n.tensor(2) * n.get("beta", 1.0) if n.get("beta", 1.0) != 1.0 else out + n.tensor(2)
  return out


@op("Einsum")
def einsum(n):
  eq = n.get("equation").replace(" ", "")
  xs = n.arrays(numpy_ok=False)
  lhs, rhs = eq.split("->") if "->" in eq else (eq, None)
  terms = lhs.split(",")
  ell_rank = max((x.ndim - len(t.replace("...", "")) for x, t in zip(xs, terms) if "..." in t), default=0)
  ell = "".join(chr(0x100 + i) for i in range(ell_rank))
  terms = [t.replace("...", ell[len(ell) - (x.ndim - len(t.replace("...", ""))):]) for x, t in zip(xs, terms)]
  if rhs is None: rhs = ell + "".join(sorted(c for c in set("".join(terms)) if "".join(terms).count(c) == 1 and c not in ell))
  rhs = rhs.replace("...", ell)
  letters = list(dict.fromkeys(rhs + "".join(terms)))
  sizes = {c: s for x, t in zip(xs, terms) for c, s in zip(t, x.shape) if s != 1}
  prod = None
  for x, t in zip(xs, terms):
    for c in set(t):   # repeated letters in one operand: take the diagonal
      while t.count(c) > 1:
        i, j = t.index(c), t.index(c, t.index(c) + 1)
        d = x.shape[i]
        eye = Tensor(np.eye(d, dtype=bool).reshape([d if a in (i, j) else 1 for a in range(x.ndim)]))
        x = eye.where(x, Tensor.full((), 0, x.dtype)).sum(j)
        t = t[:j] + t[j + 1:]
    x = x.permute([t.index(c) for c in letters if c in t])
    x = x.reshape([x.shape[[c for c in letters if c in t].index(c)] if c in t else 1 for c in letters])
    prod = x if prod is None else prod * x
  prod = prod.expand_to([sizes.get(c, 1) for c in letters])
  summed = tuple(i for i, c in enumerate(letters) if c not in rhs)
  out = prod.sum(summed) if summed else prod
  return out.cast(xs[0].dtype)


# ---------------------------------------------------------------- convolution and pooling
def conv_pads(n, spatial, kernel, strides, dilations) -> list:
  """ONNX-style [begins..., ends...] from `pads` or `auto_pad`."""
  auto = n.get("auto_pad", "NOTSET")
  nd = len(kernel)
  if auto in ("SAME_UPPER", "SAME_LOWER"):
    out = []
    for s, k, st, d in zip(spatial, kernel, strides, dilations):
      total = max((-(-s // st) - 1) * st + (k - 1) * d + 1 - s, 0)
      out.append((total // 2, total - total // 2) if auto == "SAME_UPPER" else (total - total // 2, total // 2))
    return [b for b, _ in out] + [a for _, a in out]
  if auto == "VALID": return [0] * 2 * nd
  return list(n.get("pads", [0] * 2 * nd))


def _window_params(n, x, kernel=None):
  kernel = list(kernel or n.get("kernel_shape"))
  nd = len(kernel)
  strides, dilations = list(n.get("strides", [1] * nd)), list(n.get("dilations", [1] * nd))
  return kernel, strides, dilations, conv_pads(n, x.shape[2:], kernel, strides, dilations)


@op("Conv")
def conv(n):
  x, w = n.tensor(0), n.tensor(1)
  kernel, strides, dilations, pads = _window_params(n, x, w.shape[2:])
  return x.conv2d(w, n.tensor(2), strides, pads, dilations, n.get("group", 1))


@op("ConvTranspose")
def conv_transpose(n):
  x, w = n.tensor(0), n.tensor(1)
  nd = w.ndim - 2
  kernel = w.shape[2:]
  strides, dilations = list(n.get("strides", [1] * nd)), list(n.get("dilations", [1] * nd))
  out_pad = list(n.get("output_padding", [0] * nd))
  pads = list(n.get("pads", [0] * 2 * nd))
  out_shape, auto = n.get("output_shape"), n.get("auto_pad", "NOTSET")
  if out_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
    out_shape = list(out_shape)[-nd:] if out_shape is not None else [s * st for s, st in zip(x.shape[2:], strides)]
    total = [st * (s - 1) + op_ + (k - 1) * d + 1 - o
             for s, st, op_, k, d, o in zip(x.shape[2:], strides, out_pad, kernel, dilations, out_shape)]
    half = [int(t / 2) for t in total]   # C division: a negative total (output larger than the full result) grows the end
    begin = half if auto != "SAME_LOWER" else [t - h for t, h in zip(total, half)]
    pads = begin + [t - b for t, b in zip(total, begin)]
  elif auto == "VALID": pads = [0] * 2 * nd
  return x.conv_transpose2d(w, n.tensor(2), strides, pads, out_pad, dilations, n.get("group", 1))


def _ceil_extra(n, spatial, kernel, strides, dilations, pads) -> list:
  """Extra end padding so that ceil_mode yields its extra windows (each must start inside input + begin pad)."""
  nd = len(kernel)
  if not n.get("ceil_mode", 0): return [0] * nd
  extra = []
  for i, (s, k, st, d) in enumerate(zip(spatial, kernel, strides, dilations)):
    span = s + pads[i] + pads[i + nd] - ((k - 1) * d + 1)
    out = -(-span // st) + 1
    if (out - 1) * st >= s + pads[i]: out -= 1
    extra.append(max((out - 1) * st - span, 0))
  return extra


def _pool_windows(x: Tensor, kernel, strides, dilations, pads, extra, value) -> Tensor:
  nd = len(kernel)
  padded = x.pad([(0, 0)] * 2 + [(pads[i], pads[i + nd] + extra[i]) for i in range(nd)], value=value)
  return padded._pool(kernel, strides, 0, dilations, value)


@op("MaxPool")
def maxpool(n):
  if n.n_out > 1: raise NotImplementedError("MaxPool with an Indices output")
  x = n.tensor(0)
  kernel, strides, dilations, pads = _window_params(n, x)
  lo = -math.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
  extra = _ceil_extra(n, x.shape[2:], kernel, strides, dilations, pads)
  return _pool_windows(x, kernel, strides, dilations, pads, extra, lo).max(tuple(range(-len(kernel), 0)))


@op("AveragePool", "LpPool")
def avgpool(n):
  x = n.tensor(0)
  kernel, strides, dilations, pads = _window_params(n, x)
  nd, extra = len(kernel), _ceil_extra(n, x.shape[2:], kernel, strides, dilations, pads)
  axes = tuple(range(-nd, 0))
  if n.op == "LpPool":
    p = n.get("p", 2)
    return (_pool_windows(x.abs() ** p, kernel, strides, dilations, pads, extra, 0.0).sum(axes)) ** (1 / p)
  total = _pool_windows(x, kernel, strides, dilations, pads, extra, 0.0).sum(axes)
  # the divisor, with numpy: window cells inside the input, or inside input + explicit pads with count_include_pad
  cells = np.pad(np.ones(x.shape[2:]), [(pads[i], pads[i + nd]) for i in range(nd)], constant_values=n.get("count_include_pad", 0))
  cells = np.pad(cells, [(0, e) for e in extra])
  count = np.lib.stride_tricks.sliding_window_view(cells, [(k - 1) * d + 1 for k, d in zip(kernel, dilations)])
  count = count[tuple(slice(None, None, st) for st in strides) + tuple(slice(None, None, d) for d in dilations)]
  count = count.sum(tuple(range(-nd, 0)))
  return (total / Tensor(count.astype(np.float32))).cast(x.dtype)


@op("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def global_pool(n):
  x = n.tensor(0)
  axes = tuple(range(2, x.ndim))
  if n.op == "GlobalAveragePool": return x.mean(axes, keepdim=True)
  if n.op == "GlobalMaxPool": return x.max(axes, keepdim=True)
  p = n.get("p", 2)
  return (x.abs() ** p).sum(axes, keepdim=True) ** (1 / p)


@op("LRN")
def lrn(n):
  x = n.tensor(0)
  size = n.get("size")
  sq = (x * x).pad([(0, 0), ((size - 1) // 2, size - 1 - (size - 1) // 2)])
  total = reduce(operator.add, [sq[:, i:i + x.shape[1]] for i in range(size)])
  return x / (total * (n.get("alpha", 1e-4) / size) + n.get("bias", 1.0)) ** n.get("beta", 0.75)


# ---------------------------------------------------------------- normalization
def _channel(v: Tensor, ndim: int) -> Tensor: return v.reshape(1, -1, *[1] * (ndim - 2))


@op("BatchNormalization")
def batchnorm(n):
  if n.get("training_mode", 0) or n.n_out > 1: raise NotImplementedError("BatchNormalization in training mode")
  x = n.tensor(0)
  return x.batchnorm(n.tensor(3), n.tensor(4), n.tensor(1), n.tensor(2), n.get("epsilon", 1e-5)).cast(x.dtype)


@op("InstanceNormalization")
def instancenorm(n):
  x = n.tensor(0)
  y = x.layernorm(tuple(range(2, x.ndim)), eps=n.get("epsilon", 1e-5))
  return y * _channel(n.tensor(1), x.ndim) + _channel(n.tensor(2), x.ndim)


@op("LayerNormalization")
def layernorm(n):
  x = n.tensor(0)
  axis = axis_of(n.get("axis", -1), x.ndim)
  axes, eps = tuple(range(axis, x.ndim)), n.get("epsilon", 1e-5)
  xf = x.float()
  mean = xf.mean(axes, keepdim=True)
  inv = ((xf - mean) ** 2).mean(axes, keepdim=True).add(eps).sqrt().reciprocal()
  y = ((xf - mean) * inv * n.tensor(1).float())
  if n.has(2): y = y + n.tensor(2).float()
  return [y.cast(x.dtype), mean, inv][:max(n.n_out, 1)]


@op("RMSNormalization")
def rmsnorm(n):
  x = n.tensor(0)
  axes = tuple(range(axis_of(n.get("axis", -1), x.ndim), x.ndim))
  xf = x.float()
  y = xf * ((xf * xf).mean(axes, keepdim=True) + n.get("epsilon", 1e-5)).sqrt().reciprocal()
  return (y * n.tensor(1).float()).cast(x.dtype)


@op("GroupNormalization")
def groupnorm(n):
  x, g = n.tensor(0), n.get("num_groups")
  N, C = x.shape[:2]
  y = x.reshape(N, g, -1).layernorm(-1, eps=n.get("epsilon", 1e-5)).reshape(x.shape)
  scale, bias = n.tensor(1), n.tensor(2)
  if scale.shape[0] != C: scale, bias = (v.reshape(g, 1).expand(g, C // g).reshape(C) for v in (scale, bias))
  return y * _channel(scale, x.ndim) + _channel(bias, x.ndim)


@op("MeanVarianceNormalization")
def mvn(n):
  x = n.tensor(0)
  axes = tuple(axis_of(a, x.ndim) for a in n.get("axes", [0, 2, 3]))
  centered = x - x.mean(axes, keepdim=True)
  return centered / ((centered * centered).mean(axes, keepdim=True).sqrt() + 1e-9)


@op("LpNormalization")
def lpnorm(n):
  x = n.tensor(0)
  axis = axis_of(n.get("axis", -1), x.ndim)
  norm = x.abs().sum(axis, keepdim=True) if n.get("p", 2) == 1 else (x * x).sum(axis, keepdim=True).sqrt()
  return (norm.eq(0)).where(0.0, x / norm).cast(x.dtype)


@op("Dropout")
def dropout(n):
  if n.has(2) and n.static(2).item(): raise NotImplementedError("Dropout in training mode")
  x = n.arrays()[0]
  return [x, np.ones(x.shape, bool)][:max(n.n_out, 1)]


# ---------------------------------------------------------------- losses
def _nll(n, logp: Tensor, target: Tensor, weight: Tensor | None):
  C, ignore, red = logp.shape[1], n.get("ignore_index"), n.get("reduction", "mean")
  t = target.unsqueeze(1)
  hot = t.eq(Tensor.arange(C).cast(t.dtype).reshape(1, C, *[1] * (t.ndim - 2)))
  w = weight.reshape(1, C, *[1] * (t.ndim - 2)) if weight is not None else Tensor.full((), 1.0, logp.dtype)
  if ignore is not None: hot = hot.logical_and(t.ne(ignore))
  loss = -(hot.where(logp * w, 0.0).sum(1))
  wsum = hot.where(w, 0.0).sum(1)
  if red == "none": return loss.cast(logp.dtype)
  if red == "sum": return loss.sum().cast(logp.dtype)
  return (loss.sum() / wsum.sum()).cast(logp.dtype)


@op("NegativeLogLikelihoodLoss")
def nll_loss(n): return _nll(n, n.tensor(0), n.tensor(1), n.tensor(2))


@op("SoftmaxCrossEntropyLoss")
def softmax_ce(n):
  logp = n.tensor(0).log_softmax(1)
  return [_nll(n, logp, n.tensor(1), n.tensor(2)), logp][:max(n.n_out, 1)]


# ---------------------------------------------------------------- resize
def resize_matrix(size_in, size_out, scale, mode, n, roi=None):
  """The (out, in) matrix of one axis of Resize (it is separable), and the rows that take extrapolation_value."""
  y = np.arange(size_out, dtype=np.float64)
  ctm = n.get("coordinate_transformation_mode", "half_pixel")
  length = scale * size_in
  if ctm == "align_corners": x = y * (size_in - 1) / (length - 1) if length != 1 else np.zeros_like(y)
  elif ctm == "asymmetric": x = y / scale
  elif ctm == "pytorch_half_pixel": x = (y + 0.5) / scale - 0.5 if length != 1 else np.full_like(y, -0.5)
  elif ctm == "half_pixel": x = (y + 0.5) / scale - 0.5
  elif ctm == "half_pixel_symmetric": x = size_in / 2 * (1 - size_out / length) + (y + 0.5) / scale - 0.5
  elif ctm == "tf_crop_and_resize":
    lo, hi = roi
    x = y * (hi - lo) * (size_in - 1) / (length - 1) if length != 1 else np.full_like(y, (hi - lo) * (size_in - 1) / 2)
    x = x + lo * (size_in - 1)
  else: raise NotImplementedError(f"coordinate_transformation_mode {ctm!r}")
  outside = (x < 0) | (x > size_in - 1) if ctm == "tf_crop_and_resize" else np.zeros(size_out, bool)
  base = np.floor(x)
  ratio = np.where(x == base, 1.0, x - base)
  taps, weights = _resize_taps(ratio, scale, mode, n)
  # tap offsets count from the left neighbour (x - ratio); the spec pads with edge values, i.e. clamps indices
  idx = np.round(x - ratio).astype(int)[:, None] + np.array(taps)[None, :]
  if n.get("exclude_outside", 0):
    weights = np.where((idx < 0) | (idx >= size_in), 0.0, weights)
    weights = weights / np.where(weights.sum(1, keepdims=True) == 0, 1, weights.sum(1, keepdims=True))
  m = np.zeros((size_out, size_in))
  np.add.at(m, (np.repeat(np.arange(size_out), len(taps)), np.clip(idx, 0, size_in - 1).reshape(-1)), weights.reshape(-1))
  return m, outside


def _resize_taps(ratio, scale, mode, n):
  """Per output position, the weights of its neighbour window (window length = len(taps))."""
  if mode == "nearest":
    nm = n.get("nearest_mode", "round_prefer_floor")
    right = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5, "floor": np.zeros_like(ratio, bool),
             "ceil": np.ones_like(ratio, bool)}[nm]
    right = np.where(ratio == 1.0, True, right)
    return [0, 1], np.stack([~right, right], 1).astype(np.float64)
  anti = n.get("antialias", 0) and scale < 1
  s = min(scale, 1.0) if anti else 1.0
  if mode == "linear":
    first = int(np.floor(-1 / s) + 1)
    offs = np.arange(first, 2 - first)
    w = np.clip(1 - np.abs((offs[None, :] - ratio[:, None]) * s), 0, 1)
  elif mode == "cubic":
    a = n.get("cubic_coeff_a", -0.75)
    first = int(np.floor(-2 / s) + 1)
    offs = np.arange(first, 2 - first)
    d = np.abs((offs[None, :] - ratio[:, None]) * s)
    w = np.where(d <= 1, (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1, np.where(d < 2, a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a, 0))
  else: raise NotImplementedError(f"Resize mode {mode!r}")
  return list(offs), w / w.sum(1, keepdims=True)


@op("Resize", "Upsample")
def resize(n):
  x = n.tensor(0)
  if n.op == "Upsample" or n.opset < 11:
    scales, sizes, roi = (n.static(1) if n.has(1) else np.array(n.get("scales"))).astype(np.float64), None, None
    n.attrs.setdefault("coordinate_transformation_mode", "asymmetric")
    if n.get("mode", "nearest") == "nearest": n.attrs.setdefault("nearest_mode", "floor")
  else:
    roi = n.static(1) if n.has(1) and n.static(1).size else None
    scales = n.static(2).astype(np.float64) if n.has(2) and n.static(2).size else None
    sizes = n.static(3) if n.has(3) and n.static(3).size else None
  mode = {"bilinear": "linear", "trilinear": "linear"}.get(n.get("mode", "nearest"), n.get("mode", "nearest"))
  axes = [axis_of(a, x.ndim) for a in n.get("axes", list(range(x.ndim)))]
  if sizes is not None:
    sc = [sizes[i] / x.shape[a] for i, a in enumerate(axes)]
    policy = n.get("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
      s = min(sc) if policy == "not_larger" else max(sc)
      sc, sizes = [s] * len(axes), [int(s * x.shape[a] + 0.5) for a in axes]
  else:
    sc = list(scales)
    sizes = [int(s * x.shape[a]) for s, a in zip(sc, axes)]
  out = x
  for i, a in enumerate(axes):
    ax_roi = (roi[i], roi[i + len(axes)]) if roi is not None else (0.0, 1.0)
    if sizes[i] == x.shape[a] and math.isclose(sc[i], 1.0) and ax_roi == (0.0, 1.0): continue
    m, outside = resize_matrix(x.shape[a], int(sizes[i]), float(sc[i]), mode, n, ax_roi)
    moved = out.transpose(a, -1)
    if mode == "nearest" and (m == m.astype(bool)).all():
      res = take(moved, m.argmax(1), moved.ndim - 1)
    else:
      res = (moved.float() @ Tensor(np.ascontiguousarray(m.T).astype(np.float32)))
    if outside.any(): res = Tensor(outside).where(n.get("extrapolation_value", 0.0), res)
    out = res.transpose(a, -1).cast(x.dtype)
  return out


# ---------------------------------------------------------------- recurrent
def _activation(name, alpha, beta):
  return {"Sigmoid": Tensor.sigmoid, "Tanh": Tensor.tanh, "Relu": Tensor.relu,
          "Affine": lambda x: x * alpha + beta, "LeakyRelu": lambda x: x.leaky_relu(alpha),
          "ThresholdedRelu": lambda x: (x > alpha).where(x, 0.0), "ScaledTanh": lambda x: (x * beta).tanh() * alpha,
          "HardSigmoid": lambda x: x.hardsigmoid(alpha, beta), "Elu": lambda x: x.elu(alpha),
          "Softsign": lambda x: x / (x.abs() + 1), "Softplus": Tensor.softplus}[name]


ACT_DEFAULTS = {"LeakyRelu": (0.01, 0), "ThresholdedRelu": (1.0, 0), "HardSigmoid": (0.2, 0.5), "Elu": (1.0, 0),
                "Affine": (1.0, 0.0), "ScaledTanh": (1.0, 1.0)}


@op("RNN", "GRU", "LSTM")
def recurrent(n):
  """The three recurrent ops, unrolled over the (static) sequence; gate order RNN [i], GRU [z r h], LSTM [i o f c]."""
  gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[n.op]
  x, W, R = n.tensor(0), n.tensor(1), n.tensor(2)
  layout, H = n.get("layout", 0), n.get("hidden_size")
  if layout: x = x.transpose(0, 1)
  seq, batch = x.shape[:2]
  if n.has(4) and (n.static(4) != seq).any(): raise NotImplementedError("sequence_lens shorter than the sequence")
  dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[n.get("direction", "forward")]
  per = {"RNN": 1, "GRU": 2, "LSTM": 3}[n.op]
  names = n.get("activations", {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}[n.op] * len(dirs))
  alphas, betas, acts = list(n.get("activation_alpha", [])), list(n.get("activation_beta", [])), []
  for name in names:
    alpha, beta = ACT_DEFAULTS.get(name, (0.0, 0.0))
    if name in ACT_DEFAULTS and alphas: alpha = alphas.pop(0)
    if name in ("Affine", "ScaledTanh", "HardSigmoid") and betas: beta = betas.pop(0)
    acts.append(_activation(name, alpha, beta))
  clip = n.get("clip")
  ys, hs, cs = [], [], []
  for d, reverse in enumerate(dirs):
    f, g, h_act = (acts[d * per:(d + 1) * per] + [None, None])[:3]
    B = n.tensor(3)[d] if n.has(3) else Tensor.zeros(2 * gates * H, dtype=x.dtype)
    wb, rb = B[:gates * H], B[gates * H:]
    xw = x @ W[d].T + wb                                            # (seq, batch, gates*H), all steps at once
    Rd = R[d].T
    h = n.tensor(5)[d] if n.has(5) else Tensor.zeros(batch, H, dtype=x.dtype)
    c = n.tensor(6)[d] if n.has(6) else Tensor.zeros(batch, H, dtype=x.dtype)
    P = n.tensor(7)[d] if n.has(7) else None
    steps = range(seq - 1, -1, -1) if reverse else range(seq)
    out = [None] * seq
    for t in steps:
      xt = xw[t]
      cl = (lambda v: v.clip(-clip, clip)) if clip is not None else (lambda v: v)
      if n.op == "RNN": h = f(cl(xt + h @ Rd + rb))
      elif n.op == "GRU" and n.get("linear_before_reset", 0):
        a = h @ Rd + rb                                             # kernel 1: all three gates' h @ R at once
        z, r = f(cl(xt[:, :H] + a[:, :H])), f(cl(xt[:, H:2 * H] + a[:, H:2 * H]))
        h = (1 - z) * g(cl(xt[:, 2 * H:] + r * a[:, 2 * H:])) + z * h   # kernel 2: elementwise
      elif n.op == "GRU":
        zr = f(cl(xt[:, :2 * H] + h @ Rd[:, :2 * H] + rb[:2 * H]))  # kernel 1: z and r, sigmoid fused
        z, r = zr[:, :H], zr[:, H:]
        hh = g(cl(xt[:, 2 * H:] + (r * h) @ Rd[:, 2 * H:] + rb[2 * H:]))
        h = (1 - z) * hh + z * h                                    # kernel 2: candidate and update fused
      else:
        gsum = xt + h @ Rd + rb                                     # kernel 1: the four gates in one matmul
        i_, o_, f_, c_ = (gsum[:, k * H:(k + 1) * H] for k in range(4))
        if P is not None: i_, f_ = i_ + P[:H] * c, f_ + P[2 * H:] * c
        i_, f_, c_ = f(cl(i_)), f(cl(f_)), g(cl(c_))
        cn = f_ * c + i_ * c_
        if P is not None: o_ = o_ + P[H:2 * H] * cn
        ch = cn.cat(f(cl(o_)) * h_act(cn), axis=1).contiguous()    # kernel 2: [c, h] in one buffer
        c, h = ch[:, :H], ch[:, H:]
      if n.op != "LSTM": h = h.contiguous()
      out[t] = h
    ys.append(Tensor.stack(out, 0))
    hs.append(h)
    cs.append(c)
  Y, Yh, Yc = Tensor.stack(ys, 1), Tensor.stack(hs, 0), Tensor.stack(cs, 0)
  if layout: Y, Yh, Yc = Y.permute(2, 0, 1, 3), Yh.transpose(0, 1), Yc.transpose(0, 1)
  return [Y, Yh, Yc][:max(n.n_out, 1)]


# ---------------------------------------------------------------- quantization
def _qparam(n, x: Tensor, p: Tensor) -> Tensor:
  """A scale or zero point broadcast to x: scalar, per-axis (1-d along `axis`) or blocked (`block_size` along `axis`)."""
  if p.ndim == 0 or p.size == 1: return p.reshape(())
  axis = axis_of(n.get("axis", 1), x.ndim)
  if p.ndim == 1: return p.reshape([-1 if a == axis else 1 for a in range(x.ndim)])
  block = n.get("block_size", 0)
  grown = p.unsqueeze(axis + 1).expand(*p.shape[:axis + 1], block, *p.shape[axis + 1:])
  grown = grown.reshape(*p.shape[:axis], p.shape[axis] * block, *p.shape[axis + 1:])
  return grown.shrink([(0, s) for s in x.shape])


def dequantize_tensor(n, x, scale, zp) -> Tensor:
  zp = _qparam(n, x, zp).float() if zp is not None else 0.0
  return (x.float() - zp) * _qparam(n, x, scale).float()


def quantize_tensor(n, x, scale, zp, dtype) -> Tensor:
  info = np.iinfo(dtype)
  zp = _qparam(n, x, zp).float() if zp is not None else 0.0
  return ((x.float() / _qparam(n, x, scale).float()).round() + zp).clip(float(info.min), float(info.max)).cast(dtype)


@op("DequantizeLinear")
def dequantize(n):
  return dequantize_tensor(n, n.tensor(0), n.tensor(1), n.tensor(2)).cast(n.inputs[1].dtype)


@op("QuantizeLinear")
def quantize(n):
  dtype = n.inputs[2].dtype if n.has(2) else onnx_dtype(n.get("output_dtype", 0) or onnx.TensorProto.UINT8)
  return quantize_tensor(n, n.tensor(0), n.tensor(1), n.tensor(2), dtype)


@op("DynamicQuantizeLinear")
def dynamic_quantize(n):
  x = n.tensor(0)
  lo, hi = x.min().minimum(0.0), x.max().maximum(0.0)
  scale = (hi - lo) / 255
  zp = (-lo / scale).round().clip(0.0, 255.0).cast(np.uint8)
  return [quantize_tensor(n, x, scale, zp, np.uint8), scale, zp]


@op("QLinearMatMul")
def qlinear_matmul(n):
  a = dequantize_tensor(n, n.tensor(0), n.tensor(1), n.tensor(2))
  b = dequantize_tensor(n, n.tensor(3), n.tensor(4), n.tensor(5))
  return quantize_tensor(n, a @ b, n.tensor(6), n.tensor(7), n.inputs[7].dtype)


@op("CumProd")
def cumprod(n):
  x = n.tensor(0)
  axis = axis_of(int(n.static(1).item()), x.ndim)
  size = x.shape[axis]
  i, j = np.arange(size)[:, None], np.arange(size)[None, :]
  take_j = j > i if n.get("exclusive", 0) else j >= i
  take_j = take_j if n.get("reverse", 0) else (j < i if n.get("exclusive", 0) else j <= i)
  moved = x.transpose(axis, -1)
  rows = Tensor(take_j).where(moved.unsqueeze(-2), Tensor.full((), 1, x.dtype))   # (..., i, j)
  return rows.prod(-1).transpose(axis, -1).cast(x.dtype)


# ---------------------------------------------------------------- windows (shape-only, folded)
def _window(n, a0, a1=0.0, a2=0.0):
  size = int(n.static(0).item())
  N = size if n.get("periodic", 1) else size - 1
  k = np.arange(size) * 2 * math.pi / max(N, 1)
  w = a0 - a1 * np.cos(k) + a2 * np.cos(2 * k)
  return w.astype(onnx_dtype(n.get("output_datatype", onnx.TensorProto.FLOAT)))


OPS["HannWindow"] = lambda n: _window(n, 0.5, 0.5)
OPS["HammingWindow"] = lambda n: _window(n, 25 / 46, 1 - 25 / 46)
OPS["BlackmanWindow"] = lambda n: _window(n, 0.42, 0.5, 0.08)


# ---------------------------------------------------------------- attention
def _heads(x: Tensor, heads) -> Tensor:
  """(B, S, H*d) -> (B, H, S, d); 4-d inputs are already split into heads."""
  return x if x.ndim == 4 else x.reshape(x.shape[0], x.shape[1], heads, -1).permute(0, 2, 1, 3)


@op("Attention")
def attention(n):
  q, k, v = n.tensor(0), n.tensor(1), n.tensor(2)
  rank3 = q.ndim == 3
  q, k, v = _heads(q, n.get("q_num_heads")), _heads(k, n.get("kv_num_heads")), _heads(v, n.get("kv_num_heads"))
  past = n.tensor(4) is not None
  if past: k, v = n.tensor(4).cat(k, axis=2), n.tensor(5).cat(v, axis=2)
  present_k, present_v = k, v
  sq, skv = q.shape[2], k.shape[2]
  # the additive bias: causal / sliding-window limits (static), the mask input, the per-batch key lengths
  if n.has(6) and is_tensor(n.inputs[6]): bias = _attention_bias_dynamic(n, n.tensor(6), sq, skv, past)
  seqlen = n.static(6) if n.has(6) and not is_tensor(n.inputs[6]) else None
  offset = np.array(n.inputs[4].shape[2] if past else 0).reshape(1)
  if seqlen is not None and not past: offset = seqlen.reshape(-1) - sq
  i, j = np.arange(sq)[None, :, None], np.arange(skv)[None, None, :]
  allowed = np.ones((offset.size, sq, skv), bool)
  left, right = n.get("left_window_size", -1), n.get("right_window_size", -1)
  if n.get("is_causal", 0): allowed &= j <= i + offset[:, None, None]
  if left >= 0: allowed &= j >= i + offset[:, None, None] - left
  if right >= 0: allowed &= j <= i + offset[:, None, None] + right
  if seqlen is not None: allowed &= np.arange(skv)[None, None, :] < seqlen.reshape(-1, 1, 1)
  if not (n.has(6) and is_tensor(n.inputs[6])):
    bias = Tensor(np.where(allowed, 0.0, -np.inf).astype(np.float32)[:, None])   # (B or 1, 1, Sq, Skv)
  if n.has(3):
    mask = n.tensor(3)
    if mask.shape[-1] < skv: mask = mask.pad([(0, 0)] * (mask.ndim - 1) + [(0, skv - mask.shape[-1])], value=False if mask.dtype.kind == "b" else -math.inf)
    bias = bias + (mask.where(0.0, -math.inf) if mask.dtype.kind == "b" else mask.float())
  heads, kv_heads = q.shape[1], k.shape[1]
  if heads != kv_heads:   # grouped-query attention: each kv head serves heads // kv_heads query heads
    g = heads // kv_heads
    k, v = (t.unsqueeze(2).expand(t.shape[0], kv_heads, g, *t.shape[2:]).reshape(t.shape[0], heads, *t.shape[2:]) for t in (k, v))
  scale = n.get("scale", 1 / math.sqrt(q.shape[3]))
  scores = (q.float() * scale) @ k.float().transpose(-1, -2)
  if n.get("softcap", 0.0): scores = (scores / n.get("softcap")).tanh() * n.get("softcap")
  mode = n.get("qk_matmul_output_mode", 0)
  biased = scores + bias
  probs = biased.softmax(-1)
  probs = bias.max(-1, keepdim=True).eq(-math.inf).where(0.0, probs)
  qk = {0: scores, 1: scores, 2: biased, 3: probs}[mode]   # 1: after softcap, 2: after the bias, 3: after softmax
  y = probs.cast(q.dtype).float() @ v.float()
  if rank3: y = y.permute(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)
  return [y.cast(q.dtype), present_k, present_v, qk.cast(q.dtype)][:max(n.n_out, 1)]


def _attention_bias_dynamic(n, seqlen: Tensor, sq: int, skv: int, past: bool) -> Tensor:
  """Attention's additive bias when the per-batch key lengths are known only at run time (the same limits as the
  static path, as Tensor compares)."""
  lens = seqlen.cast(np.int64).reshape(-1, 1, 1)
  off = Tensor(np.array(n.inputs[4].shape[2], np.int64).reshape(1, 1, 1)) if past else lens - sq
  i, j = Tensor(np.arange(sq, dtype=np.int64).reshape(1, -1, 1)), Tensor(np.arange(skv, dtype=np.int64).reshape(1, 1, -1))
  allowed = j < lens
  left, right = n.get("left_window_size", -1), n.get("right_window_size", -1)
  if n.get("is_causal", 0): allowed = allowed.logical_and(j <= i + off)
  if left >= 0: allowed = allowed.logical_and(j >= i + off - left)
  if right >= 0: allowed = allowed.logical_and(j <= i + off + right)
  return allowed.where(Tensor.full((), 0.0, np.float32), Tensor.full((), -math.inf, np.float32)).unsqueeze(1)


def _last(x: Tensor, lo: int, hi: int) -> Tensor: return x[(slice(None),) * (x.ndim - 1) + (slice(lo, hi),)]


@op("RotaryEmbedding")
def rotary(n):
  x, cos, sin = n.tensor(0), n.tensor(1), n.tensor(2)
  rank3 = x.ndim == 3
  if rank3: x = x.reshape(x.shape[0], x.shape[1], n.get("num_heads"), -1).permute(0, 2, 1, 3)
  if n.has(3):   # position ids pick rows of the caches
    pos = n.tensor(3)
    cos, sin = take(cos, pos, 0), take(sin, pos, 0)
  d = n.get("rotary_embedding_dim", 0) or x.shape[-1]
  rot, keep = _last(x, 0, d), _last(x, d, x.shape[-1])
  cos, sin = _last(cos, 0, d // 2).unsqueeze(1), _last(sin, 0, d // 2).unsqueeze(1)   # (B, 1, S, d/2)
  if n.get("interleaved", 0):
    pairs = rot.reshape(*rot.shape[:-1], d // 2, 2)
    a, b = pairs[(slice(None),) * (pairs.ndim - 1) + (0,)], pairs[(slice(None),) * (pairs.ndim - 1) + (1,)]
    out = Tensor.stack([a * cos - b * sin, b * cos + a * sin], -1).reshape(rot.shape)
  else:
    a, b = _last(rot, 0, d // 2), _last(rot, d // 2, d)
    out = (a * cos - b * sin).cat(b * cos + a * sin, axis=-1)
  y = out.cat(keep, axis=-1) if keep.shape[-1] else out
  if rank3: y = y.permute(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)
  return y.cast(n.inputs[0].dtype)


# ---------------------------------------------------------------- detector post-processing (fixed-size outputs)
def _last_axis(x, axis):
  perm = [a for a in range(x.ndim) if a != axis] + [axis]
  return permute(x, perm), [perm.index(a) for a in range(x.ndim)]


@op("TopK")
def topk(n):
  """k largest (or smallest) along an axis, sorted, ties to the lower index, k known at compile time. On Tensors: each
  element's rank counts the elements before it in that order (one compare-and-sum over n x n), then output slot r
  takes the element of rank r."""
  x = n.inputs[0]
  k = int(n.static(1).reshape(-1)[0]) if n.has(1) else int(n.get("k"))
  axis, largest = axis_of(n.get("axis", -1), x.ndim), bool(n.get("largest", 1))
  size = x.shape[axis]
  if not 0 <= k <= size: raise ValueError(f"k={k} out of range for an axis of {size}")
  xl, back = _last_axis(x, axis)
  if not is_tensor(x):
    order = np.argsort(-xl if largest else xl, axis=-1, kind="stable")[..., :k] if xl.dtype.kind != "b" else \
      np.argsort(~xl if largest else xl, axis=-1, kind="stable")[..., :k]
    return np.transpose(np.take_along_axis(xl, order, -1), back), np.transpose(order.astype(np.int64), back)
  if k == 0:
    shape = list(x.shape)
    shape[axis] = 0
    return np.zeros(shape, x.dtype), np.zeros(shape, np.int64)
  a, b = xl.unsqueeze(-1), xl.unsqueeze(-2)          # a: element i (rows), b: element j (columns)
  before = (b > a) if largest else (b < a)
  earlier = Tensor(np.arange(size).reshape(1, -1) < np.arange(size).reshape(-1, 1))   # j < i
  rank = before.logical_or(b.eq(a).logical_and(earlier)).cast(np.int32).sum(-1)     # (..., n)
  hot = rank.unsqueeze(-2).eq(Tensor(np.arange(k, dtype=np.int32).reshape(-1, 1)))  # (..., k, n)
  values = select_sum(hot, xl.unsqueeze(-2).expand(*hot.shape))
  indices = select_sum(hot, Tensor(np.arange(size, dtype=np.int64)).expand(*hot.shape))
  return permute(values, back), permute(indices, back)


def _corners(boxes: Tensor, center: bool) -> list:
  """(y1, x1, y2, x2) of boxes (..., 4), lower corner first."""
  c = [boxes[..., i] for i in range(4)]
  if center:   # (x_center, y_center, width, height)
    return [c[1] - c[3] / 2, c[0] - c[2] / 2, c[1] + c[3] / 2, c[0] + c[2] / 2]
  return [c[0].minimum(c[2]), c[1].minimum(c[3]), c[0].maximum(c[2]), c[1].maximum(c[3])]


@op("NonMaxSuppression")
def nms(n):
  """Greedy per-class NMS into a fixed buffer: max_output_boxes_per_class (a compile-time constant) selections for
  every (batch, class), each the best remaining box, suppressing the rest above the IoU threshold. The selected
  (batch, class, box) rows come first in onnxruntime's order; the B*C*max rows after them are -1 (the count is the
  number of rows >= 0)."""
  boxes, scores = n.tensor(0), n.tensor(1)
  batch, classes, count = scores.shape
  limit = min(int(n.static(2).reshape(-1)[0]) if n.has(2) else 0, count)
  iou_thr = float(n.static(3).reshape(-1)[0]) if n.has(3) else 0.0
  if limit <= 0: return np.zeros((0, 3), np.int64)
  y1, x1, y2, x2 = (c.unsqueeze(1) for c in _corners(boxes.float(), bool(n.get("center_point_box", 0))))  # (B,1,N)
  area = (y2 - y1) * (x2 - x1)
  scores = scores.float()
  alive = scores > float(n.static(4).reshape(-1)[0]) if n.has(4) else Tensor.full(scores.shape, True, np.bool_)
  box_ids = Tensor(np.arange(count, dtype=np.int64))
  picks, valid = [], []
  for _ in range(limit):
    best = alive.where(scores, -math.inf).argmax(-1, keepdim=True).cast(np.int64)   # (B,C,1), first on ties
    ok = alive.cast(np.int32).max(-1, keepdim=True) > 0                            # any box left
    hot = box_ids.eq(best)                                                          # (B,C,N)
    sel = [select_sum(hot, c.expand(*hot.shape)).unsqueeze(-1) for c in (y1, x1, y2, x2)]
    inter = ((y2.minimum(sel[2]) - y1.maximum(sel[0])).maximum(0) * (x2.minimum(sel[3]) - x1.maximum(sel[1])).maximum(0))
    union = area + (sel[2] - sel[0]) * (sel[3] - sel[1]) - inter
    overlap = (inter > 0).logical_and(union > 0).logical_and(inter > union * iou_thr)
    alive = alive.logical_and(hot.logical_not()).logical_and(overlap.logical_not())
    picks.append(best)
    valid.append(ok)
  picks, valid = Tensor.cat(*picks, axis=2).reshape(-1), Tensor.cat(*valid, axis=2).reshape(-1)   # (B*C*limit,)
  rows = np.stack(np.meshgrid(np.arange(batch), np.arange(classes), np.arange(limit), indexing="ij"), -1).reshape(-1, 3)
  triples = Tensor.cat(Tensor(rows[:, :2].astype(np.int64)), picks.unsqueeze(-1), axis=1)                # (R, 3)
  total = len(rows)
  position = valid.cast(np.int32).cumsum(0) - 1                                     # where each valid row goes
  hot = position.unsqueeze(0).eq(Tensor(np.arange(total, dtype=np.int32).reshape(-1, 1))).logical_and(valid.unsqueeze(0))
  filled = hot.cast(np.int32).max(-1, keepdim=True) > 0                             # (R, 1)
  packed = select_sum(hot.unsqueeze(1), triples.permute(1, 0).unsqueeze(0).expand(total, 3, total))
  return filled.where(packed, Tensor.full((), -1, np.int64))


@op("GridSample")
def grid_sample(n):
  """GridSample over any number of spatial axes: linear, nearest or cubic; zeros, border or reflection padding. Each
  output point's taps become one weight row over the input's pixels, applied as a reduce (data-dependent positions,
  fixed shapes)."""
  x, grid = n.tensor(0), n.tensor(1)
  mode = {"linear": "bilinear", "cubic": "bicubic"}.get(n.get("mode", "bilinear"), n.get("mode", "bilinear"))
  padding, align = n.get("padding_mode", "zeros"), bool(n.get("align_corners", 0))
  if mode not in ("bilinear", "nearest", "bicubic"): raise NotImplementedError(f"GridSample mode {mode!r}")
  if padding not in ("zeros", "border", "reflection"): raise NotImplementedError(f"GridSample padding_mode {padding!r}")
  batch, channels, *size = x.shape
  out_size, nd = grid.shape[1:-1], len(size)
  points, pixels = math.prod(out_size), math.prod(size)
  grid = grid.float().reshape(batch, points, 1, nd)
  strides = [math.prod(size[k + 1:]) for k in range(nd)]
  pixel = Tensor(np.arange(pixels, dtype=np.int32).reshape(1, 1, -1))

  def coordinate(k):   # spatial axis k reads grid component nd-1-k (x is the last axis)
    d, g = size[k], grid[..., nd - 1 - k]
    pos = (g + 1) * ((d - 1) / 2) if align else ((g + 1) * d - 1) / 2
    lo, hi = (0.0, d - 1.0) if align else (-0.5, d - 0.5)
    if padding == "border": return pos.clip(0, d - 1)
    return _reflect(pos, lo, hi) if padding == "reflection" else pos

  def taps(k):   # [(index, weight)] along axis k
    pos = coordinate(k)
    if mode == "nearest": return [(pos.round(), 1.0)]
    base = pos.floor()
    t = pos - base
    if mode == "bilinear": return [(base, 1 - t), (base + 1, t)]
    a = -0.75
    w = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a, ((a + 2) * t - (a + 3)) * t * t + 1,
         ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1]
    return [(base - 1, w[0]), (base, w[1]), (base + 1, w[2]), (base + 2, 1 - w[0] - w[1] - w[2])]

  def place(k, index):   # (flat offset part, inside) for a tap index along axis k
    d = size[k]
    if padding == "zeros": return index * strides[k], (index >= 0).logical_and(index <= d - 1)
    if padding == "reflection" and mode == "bicubic":
      lo, hi = (0.0, d - 1.0) if align else (-0.5, d - 0.5)
      index = _reflect(index, lo, hi).floor()
    return index.clip(0, d - 1) * strides[k], None

  weights = None
  per_axis = [taps(k) for k in range(nd)]
  for combo in np.ndindex(*[len(t) for t in per_axis]):
    offset, inside, weight = 0, None, 1.0
    for k, j in enumerate(combo):
      index, w = per_axis[k][j]
      part, ok = place(k, index)
      offset, weight = offset + part, weight * w
      if ok is not None: inside = ok if inside is None else inside.logical_and(ok)
    hit = pixel.eq(offset.cast(np.int32))
    if inside is not None: hit = hit.logical_and(inside)
    term = hit.where(weight, 0.0)
    weights = term if weights is None else weights + term     # (B, P, Q)
  out = (x.float().reshape(batch, channels, 1, pixels) * weights.reshape(batch, 1, points, pixels)).sum(-1)
  return out.reshape(batch, channels, *out_size).cast(x.dtype)


def _reflect(pos: Tensor, lo: float, hi: float) -> Tensor:
  """pos folded back into [lo, hi] by reflecting at the borders as often as needed."""
  span = hi - lo
  if span <= 0: return Tensor.full(pos.shape, lo, pos.dtype)

  def fold(dx, near, far):   # dx >= 0 past the `near` border
    k = (dx / span).floor()
    r = dx - k * span
    even = (k - (k / 2).floor() * 2).eq(0)
    return even.where(near + r if near == lo else near - r, far - r if far == hi else far + r)
  below, above = pos < lo, pos > hi
  return below.where(fold(lo - pos, lo, hi), above.where(fold(pos - hi, hi, lo), pos))


# ---------------------------------------------------------------- inverse trigonometry (no primitive: a polynomial)
def atan(x: Tensor) -> Tensor:
  """Cephes' single-precision arctangent: |x| reduced to [0, tan(pi/8)] around 0, pi/4 or pi/2, then an odd
  polynomial (about 1e-7 relative error)."""
  x = x._float()
  a = x.abs()
  big, mid = a > 2.414213562373095, a > 0.4142135623730950
  t = big.where(-1 / a, mid.where((a - 1) / (a + 1), a))
  base = big.where(math.pi / 2, mid.where(math.pi / 4, 0.0))
  z = t * t
  r = base + (((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1) * z * t + t
  return (x < 0).where(-r, r)


OPS["Atan"] = lambda n: cast(np.arctan(n.inputs[0]) if not is_tensor(n.inputs[0]) else atan(n.tensor(0)), n.inputs[0].dtype)
OPS["Asin"] = lambda n: cast(np.arcsin(n.inputs[0]) if not is_tensor(n.inputs[0]) else
                             atan(n.tensor(0) / ((1 - n.tensor(0)) * (1 + n.tensor(0))).sqrt()), n.inputs[0].dtype)
OPS["Acos"] = lambda n: cast(np.arccos(n.inputs[0]) if not is_tensor(n.inputs[0]) else
                             atan(((1 - n.tensor(0)) / (1 + n.tensor(0))).sqrt()) * 2, n.inputs[0].dtype)


# ---------------------------------------------------------------- sequence-model blocks
@op("SwiGLU")
def swiglu(n):
  a, b = n.tensor(0), n.tensor(1)
  return (a * (a * n.get("alpha", 1.0)).sigmoid() * b).cast(a.dtype)


@op("CausalConvWithState")
def causal_conv_with_state(n):
  """Depthwise causal conv1d over [past_state, input] (k-1 zeros without a state); present_state is the last k-1
  positions of that concatenation. k shifted products, summed."""
  x, w = n.tensor(0), n.tensor(1)
  batch, channels, length = x.shape
  k = w.shape[2]
  past = n.tensor(3) if n.has(3) else Tensor.full((batch, channels, k - 1), 0, x.dtype)
  padded = Tensor.cat(past.cast(x.dtype), x, axis=2).float()
  out = None
  for j in range(k):
    term = padded[:, :, j:j + length] * w[:, 0, j].float().reshape(1, channels, 1)
    out = term if out is None else out + term
  if n.has(2): out = out + n.tensor(2).float().reshape(1, channels, 1)
  if n.get("activation", "none") in ("silu", "swish"): out = out * out.sigmoid()
  elif n.get("activation", "none") != "none": raise NotImplementedError(f"activation {n.get('activation')!r}")
  return out.cast(x.dtype), padded[:, :, padded.shape[2] - (k - 1):].cast(x.dtype)


@op("LinearAttention")
def linear_attention(n):
  """The recurrence (linear, gated, delta, gated_delta) unrolled over the (static) sequence length."""
  q, k, v = (n.tensor(i) for i in range(3))
  hq, hkv, rule = n.get("q_num_heads"), n.get("kv_num_heads"), n.get("update_rule", "gated_delta")
  if not hq or not hkv or hq % hkv: raise ValueError(f"q_num_heads {hq} must be a positive multiple of kv_num_heads {hkv}")
  batch, steps, _ = q.shape
  dk, dv, group = q.shape[-1] // hq, v.shape[-1] // hkv, hq // hkv

  def heads(t, h): return t.float().reshape(batch, steps, h, -1).permute(0, 2, 1, 3)   # (B, H, T, D)
  q4, k4, v4 = heads(q, hq), heads(k, hkv), heads(v, hkv)
  decay = heads(n.tensor(4), hkv) if n.has(4) else None
  beta = n.tensor(5).float().reshape(batch, steps, -1, 1).permute(0, 2, 1, 3) if n.has(5) else None
  if (decay is None) == (rule in ("gated", "gated_delta")) or (beta is None) == (rule in ("delta", "gated_delta")):
    raise ValueError(f"update_rule {rule!r} does not match the decay/beta inputs given")
  state = n.tensor(3).float() if n.has(3) else Tensor.full((batch, hkv, dk, dv), 0, np.float32)
  scale = n.get("scale", 0.0) or 1 / math.sqrt(dk)
  outs = []
  for t in range(steps):
    k_t, v_t = k4[:, :, t], v4[:, :, t]
    if decay is not None: state = state * decay[:, :, t].exp().unsqueeze(-1)
    if beta is not None: v_t = beta[:, :, t] * (v_t - (state * k_t.unsqueeze(-1)).sum(2))
    state = state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
    read = state if group == 1 else state.unsqueeze(2).expand(batch, hkv, group, dk, dv).reshape(batch, hq, dk, dv)
    outs.append((q4[:, :, t].unsqueeze(-1) * read).sum(2) * scale)            # (B, Hq, dv)
  out = Tensor.stack(outs, axis=2).permute(0, 2, 1, 3).reshape(batch, steps, hq * dv)
  return out.cast(q.dtype), state.cast(n.inputs[3].dtype if n.has(3) else q.dtype).contiguous()


@op("TensorScatter")
def tensor_scatter(n):
  """present = past with `update` written along `axis` from each batch's write index (modulo the length when
  circular): each cache position picks its update position by a one-hot compare."""
  past, update = n.tensor(0), n.tensor(1)
  axis = axis_of(n.get("axis", -2), past.ndim)
  if axis == 0: raise ValueError("TensorScatter along the batch axis")
  size, length = past.shape[axis], update.shape[axis]
  starts = n.tensor(2).cast(np.int64) if n.has(2) else Tensor.full((past.shape[0],), 0, np.int64)
  pl, back = _last_axis(past, axis)
  ul, _ = _last_axis(update, axis)
  rel = Tensor(np.arange(size, dtype=np.int64)).reshape(1, -1) - starts.reshape(-1, 1)            # (B, M)
  if n.get("mode", "linear") == "circular": rel = rel.mod(size)
  rel = rel.reshape(past.shape[0], *[1] * (pl.ndim - 2), size, 1)
  hot = rel.eq(Tensor(np.arange(length, dtype=np.int64)))                                           # (B, 1.., M, L)
  picked = select_sum(hot, ul.unsqueeze(-2).expand(*pl.shape, length))
  written = hot.cast(np.int32).max(-1) > 0
  return permute(written.where(picked, pl), back)


@op("AffineGrid")
def affine_grid(n):
  """Sampling positions theta @ [x, y, (z,) 1] over an evenly spaced grid in [-1, 1] (size known at compile time)."""
  theta = n.tensor(0)
  size = [int(s) for s in n.static(1).reshape(-1)]
  spatial, align = size[2:], bool(n.get("align_corners", 0))

  def axis(d):
    if align: return np.linspace(-1, 1, d) if d > 1 else np.array([-1.0])
    return (2 * np.arange(d) + 1) / d - 1
  mesh = np.meshgrid(*[axis(d) for d in spatial], indexing="ij")             # per axis, (D,) H, W
  base = np.stack([*reversed(mesh), np.ones_like(mesh[0])], -1).reshape(-1, len(spatial) + 1).astype(np.float32)
  grid = (theta.float().unsqueeze(1) * Tensor(base).reshape(1, -1, 1, len(spatial) + 1)).sum(-1)   # (N, P, nd)
  return grid.reshape(theta.shape[0], *spatial, len(spatial)).cast(theta.dtype)


# ---------------------------------------------------------------- spectra
@op("DFT")
def dft(n):
  """DFT along one axis as a product with cos/sin matrices (the length is static): real (..., 1) or complex (..., 2)
  input, complex output; onesided keeps the first L//2+1 bins, inverse conjugates and divides by L."""
  x = n.tensor(0)
  axis = int(n.static(2).reshape(-1)[0]) if n.opset >= 20 and n.has(2) else n.get("axis", 1)
  axis = axis_of(axis, x.ndim)
  if axis == x.ndim - 1: raise ValueError("DFT along the last (real/imaginary) axis")
  length = int(n.static(1).reshape(-1)[0]) if n.has(1) else x.shape[axis]
  inverse, onesided = bool(n.get("inverse", 0)), bool(n.get("onesided", 0))
  parts = [x[..., i] for i in range(x.shape[-1])]                      # real (and imaginary)
  size = parts[0].shape[axis]
  if length != size:   # zero-pad or truncate along the axis
    bounds = [(0, min(length, size)) if a == axis else (0, s) for a, s in enumerate(parts[0].shape)]
    pad = [(0, max(length - size, 0)) if a == axis else (0, 0) for a in range(parts[0].ndim)]
    parts = [p.shrink(bounds).pad(pad) for p in parts]
  bins = length // 2 + 1 if onesided else length
  angle = (-1 if not inverse else 1) * 2 * np.pi * np.outer(np.arange(bins), np.arange(length)) / length
  scale = 1 / length if inverse else 1.0
  cos, sin = (Tensor((f(angle) * scale).astype(np.float32)) for f in (np.cos, np.sin))   # (K, L)
  moved = [_last_axis(p.float(), axis)[0].unsqueeze(-2) for p in parts]                   # (..., 1, L)
  re = (moved[0] * cos).sum(-1)
  im = (moved[0] * sin).sum(-1)
  if len(moved) > 1: re, im = re - (moved[1] * sin).sum(-1), im + (moved[1] * cos).sum(-1)
  back = _last_axis(parts[0], axis)[1]
  return Tensor.stack([permute(re, back), permute(im, back)], axis=-1).cast(x.dtype)
