"""The front end: a lazy, numpy-like Tensor. Every method builds primitive-op Nodes (edgeml/ops.py); composed
operations (matmul, conv, pooling, softmax, norms, activations) are written here in terms of those primitives.
Nothing runs until `.numpy()` or `.realize()`."""
from __future__ import annotations
import math
import numpy as np
from edgeml.ops import Op
from edgeml.lazy import Node, view, contiguous_strides
from edgeml.realize import realize
from edgeml.opt import CHANNEL_BLOCK

Shape = tuple[int, ...]
BOOL, INT32, FLOAT32 = np.dtype(np.bool_), np.dtype(np.int32), np.dtype(np.float32)


def _python_dtype(value) -> np.dtype:
  return BOOL if isinstance(value, (bool, np.bool_)) else INT32 if isinstance(value, (int, np.integer)) else FLOAT32


def _promote(a: np.dtype, b: np.dtype) -> np.dtype:
  if a == b: return a
  if a.kind == "b" or b.kind == "b": return b if a.kind == "b" else a
  if (a.kind == "f") != (b.kind == "f"): return a if a.kind == "f" else b
  return np.promote_types(a, b)


def _argfix(*shape) -> tuple:
  return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)


class Tensor:
  __slots__ = ("node",)

  def __init__(self, data, dtype=None):
    if isinstance(data, Node):
      self.node = data
      return
    if isinstance(data, Tensor):
      self.node = data.node if dtype is None else data.cast(dtype).node
      return
    if isinstance(data, np.ndarray):
      arr = data.astype(dtype) if dtype is not None else data
    else:
      arr = np.asarray(data)
      arr = arr.astype(dtype if dtype is not None else
                       {"f": FLOAT32, "i": INT32, "u": INT32, "b": BOOL}.get(arr.dtype.kind, arr.dtype))
    if arr.dtype.kind not in "fiub": raise TypeError(f"cannot make a Tensor from dtype {arr.dtype}")
    node = Node(Op.BUFFER, (), None, arr.shape, arr.dtype)
    # the data stays on the host (a private copy) until a kernel reads it (edgeml/realize.py uploads it then)
    node.set_buffer(np.array(arr, order="C", copy=True) if arr is data else np.ascontiguousarray(arr))
    self.node = node

  # ---- properties and running
  @property
  def shape(self) -> Shape: return self.node.shape
  @property
  def dtype(self) -> np.dtype: return self.node.dtype
  @property
  def ndim(self) -> int: return len(self.shape)
  @property
  def size(self) -> int: return self.node.size
  def __len__(self): return self.shape[0]
  def __repr__(self): return f"<Tensor {self.shape} {self.dtype}>"

  def realize(self) -> Tensor:
    realize([self.node])
    return self

  @staticmethod
  def realize_all(*tensors: Tensor) -> None:
    realize([t.node for t in tensors])

  def numpy(self) -> np.ndarray:
    if self.node.op is not Op.BUFFER: self.realize()
    if self.node.buffer is None: raise ValueError(f"input {self.node.arg!r} {self.shape} is a placeholder without data")
    from edgeml.host_eval import host_data
    host = host_data(self.node)
    return host.astype(np.bool_) if self.dtype.kind == "b" else host.copy()

  def tolist(self): return self.numpy().tolist()
  def item(self): return self.numpy().item()

  # ---- creation
  @staticmethod
  def full(shape, value, dtype=None) -> Tensor:
    dtype = np.dtype(dtype) if dtype is not None else _python_dtype(value)
    const = Node(Op.CONST, (), dtype.type(value).item(), (), dtype)
    shape = tuple(shape)
    return Tensor(view(const, shape, (0,) * len(shape)))
  @staticmethod
  def zeros(*shape, dtype=FLOAT32) -> Tensor: return Tensor.full(_argfix(*shape), 0, dtype)
  @staticmethod
  def ones(*shape, dtype=FLOAT32) -> Tensor: return Tensor.full(_argfix(*shape), 1, dtype)
  @staticmethod
  def arange(start, stop=None, step=1, dtype=None) -> Tensor:
    if stop is None: start, stop = 0, start
    values = np.arange(start, stop, step)
    return Tensor(values, dtype if dtype is not None else INT32 if values.dtype.kind == "i" else FLOAT32)
  def full_like(self, value) -> Tensor: return Tensor.full(self.shape, value, self.dtype)

  # ---- primitive builders
  def _op(self, op: Op, *others: Tensor, dtype=None, arg=None) -> Tensor:
    return Tensor(Node(op, (self.node, *(o.node for o in others)), arg, self.shape, dtype or self.dtype))

  def _const(self, value, dtype=None) -> Tensor:
    return Tensor.full(self.shape, value, dtype or self.dtype)

  def _broadcast(self, other, reverse=False) -> tuple[Tensor, Tensor]:
    if not isinstance(other, Tensor):
      other_dtype = _python_dtype(other)
      dtype = self.dtype if other_dtype.kind == "b" or other_dtype.kind == self.dtype.kind or \
        (other_dtype.kind == "i" and self.dtype.kind in "fu") else _promote(self.dtype, other_dtype)
      x = self.cast(dtype)
      y = x._const(other)
    else:
      dtype = _promote(self.dtype, other.dtype)
      shape = broadcast_shape(self.shape, other.shape)
      x, y = self.cast(dtype).expand_to(shape), other.cast(dtype).expand_to(shape)
    return (y, x) if reverse else (x, y)

  def _binary(self, op: Op, other, reverse=False, dtype=None) -> Tensor:
    x, y = self._broadcast(other, reverse)
    return x._op(op, y, dtype=dtype)

  # ---- elementwise
  def cast(self, dtype) -> Tensor:
    """numpy's astype, with one rule where numpy is platform-specific: float to int truncates toward zero, and values
    out of the int type's range saturate to its min/max, NaN to 0. Int to int keeps the low bits (wraps)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "fiub": raise TypeError(f"cannot cast a Tensor to dtype {dtype}")
    return self if dtype == self.dtype else self._op(Op.CAST, dtype=dtype)
  astype = cast
  def float(self) -> Tensor: return self.cast(FLOAT32)

  def _float(self) -> Tensor: return self if self.dtype.kind == "f" else self.float()
  def neg(self) -> Tensor: return self._op(Op.NEG) if self.dtype.kind != "b" else self.logical_not()
  def exp(self) -> Tensor: return self._float()._op(Op.EXP)
  def log(self) -> Tensor: return self._float()._op(Op.LOG)
  def sqrt(self) -> Tensor: return self._float()._op(Op.SQRT)
  def sin(self) -> Tensor: return self._float()._op(Op.SIN)
  def cos(self) -> Tensor: return (self._float() + math.pi / 2).sin()
  def tan(self) -> Tensor: return self.sin() / self.cos()
  def floor(self) -> Tensor: return self._op(Op.FLOOR) if self.dtype.kind == "f" else self
  def ceil(self) -> Tensor: return -(-self).floor()
  def trunc(self) -> Tensor: return (self < 0).where(self.ceil(), self.floor())
  def round(self) -> Tensor:
    """Half to even, like numpy."""
    r = (self + 0.5).floor()
    tie_to_odd = ((r - self) == 0.5).logical_and((r % 2) != 0)
    return tie_to_odd.where(r - 1, r)
  def reciprocal(self) -> Tensor: return self._float()._binary(Op.DIV, 1.0, reverse=True)
  def abs(self) -> Tensor: return self.maximum(-self) if self.dtype.kind != "u" else self
  def sign(self) -> Tensor: return (self > 0).cast(self.dtype) - (self < 0).cast(self.dtype)
  def square(self) -> Tensor: return self * self

  def add(self, other, reverse=False) -> Tensor:
    x, y = self._broadcast(other, reverse)
    return x.logical_or(y) if x.dtype == BOOL else x._op(Op.ADD, y)   # bool + bool is or in numpy, never 2
  def sub(self, other, reverse=False) -> Tensor:
    x, y = self._broadcast(other, reverse)
    return x + (-y)
  def mul(self, other, reverse=False) -> Tensor: return self._binary(Op.MUL, other, reverse)
  def div(self, other, reverse=False) -> Tensor:
    x, y = self._broadcast(other, reverse)
    return x._float()._op(Op.DIV, y._float())
  def idiv(self, other, reverse=False) -> Tensor:
    """Division truncating toward zero for integers (C semantics), plain division for floats."""
    return self._binary(Op.DIV, other, reverse)
  def fmod(self, other, reverse=False) -> Tensor:
    """Remainder with the sign of the dividend (C fmod)."""
    return self._binary(Op.MOD, other, reverse)
  def mod(self, other, reverse=False) -> Tensor:
    """Remainder with the sign of the divisor (numpy/python %); a zero integer divisor gives 0, as in numpy."""
    x, y = self._broadcast(other, reverse)
    r = x.fmod(y)
    return ((r != 0).logical_and((r < 0) != (y < 0))).where(r + y, r)
  def floordiv(self, other, reverse=False) -> Tensor:
    """numpy's //: the quotient rounded toward minus infinity. Integers: exact, a zero divisor gives 0 and
    INT_MIN // -1 wraps to INT_MIN (numpy's answers). Floats: numpy's algorithm ((x - fmod(x, y)) / y, corrected)."""
    x, y = self._broadcast(other, reverse)
    if x.dtype.kind == "b": x, y = x.cast(np.int8), y.cast(np.int8)
    r = x.fmod(y)
    wrong_sign = (r != 0).logical_and((r < 0) != (y < 0))
    if x.dtype.kind != "f":
      q = x.idiv(y)
      return wrong_sign.where(q - 1, q)
    q = wrong_sign.where((x - r) / y - 1, (x - r) / y)
    f = q.floor()
    return y.eq(0).where(x / y, (q - f > 0.5).where(f + 1, f))
  def lshift(self, amount) -> Tensor:
    """x << amount for integers, wrapping; amounts outside [0, bits) give 0 (numpy's answer; C leaves it undefined).
    Exact: x times 2**amount, built from the amount's bits with selects of integer constants (no float pow)."""
    x, s = self._broadcast(amount)
    return x._shift_in_range(s).where(x * x._power_of_two(s), 0)
  def rshift(self, amount) -> Tensor:
    """x >> amount for integers, arithmetic (sign-filling) for signed ones like numpy; amounts outside [0, bits) shift
    everything out (0, or -1 for a negative signed x)."""
    x, s = self._broadcast(amount)
    if x.dtype.kind == "i":   # ~x >= 0 for negative x, and x >> s == ~(~x >> s): shift a non-negative value unsigned
      negative, unsigned = x < 0, np.dtype(f"u{x.dtype.itemsize}")
      shifted = negative.where(x ^ -1, x).cast(unsigned).rshift(s.cast(unsigned)).cast(x.dtype)
      return negative.where(shifted ^ -1, shifted)
    return x._shift_in_range(s).where(x.idiv(x._power_of_two(s)), 0)
  def _shift_in_range(self, s: Tensor) -> Tensor:
    bits = self.dtype.itemsize * 8
    return (s < bits).logical_and(s >= 0) if s.dtype.kind == "i" else s < bits
  def _power_of_two(self, s: Tensor) -> Tensor:
    """2**(s mod bits) in self's dtype: the product of 2**(2**k) over the set bits k of s (wrapping at the sign bit)."""
    p = Tensor.full((), 1, self.dtype)
    for k in range((self.dtype.itemsize * 8).bit_length() - 1):
      p = p * (s & (1 << k)).ne(0).where(Tensor.full((), 1 << (1 << k), self.dtype), Tensor.full((), 1, self.dtype))
    return p
  def pow(self, other, reverse=False) -> Tensor:
    x, y = self._broadcast(other, reverse)
    if x.dtype.kind == "f": return x._op(Op.POW, y)
    return x.float()._op(Op.POW, y.float()).round().cast(x.dtype)
  def maximum(self, other) -> Tensor:
    if self.dtype.kind == "b": return self.logical_or(other)
    return self._binary(Op.MAX, other)
  def minimum(self, other) -> Tensor:
    x, y = self._broadcast(other)
    if x.dtype.kind == "b": return x.logical_and(y)
    return (x < y).where(x, y)
  def clip(self, lo=None, hi=None) -> Tensor:
    out = self
    if lo is not None: out = out.maximum(lo)
    if hi is not None: out = out.minimum(hi)
    return out

  def __lt__(self, other): return self._binary(Op.CMPLT, other, dtype=BOOL)
  def __gt__(self, other): return self._binary(Op.CMPLT, other, reverse=True, dtype=BOOL)
  def __le__(self, other): return (self > other).logical_not()
  def __ge__(self, other): return (self < other).logical_not()
  def eq(self, other): return self._binary(Op.CMPEQ, other, dtype=BOOL)
  def ne(self, other): return self.eq(other).logical_not()
  __eq__, __ne__ = eq, ne  # type: ignore[assignment]
  __hash__ = object.__hash__

  def _logic(self, op: Op, other) -> Tensor:
    """AND/OR/XOR on truth values: both sides become bool first."""
    return self.cast(BOOL)._binary(op, other.cast(BOOL) if isinstance(other, Tensor) else bool(other))
  def logical_and(self, other): return self._logic(Op.AND, other)
  def logical_or(self, other): return self._logic(Op.OR, other)
  def logical_xor(self, other): return self._logic(Op.XOR, other)
  def logical_not(self): return self.cast(BOOL)._op(Op.XOR, self._const(True, BOOL))
  def bitwise_and(self, other): return self._binary(Op.AND, other)
  def bitwise_or(self, other): return self._binary(Op.OR, other)
  def bitwise_xor(self, other): return self._binary(Op.XOR, other)

  def where(self, a, b) -> Tensor:
    """self ? a : b, broadcasting all three."""
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
      a = Tensor.full((), a, _promote(_python_dtype(a), _python_dtype(b)))
    a, b = (a, _scalar_like(b, a)) if isinstance(a, Tensor) else (_scalar_like(a, b), b)
    dtype = _promote(a.dtype, b.dtype)
    shape = broadcast_shape(self.shape, a.shape, b.shape)
    cond = self.cast(BOOL).expand_to(shape)
    return Tensor(Node(Op.WHERE, (cond.node, a.cast(dtype).expand_to(shape).node, b.cast(dtype).expand_to(shape).node),
                       None, shape, dtype))

  __add__ = add
  def __radd__(self, o): return self.add(o, True)
  __sub__ = sub
  def __rsub__(self, o): return self.sub(o, True)
  __mul__ = mul
  def __rmul__(self, o): return self.mul(o, True)
  __truediv__ = div
  def __rtruediv__(self, o): return self.div(o, True)
  __mod__ = mod
  def __rmod__(self, o): return self.mod(o, True)
  __floordiv__ = floordiv
  def __rfloordiv__(self, o): return self.floordiv(o, True)
  __lshift__, __rshift__ = lshift, rshift
  __pow__ = pow
  def __rpow__(self, o): return self.pow(o, True)
  def __neg__(self): return self.neg()
  def __matmul__(self, o): return self.matmul(o)
  def __and__(self, o): return self.logical_and(o) if self.dtype.kind == "b" else self.bitwise_and(o)
  def __or__(self, o): return self.logical_or(o) if self.dtype.kind == "b" else self.bitwise_or(o)
  def __xor__(self, o): return self.logical_xor(o) if self.dtype.kind == "b" else self.bitwise_xor(o)
  def __invert__(self): return self.logical_not()

  # ---- movement
  def _axis(self, axis: int, ndim: int | None = None) -> int:
    ndim = self.ndim if ndim is None else ndim
    if not isinstance(axis, (int, np.integer)) or not -max(ndim, 1) <= axis < max(ndim, 1):
      raise ValueError(f"axis {axis} is out of range for a tensor of shape {self.shape} ({ndim} dims)")
    return int(axis) % max(ndim, 1)

  def reshape(self, *shape) -> Tensor:
    shape = list(_argfix(*shape))
    if shape.count(-1) > 1: raise ValueError(f"reshape {tuple(shape)}: only one dimension can be -1")
    if -1 in shape:
      known = math.prod(s for s in shape if s != -1)
      if known == 0 or self.size % known: raise ValueError(f"cannot reshape {self.shape} into {tuple(shape)}")
      shape[shape.index(-1)] = self.size // known
    if math.prod(shape) != self.size or any(s < 0 for s in shape):
      raise ValueError(f"cannot reshape {self.shape} ({self.size} elements) into {tuple(shape)}")
    return Tensor(view(self.node, shape, contiguous_strides(shape)))

  def permute(self, *order) -> Tensor:
    order = tuple(self._axis(a) for a in _argfix(*order))
    if sorted(order) != list(range(self.ndim)): raise ValueError(f"permute {order} is not a permutation of the axes of {self.shape}")
    strides = contiguous_strides(self.shape)
    return Tensor(view(self.node, [self.shape[a] for a in order], [strides[a] for a in order]))

  def transpose(self, a=-2, b=-1) -> Tensor:
    order = list(range(self.ndim))
    a, b = self._axis(a), self._axis(b)
    order[a], order[b] = order[b], order[a]
    return self.permute(order)
  @property
  def T(self) -> Tensor: return self.permute(tuple(reversed(range(self.ndim))))

  def expand(self, *shape) -> Tensor:
    shape = tuple(s if s != -1 else self.shape[i - (len(shape) - self.ndim)] for i, s in enumerate(_argfix(*shape)))
    return self.expand_to(shape)

  def expand_to(self, shape) -> Tensor:
    shape = tuple(shape)
    if shape == self.shape: return self
    if len(shape) < self.ndim: raise ValueError(f"cannot broadcast {self.shape} to {shape}")
    x = self.reshape((1,) * (len(shape) - self.ndim) + self.shape)
    if any(a != b and a != 1 for a, b in zip(x.shape, shape)): raise ValueError(f"cannot broadcast {self.shape} to {shape}")
    strides = [0 if a != b else st for a, b, st in zip(x.shape, shape, contiguous_strides(x.shape))]
    return Tensor(view(x.node, shape, strides))

  def pad(self, padding, value=0.0) -> Tensor:
    """padding: ((before, after), ...) per axis, from the first axis; negative amounts crop."""
    padding = [tuple(p) for p in padding] + [(0, 0)] * (self.ndim - len(padding))
    if len(padding) != self.ndim: raise ValueError(f"pad {padding} has more axes than shape {self.shape}")
    crop = tuple((max(-b, 0), s - max(-a, 0)) for (b, a), s in zip(padding, self.shape))
    if any(lo > hi for lo, hi in crop): raise ValueError(f"pad {padding} crops more than shape {self.shape}")
    x = self.shrink(crop)
    grow = tuple((max(b, 0), max(a, 0)) for b, a in padding)
    if not any(b or a for b, a in grow): return x
    shape = tuple(s + b + a for s, (b, a) in zip(x.shape, grow))
    padded = Tensor(Node(Op.PAD, (x.node,), grow, shape, x.dtype))
    if value == 0: return padded
    inside = Tensor(Node(Op.PAD, (Tensor.full(x.shape, True).node,), grow, shape, BOOL))
    return inside.where(padded, Tensor.full((), value, x.dtype))

  def shrink(self, bounds) -> Tensor:
    """bounds: (start, end) per axis."""
    bounds = tuple(bounds)
    if all(b == (0, s) for b, s in zip(bounds, self.shape)): return self
    strides = contiguous_strides(self.shape)
    return Tensor(view(self.node, [e - b for b, e in bounds], strides, sum(b * st for (b, _), st in zip(bounds, strides))))

  def flip(self, *axes) -> Tensor:
    axes = {self._axis(a) for a in _argfix(*axes)}
    strides = contiguous_strides(self.shape)
    offset = sum((self.shape[a] - 1) * strides[a] for a in axes)
    return Tensor(view(self.node, self.shape, [-st if i in axes else st for i, st in enumerate(strides)], offset))

  def __getitem__(self, index) -> Tensor:
    """Basic indexing: ints, slices with steps (negative too), None and Ellipsis."""
    index = index if isinstance(index, tuple) else (index,)
    if sum(i is Ellipsis for i in index) > 1: raise IndexError("only one Ellipsis allowed")
    used = sum(1 for i in index if i is not None and i is not Ellipsis)
    if used > self.ndim: raise IndexError(f"too many indices ({used}) for tensor of shape {self.shape}")
    fill = (slice(None),) * (self.ndim - used)
    index = index[:index.index(Ellipsis)] + fill + index[index.index(Ellipsis) + 1:] if Ellipsis in index else index + fill
    shape, strides, offset, axis = [], [], 0, 0
    base = contiguous_strides(self.shape)
    for i in index:
      if i is None:
        shape.append(1); strides.append(0)
        continue
      size, st = self.shape[axis], base[axis]
      if isinstance(i, (int, np.integer)):
        if not -size <= i < size: raise IndexError(f"index {i} is out of bounds for axis {axis} with size {size}")
        offset += (int(i) % size) * st
      elif isinstance(i, slice):
        start, stop, step = i.indices(size)
        n = len(range(start, stop, step))
        shape.append(n); strides.append(st * step)
        offset += start * st if n else 0
      else: raise TypeError(f"unsupported index {i!r} (use gather for tensor indices)")
      axis += 1
    return Tensor(view(self.node, shape, strides, offset))

  def squeeze(self, axis=None) -> Tensor:
    if axis is None: return self.reshape([s for s in self.shape if s != 1])
    axes = {self._axis(a) for a in (axis if isinstance(axis, (tuple, list)) else (axis,))}
    for a in axes:
      if self.shape[a] != 1: raise ValueError(f"cannot squeeze axis {a} of size {self.shape[a]} in shape {self.shape}")
    return self.reshape([s for i, s in enumerate(self.shape) if i not in axes])

  def unsqueeze(self, axis: int) -> Tensor:
    axis = self._axis(axis, self.ndim + 1)
    return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])

  def flatten(self, start=0, end=-1) -> Tensor:
    if self.ndim == 0: return self.reshape(1)
    start, end = self._axis(start), self._axis(end)
    return self.reshape(self.shape[:start] + (math.prod(self.shape[start:end + 1]),) + self.shape[end + 1:])

  def cat(self, *others: Tensor, axis=0) -> Tensor:
    tensors = [self, *others]
    axis = self._axis(axis)
    for t in tensors:
      if t.ndim != self.ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, self.shape)) if i != axis):
        raise ValueError(f"cat along axis {axis}: shapes {[x.shape for x in tensors]} differ off that axis")
    dtype = tensors[0].dtype
    for t in tensors[1:]: dtype = _promote(dtype, t.dtype)
    total, start, out = sum(t.shape[axis] for t in tensors), 0, None
    for t in tensors:
      pads = [(0, 0)] * self.ndim
      pads[axis] = (start, total - start - t.shape[axis])
      start += t.shape[axis]
      part = t.cast(dtype).pad(pads)
      out = part if out is None else out + part
    return out

  @staticmethod
  def stack(tensors, axis=0) -> Tensor:
    axis = tensors[0]._axis(axis, tensors[0].ndim + 1)
    return Tensor.cat(*[t.unsqueeze(axis) for t in tensors], axis=axis)

  def split(self, sizes, axis=0) -> list[Tensor]:
    axis = self._axis(axis)
    if isinstance(sizes, int):
      sizes = [min(sizes, self.shape[axis] - s) for s in range(0, self.shape[axis], sizes)]
    if sum(sizes) != self.shape[axis]: raise ValueError(f"split sizes {list(sizes)} do not add up to {self.shape[axis]} on axis {axis} of {self.shape}")
    out, start = [], 0
    for s in sizes:
      bounds = [(0, n) for n in self.shape]
      bounds[axis] = (start, start + s)
      out.append(self.shrink(bounds))
      start += s
    return out

  def repeat(self, *repeats) -> Tensor:
    """Tile the tensor `repeats[i]` times along axis i (numpy.tile)."""
    repeats = _argfix(*repeats)
    x = self.reshape((1,) * (len(repeats) - self.ndim) + self.shape)
    inter = [d for s in x.shape for d in (1, s)]
    big = [d for r, s in zip(repeats, x.shape) for d in (r, s)]
    return x.reshape(inter).expand(big).reshape([r * s for r, s in zip(repeats, x.shape)])

  def contiguous(self) -> Tensor: return Tensor(Node(Op.CONTIGUOUS, (self.node,), None, self.shape, self.dtype))

  # ---- reductions
  def _axes(self, axis) -> tuple:
    if axis is None: return tuple(range(self.ndim))
    axes = tuple(self._axis(a) for a in (axis if isinstance(axis, (tuple, list)) else (axis,)))
    if len(set(axes)) != len(axes): raise ValueError(f"repeated axis in {axis} for shape {self.shape}")
    return axes

  def _reduce(self, op: Op, axis, keepdim: bool) -> Tensor:
    axes = self._axes(axis)
    shape = tuple(1 if i in axes else s for i, s in enumerate(self.shape))
    x = self
    if op is Op.SUM and x.dtype.kind == "b": x = x.cast(INT32)
    if any(self.shape[a] == 0 for a in axes):
      lowest = -math.inf if x.dtype.kind == "f" else False if x.dtype.kind == "b" else np.iinfo(x.dtype).min
      out = Tensor.full(shape, 0 if op is Op.SUM else lowest, x.dtype)
    elif not (folded := tuple(a for a in axes if self.shape[a] > 1)):
      out = x.reshape(shape)      # folding size-1 axes is a reshape, not a kernel
    elif len(folded) > 1 and math.prod(shape) < 16 and math.prod(self.shape[a] for a in folded[:-1]) >= 16:
      # very few outputs, long reduction: fold the last axis first, so the first kernel has enough parallel work
      # (fewer outputs than that are enough: a GPU target splits each output's reduce across a work-group)
      return x._reduce(op, folded[-1], True)._reduce(op, folded[:-1], True).reshape(
        shape if keepdim else [s for i, s in enumerate(shape) if i not in axes])
    else:
      out = Tensor(Node(op, (x.node,), folded, shape, x.dtype))
    return out if keepdim else out.reshape([s for i, s in enumerate(shape) if i not in axes])

  def sum(self, axis=None, keepdim=False) -> Tensor: return self._reduce(Op.SUM, axis, keepdim)
  def max(self, axis=None, keepdim=False) -> Tensor: return self._reduce(Op.RMAX, axis, keepdim)
  def min(self, axis=None, keepdim=False) -> Tensor:
    return self._reversed_order().max(axis, keepdim)._reversed_order()
  def _reversed_order(self) -> Tensor:
    """An order-reversing bijection of the dtype, its own inverse: -x for floats, not for bools, ~x (x ^ -1, i.e.
    -x-1, defined for every value) for signed ints and x ^ max for unsigned ones; negating INT_MIN would overflow."""
    if self.dtype.kind == "f": return -self
    if self.dtype.kind == "b": return self.logical_not()
    return self ^ Tensor.full((), -1 if self.dtype.kind == "i" else np.iinfo(self.dtype).max, self.dtype)
  def mean(self, axis=None, keepdim=False) -> Tensor:
    count = math.prod(self.shape[a] for a in self._axes(axis))
    return self._float().sum(axis, keepdim) / max(count, 1)
  def var(self, axis=None, keepdim=False, correction=0) -> Tensor:
    count = math.prod(self.shape[a] for a in self._axes(axis))
    diff = self._float() - self._float().mean(axis, keepdim=True)
    return (diff * diff).sum(axis, keepdim) / max(count - correction, 1)
  def std(self, axis=None, keepdim=False, correction=0) -> Tensor: return self.var(axis, keepdim, correction).sqrt()

  def prod(self, axis=None, keepdim=False) -> Tensor:
    """Exact products by pairwise halving (log2(n) fused multiply levels), no log/exp."""
    x, axes = self, self._axes(axis)
    for a in axes:
      while x.shape[a] > 1:
        if x.shape[a] % 2: x = x.pad([(0, 0)] * a + [(0, 1)], value=1)
        lo, hi = x.split(x.shape[a] // 2, axis=a)
        x = lo * hi
    return x if keepdim else x.reshape([s for i, s in enumerate(x.shape) if i not in axes])

  def argmax(self, axis=None, keepdim=False) -> Tensor:
    """Index of the first maximum (int32); over the flattened tensor when axis is None."""
    if axis is None: return self.flatten().argmax(0).reshape((1,) * self.ndim if keepdim else ())
    axis = self._axis(axis)
    n = self.shape[axis]
    rev = Tensor.arange(n, 0, -1).reshape([n if i == axis else 1 for i in range(self.ndim)])
    idx = n - self.eq(self.max(axis, keepdim=True)).where(rev, 0).max(axis, keepdim=True)
    return idx if keepdim else idx.squeeze(axis)
  def argmin(self, axis=None, keepdim=False) -> Tensor: return self._reversed_order().argmax(axis, keepdim)

  def cumsum(self, axis=0) -> Tensor:
    """Inclusive running sum: a windowed reduce over a zero-padded copy (one kernel)."""
    axis = self._axis(axis)
    n = self.shape[axis]
    x = self.transpose(axis, -1).pad([(0, 0)] * (self.ndim - 1) + [(n - 1, 0)])
    strides = contiguous_strides(x.shape)
    shape = x.shape[:-1] + (n, n)
    windows = Tensor(view(x.node, shape, strides[:-1] + (strides[-1], strides[-1])))
    return windows.sum(-1).transpose(axis, -1)

  # ---- composed operations
  def matmul(self, other: Tensor) -> Tensor:
    a, b = self, other
    if a.ndim == 0 or b.ndim == 0: raise ValueError(f"matmul needs at least 1-d operands, got {a.shape} and {b.shape}")
    a2 = a.reshape(1, a.shape[0]) if a.ndim == 1 else a
    b2 = b.reshape(b.shape[0], 1) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
      raise ValueError(f"matmul shape mismatch: {a.shape} @ {b.shape} (inner dimensions {a2.shape[-1]} != {b2.shape[-2]})")
    if b2.ndim == 2 and _worth_relayout(b2.size, math.prod(a2.shape[:-1]) * b2.size): b2 = _column_blocked(b2)
    batch = broadcast_shape(a2.shape[:-2], b2.shape[:-2])
    m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    prod = a2.reshape(*a2.shape[:-1], 1, k).expand_to(batch + (m, n, k)) * \
      b2.transpose(-1, -2).reshape(*b2.shape[:-2], 1, n, k).expand_to(batch + (m, n, k))
    out = prod.sum(-1)
    if a.ndim == 1: out = out.squeeze(-2)
    if b.ndim == 1: out = out.squeeze(-1)
    return out
  dot = matmul

  def linear(self, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias, weight shaped (out, in) as in torch."""
    out = self.matmul(weight.T)
    return out + bias if bias is not None else out

  def _windows(self, kernel, stride, dilation, spatial=None) -> Tensor:
    """(N, C, *spatial) -> (N, C, *out_spatial, *kernel): a strided view, no copy. `spatial`: the extent the windows
    cover (default the whole tensor; columns beyond it on the last axis are row padding, never read)."""
    spatial = spatial or self.shape[2:]
    outs = _window_outs(spatial, kernel, stride, dilation)
    if any(o <= 0 for o in outs):
      raise ValueError(f"window {tuple(kernel)} (dilation {tuple(dilation)}) does not fit input {self.shape}")
    base = contiguous_strides(self.shape)
    strides = base[:2] + tuple(b * st for b, st in zip(base[2:], stride)) + tuple(b * d for b, d in zip(base[2:], dilation))
    return Tensor(view(self.node, self.shape[:2] + tuple(outs) + tuple(kernel), strides))

  def conv2d(self, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """N-d convolution (1-d, 2-d, 3-d...) on (N, C, *spatial) with weight (Cout, C/groups, *kernel)."""
    nd = weight.ndim - 2
    if self.ndim != nd + 2: raise ValueError(f"conv input {self.shape} and weight {weight.shape} have different ranks")
    cin, cout, kernel = self.shape[1], weight.shape[0], weight.shape[2:]
    if cin % groups or cout % groups or weight.shape[1] * groups != cin:
      raise ValueError(f"conv: input channels {cin} of {self.shape}, weight {weight.shape} and groups={groups} do not match")
    stride, dilation = _tuple(stride, nd), _tuple(dilation, nd)
    pads = _conv_pads(padding, nd)
    x = self.pad([(0, 0), (0, 0)] + pads)
    n, cg, cog, spatial = x.shape[0], cin // groups, cout // groups, x.shape[2:]
    outs = _window_outs(spatial, kernel, stride, dilation)
    relayout = _worth_relayout(weight.size, n * weight.size * math.prod(outs))
    extra = -cout % CHANNEL_BLOCK if relayout and groups == 1 and cout >= 2 * CHANNEL_BLOCK else 0
    if extra and _is_constant(weight.node):   # zero channels up to a multiple of 8 (blocked weights), cropped off
      bias = bias.pad([(0, extra)]) if bias is not None else None
      out = self.conv2d(weight.pad([(0, extra)]), bias, stride, padding, dilation).contiguous()   # all in one buffer
      return out.pad([(0, 0), (0, -extra)])
    if x is not self and cog * math.prod(kernel) >= PREPAD_MIN_TAPS and relayout:
      # a padded copy, its rows padded to a multiple of 8 elements (the copy runs in vector lanes)
      x = self.pad([(0, 0), (0, 0)] + pads[:-1] + [(pads[-1][0], pads[-1][1] - spatial[-1] % -8)]).contiguous()
    win = x._windows(kernel, stride, dilation, spatial)                # (N, Cin, *O, *K)
    win = win.reshape(n, groups, 1, cg, *outs, *kernel)
    # move Cg next to the kernel axes: (N, G, 1, *O, Cg, *K)
    order = [0, 1, 2] + list(range(4, 4 + nd)) + [3] + list(range(4 + nd, 4 + 2 * nd))
    win = win.permute(order)
    w = (_channel_blocked(weight, groups) if relayout else weight).reshape(1, groups, cog, *([1] * nd), cg, *kernel)
    prod = win.expand_to(win.shape[:2] + (cog,) + win.shape[3:]) * w.expand_to((n, groups, cog) + tuple(outs) + (cg, *kernel))
    out = prod.sum(tuple(range(3 + nd, 4 + 2 * nd))).reshape(n, cout, *outs)
    if bias is not None: out = out + bias.reshape(1, cout, *([1] * nd))
    return out
  conv = conv2d

  def conv_transpose2d(self, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, output_padding=0,
                       dilation=1, groups=1) -> Tensor:
    """Transposed convolution with weight (Cin, Cout/groups, *kernel): a convolution over the input with zeros
    inserted between elements, using the flipped, transposed weight."""
    nd = weight.ndim - 2
    stride, dilation, out_pad = _tuple(stride, nd), _tuple(dilation, nd), _tuple(output_padding, nd)
    pads = _conv_pads(padding, nd)
    x = self
    for i, s in enumerate(stride):
      if s > 1: x = x._dilate(2 + i, s)
    cin, coutg, kernel = weight.shape[0], weight.shape[1], weight.shape[2:]
    w = weight.reshape(groups, cin // groups, coutg, *kernel).transpose(1, 2).reshape(groups * coutg, cin // groups, *kernel)
    w = w.flip(*range(2, 2 + nd))
    full = [(d * (k - 1) - b, d * (k - 1) - a + op) for (b, a), k, d, op in zip(pads, kernel, dilation, out_pad)]
    return x.conv2d(w, bias, 1, full, dilation, groups)

  def _dilate(self, axis: int, step: int) -> Tensor:
    """Insert step-1 zeros between elements along axis."""
    n = self.shape[axis]
    x = self.unsqueeze(axis + 1).pad([(0, 0)] * (axis + 1) + [(0, step - 1)])
    return x.reshape(*self.shape[:axis], n * step, *self.shape[axis + 1:]).shrink(
      [(0, s) if i != axis else (0, (n - 1) * step + 1) for i, s in enumerate(self.shape[:axis] + (n * step,) + self.shape[axis + 1:])])

  def _pool(self, kernel, stride, padding, dilation, value) -> Tensor:
    nd = len(kernel)
    x = self.pad([(0, 0)] * (self.ndim - nd) + _conv_pads(padding, nd), value=value)
    lead = x.shape[:-nd]
    x = x.reshape(-1, 1, *x.shape[-nd:])
    win = x._windows(kernel, _tuple(stride, nd), _tuple(dilation, nd))
    return win.reshape(*lead, *win.shape[2:])

  def max_pool2d(self, kernel_size=2, stride=None, padding=0, dilation=1) -> Tensor:
    nd = self.ndim - 2
    kernel = _tuple(kernel_size, nd)
    win = self._pool(kernel, stride if stride is not None else kernel, padding, dilation, -math.inf)
    return win.max(tuple(range(-nd, 0)))

  def avg_pool2d(self, kernel_size=2, stride=None, padding=0, count_include_pad=True) -> Tensor:
    nd = self.ndim - 2
    kernel = _tuple(kernel_size, nd)
    stride = stride if stride is not None else kernel
    total = self._pool(kernel, stride, padding, 1, 0.0).sum(tuple(range(-nd, 0)))
    if count_include_pad: return total / math.prod(kernel)
    ones = Tensor.ones(*self.shape[-nd:]).reshape(1, 1, *self.shape[-nd:])
    return total / ones._pool(kernel, stride, padding, 1, 0.0).sum(tuple(range(-nd, 0)))

  def softmax(self, axis=-1) -> Tensor:
    x = self._float()
    e = (x - x.max(axis, keepdim=True)).exp()
    return e / e.sum(axis, keepdim=True)

  def log_softmax(self, axis=-1) -> Tensor:
    x = self._float()
    shifted = x - x.max(axis, keepdim=True)
    return shifted - shifted.exp().sum(axis, keepdim=True).log()

  def layernorm(self, axis=-1, weight=None, bias=None, eps=1e-5) -> Tensor:
    x = self._float()
    axes = self._axes(axis)
    centered = x - x.mean(axes, keepdim=True)
    out = centered * ((centered * centered).mean(axes, keepdim=True) + eps).sqrt().reciprocal()
    if weight is not None: out = out * weight
    if bias is not None: out = out + bias
    return out

  def batchnorm(self, mean: Tensor, var: Tensor, weight=None, bias=None, eps=1e-5) -> Tensor:
    """Inference batch norm over axis 1 with running statistics."""
    shape = (1, -1) + (1,) * (self.ndim - 2)
    scale = (var.reshape(shape) + eps).sqrt().reciprocal()
    if weight is not None: scale = scale * weight.reshape(shape)
    out = (self - mean.reshape(shape)) * scale
    return out + bias.reshape(shape) if bias is not None else out

  def relu(self) -> Tensor: return self.maximum(0)
  def sigmoid(self) -> Tensor: return ((-self._float()).exp() + 1).reciprocal()
  def tanh(self) -> Tensor: return (self._float() * 2).sigmoid() * 2 - 1
  def leaky_relu(self, slope=0.01) -> Tensor: return (self > 0).where(self, self * slope)
  def elu(self, alpha=1.0) -> Tensor: return (self > 0).where(self, (self.exp() - 1) * alpha)
  def selu(self, alpha=1.6732632423543772, gamma=1.0507009873554805) -> Tensor: return self.elu(alpha) * gamma
  def silu(self) -> Tensor: return self * self.sigmoid()
  def softplus(self) -> Tensor: return self.maximum(0) + (-self.abs()).exp().add(1).log()
  def hardsigmoid(self, alpha=1 / 6, beta=0.5) -> Tensor: return (self * alpha + beta).clip(0, 1)
  def hardswish(self) -> Tensor: return self * self.hardsigmoid()
  def relu6(self) -> Tensor: return self.clip(0, 6)
  def erf(self) -> Tensor:
    """Abramowitz-Stegun 7.1.26 (max error 1.5e-7), odd-extended."""
    x = self._float()
    t = (x.abs() * 0.3275911 + 1).reciprocal()
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    y = 1 - poly * (-(x * x)).exp()
    return (x < 0).where(-y, y)
  def gelu(self, approximate: str = "none") -> Tensor:
    if approximate == "tanh": return self * 0.5 * (((self + self * self * self * 0.044715) * math.sqrt(2 / math.pi)).tanh() + 1)
    return self * 0.5 * ((self * (1 / math.sqrt(2))).erf() + 1)


def _scalar_like(value, like: Tensor) -> Tensor:
  """A python scalar as a 0-d Tensor of `like`'s dtype, unless a float would be truncated into an int."""
  if isinstance(value, Tensor): return value
  kind = _python_dtype(value).kind
  return Tensor.full((), value, FLOAT32 if kind == "f" and like.dtype.kind != "f" else like.dtype)


def broadcast_shape(*shapes) -> Shape:
  ndim = max(len(s) for s in shapes)
  padded = [(1,) * (ndim - len(s)) + tuple(s) for s in shapes]
  out = []
  for dims in zip(*padded):
    sizes = {d for d in dims if d != 1}
    if len(sizes) > 1: raise ValueError(f"shapes {' and '.join(str(tuple(s)) for s in shapes)} cannot be broadcast together")
    out.append(sizes.pop() if sizes else 1)
  return tuple(out)


def _tuple(v, n: int) -> tuple:
  return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _conv_pads(padding, nd: int) -> list:
  """int, per-axis ints, per-axis (before, after) pairs, or ONNX-style [b0, b1, ..., a0, a1, ...]."""
  if isinstance(padding, int): return [(padding, padding)] * nd
  padding = list(padding)
  if len(padding) == nd and all(isinstance(p, int) for p in padding): return [(p, p) for p in padding]
  if len(padding) == nd: return [tuple(p) for p in padding]
  if len(padding) == 2 * nd: return list(zip(padding[:nd], padding[nd:]))
  raise ValueError(f"padding {padding} does not fit {nd} spatial dims")


# A conv whose input element feeds at least this many multiply-adds (output channels per group x kernel taps) reads
# its padded input from a copy, rows padded to a multiple of 8 elements (so the copy runs in vector lanes): no border
# conditions on the kernel's reads (about 1.3-1.5x faster 3x3 convs on PoCL), for one more pass over the input.
# Depthwise convs (9 taps) would spend more on the copy than they save.
PREPAD_MIN_TAPS = 64
# Convs and matmuls with fewer weights and less work (the ONNX node tests, run eagerly) read their weights and input
# as they are: the extra copy kernels would cost more than they save.
RELAYOUT_MIN = 1024           # weight elements
RELAYOUT_MIN_MACS = 1 << 20   # multiply-adds (a model's stem conv has few weights but much work)


def _window_outs(spatial, kernel, stride, dilation) -> list[int]:
  return [(s - d * (k - 1) - 1) // st + 1 for s, k, st, d in zip(spatial, kernel, stride, dilation)]


def _worth_relayout(weights: int, macs: int) -> bool:
  return weights >= RELAYOUT_MIN or macs >= RELAYOUT_MIN_MACS


def _channel_blocked(weight: Tensor, groups: int) -> Tensor:
  """The conv weight (Cout, Cg, *K), read from a copy stored as (Cout/8, Cg, *K, 8): 8 output channels side by side,
  so a kernel computing 8 output channels in vector lanes loads their weights in one read. The copy is a kernel that
  reads only weights: compiling folds it (edgeml/compile.py), so the artifact stores the blocked layout. Weights that
  depend on an input or whose groups' channel counts are not multiples of 8 are read as they are."""
  cout, b = weight.shape[0], CHANNEL_BLOCK
  if (cout // groups) % b or not _is_constant(weight.node): return weight
  inner = tuple(range(2, weight.ndim + 1))
  blocked = weight.reshape(cout // b, b, *weight.shape[1:]).permute(0, *inner, 1).contiguous()
  return blocked.permute(0, weight.ndim, *range(1, weight.ndim)).reshape(weight.shape)


def _column_blocked(b: Tensor) -> Tensor:
  """A constant matmul operand (K, N), read from a copy stored as (N/8, K, 8): 8 output columns side by side, so a
  kernel computing 8 columns in vector lanes loads them in one read (a GEMV streams its weights contiguously)."""
  k, n = b.shape
  if n % CHANNEL_BLOCK or not _is_constant(b.node): return b
  blocked = b.reshape(k, n // CHANNEL_BLOCK, CHANNEL_BLOCK).permute(1, 0, 2).contiguous()
  return blocked.permute(1, 0, 2).reshape(k, n)


def _is_constant(node: Node) -> bool:
  """Whether `node` depends only on data already known (no graph input)."""
  stack, seen = [node], set()
  while stack:
    n = stack.pop()
    if id(n) in seen: continue
    seen.add(id(n))
    if n.op is Op.BUFFER and n.buffer is None: return False
    stack.extend(n.src)
  return True
