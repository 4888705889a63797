"""The primitive ops of edgeml/ops.py evaluated on the host in numpy, with the C semantics of the generated kernels
(edgeml/codegen.py's ALU tables and PRELUDE), so constant folding needs no OpenCL device and gives the same bytes on
every machine.

The rules it follows, as the kernels do: float32 math in float32 (float16 is a storage type: math in float32, rounded
when a kernel stores it); signed ADD/MUL/NEG wrap modulo 2^bits; integer DIV truncates toward zero, a zero divisor
gives 0 and INT_MIN / -1 wraps to INT_MIN; MOD has the sign of the dividend (C %, fmod for floats), 0 for a zero or -1
divisor; MAX is `a > b ? a : b` (NaN in a gives b); float to int truncates, saturates out of range and maps NaN to 0;
int to int keeps the low bits; bools are uchar 0/1 in memory (arrays of uint8 here); SUM accumulates in order in the
node's type, RMAX starts from the type's lowest value and skips NaN (a comparison with NaN is false).
"""
from __future__ import annotations
import numpy as np
from edgeml.lazy import Node
from edgeml.ops import Op

F32 = np.dtype(np.float32)


def storage(dtype: np.dtype) -> np.dtype:
  """How the evaluator holds values of `dtype` while computing: bools as uint8, half as float32."""
  return np.dtype(np.uint8) if dtype.kind == "b" else F32 if dtype == np.float16 else dtype


def stored(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
  """`value` as a kernel writes it to a buffer of `dtype` (half rounds to nearest even like vstore_half)."""
  if dtype == np.float16:
    with np.errstate(over="ignore"): return value.astype(np.float16)   # beyond half's range: inf, as vstore_half
  return np.ascontiguousarray(value, dtype=storage(dtype))


def host_data(n: Node) -> np.ndarray:
  """The host copy of a BUFFER node's data (downloaded once from the device when it only lives there)."""
  if n.host is None and isinstance(n.buffer, np.ndarray): n.host = n.buffer
  if n.host is None:
    if n.buffer is None: raise ValueError(f"input {n.arg!r} {n.shape} is a placeholder without data")
    from compiled.device import default_device
    n.host = default_device().download(n.buffer, n.shape, np.uint8 if n.dtype.kind == "b" else n.dtype)
  return n.host


def device_buffer(n: Node):
  """The device buffer of a BUFFER node, uploading its host data the first time a kernel needs it."""
  if n.buffer is None: raise ValueError(f"input {n.arg!r} {n.shape} is a placeholder without data")
  if isinstance(n.buffer, np.ndarray):
    from compiled.device import default_device
    n.buffer = default_device().upload(n.buffer.view(np.uint8) if n.dtype.kind == "b" else n.buffer)
  return n.buffer


class HostEvaluator:
  """Evaluates nodes whose leaves all hold data; values are memoized per node for the evaluator's lifetime."""

  def __init__(self):
    self.values: dict[int, np.ndarray] = {}
    self.keep: list[Node] = []   # nodes whose id keys `values` stay alive while the evaluator does

  def __call__(self, n: Node) -> np.ndarray:
    """The value of `n` as a kernel would store it in a buffer of n.dtype."""
    return stored(self.value(n), n.dtype)

  def value(self, root: Node) -> np.ndarray:
    stack = [root]
    while stack:   # iterative post-order: graphs can be deeper than Python's recursion limit
      n = stack[-1]
      if id(n) in self.values: stack.pop(); continue
      todo = [s for s in n.src if id(s) not in self.values]
      if todo and n.op is not Op.BUFFER: stack.extend(todo); continue
      stack.pop()
      with np.errstate(all="ignore"): v = self._eval(n, [self.values[id(s)] for s in n.src])
      self.values[id(n)] = v
      self.keep.append(n)
    return self.values[id(root)]

  def _eval(self, n: Node, srcs: list) -> np.ndarray:
    op, dt = n.op, n.dtype
    if op is Op.BUFFER: return np.asarray(host_data(n)).astype(storage(dt), copy=False).reshape(n.shape)
    if op is Op.CONST: return np.array(n.arg, dtype=dt).astype(storage(dt))
    if op is Op.CONTIGUOUS: return srcs[0]
    if op is Op.VIEW: return _view(srcs[0], n.shape, *n.arg)
    if op is Op.PAD: return np.pad(srcs[0], n.arg)
    if op in (Op.SUM, Op.RMAX): return _reduce(op, srcs[0], n.arg, dt)
    if op is Op.CAST: return _cast(srcs[0], n.src[0].dtype, dt)
    if op is Op.WHERE: return np.where(srcs[0] != 0, srcs[1], srcs[2])
    if op in (Op.CMPLT, Op.CMPEQ):
      a, b = srcs
      return ((a < b) if op is Op.CMPLT else (a == b)).astype(np.uint8)
    return _alu(op, storage(dt), srcs)


def _view(x: np.ndarray, shape: tuple, strides: tuple, offset: int) -> np.ndarray:
  flat = np.ascontiguousarray(x).reshape(-1)
  if 0 in shape: return np.zeros(shape, flat.dtype)
  item = flat.dtype.itemsize
  return np.lib.stride_tricks.as_strided(flat[offset:], shape, tuple(s * item for s in strides), writeable=False)


def _reduce(op: Op, x: np.ndarray, axes: tuple, dt: np.dtype) -> np.ndarray:
  keep = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
  rest = [i for i in range(x.ndim) if i not in axes]
  moved = np.transpose(x, rest + list(axes)).reshape(-1, int(np.prod([x.shape[a] for a in axes], dtype=np.int64)))
  st = storage(dt)
  if op is Op.SUM:
    if moved.shape[1] == 0: return np.zeros(keep, st)
    out = np.cumsum(moved, axis=1, dtype=st)[:, -1]   # in order, in the accumulator's type (wrapping for ints)
    return out.reshape(keep)
  if st.kind == "f": moved = np.where(np.isnan(moved), -np.inf, moved)
  lowest = -np.inf if st.kind == "f" else 0 if dt.kind == "b" else np.iinfo(st).min
  return np.max(moved, axis=1, initial=lowest).astype(st).reshape(keep)


def _cast(x: np.ndarray, src: np.dtype, dst: np.dtype) -> np.ndarray:
  if dst.kind == "b": return (x != 0).astype(np.uint8)
  if dst.kind == "f": return x.astype(storage(dst))
  if src.kind != "f": return x.astype(dst)    # int/bool to int: C conversion keeps the low bits (numpy wraps alike)
  info = np.iinfo(dst)
  wide = x.astype(np.float64)
  lo, hi = float(info.min), float(info.max)   # hi rounds up to 2^bits-1+1 for 64-bit types: >= hi saturates
  inside = np.trunc(np.where(np.isnan(wide) | (wide <= lo) | (wide >= hi), 0, wide))
  out = inside.astype(dst)
  out = np.where(wide >= hi, np.array(info.max, dst), out)
  out = np.where(wide <= lo, np.array(info.min, dst), out)
  return np.where(np.isnan(wide), np.array(0, dst), out).astype(dst)


def _alu(op: Op, st: np.dtype, srcs: list) -> np.ndarray:
  a = srcs[0]
  if op is Op.NEG: return (-a).astype(st) if st.kind != "u" else (np.zeros_like(a) - a).astype(st)
  if op is Op.EXP: return np.exp(a)
  if op is Op.LOG: return np.log(a)
  if op is Op.SQRT: return np.sqrt(a)
  if op is Op.SIN: return np.sin(a)
  if op is Op.FLOOR: return np.floor(a)
  b = srcs[1]
  if op is Op.ADD: return (a + b).astype(st)
  if op is Op.MUL: return (a * b).astype(st)
  if op is Op.MAX: return np.where(a > b, a, b)
  if op is Op.POW: return np.power(a, b).astype(st)
  if op is Op.AND: return (a & b).astype(st)
  if op is Op.OR: return (a | b).astype(st)
  if op is Op.XOR: return (a ^ b).astype(st)
  if op is Op.DIV: return _div(a, b, st)
  if op is Op.MOD: return _mod(a, b, st)
  raise NotImplementedError(f"host evaluation of {op.name}")


def _div(a, b, st):
  if st.kind == "f": return (a / b).astype(st)
  a, b = np.broadcast_arrays(a, b)
  if st.kind == "i":
    safe = np.where((b == 0) | (b == -1), 1, b).astype(st)
    q = a // safe
    q = q + (((a - q * safe) != 0) & ((a < 0) != (safe < 0))).astype(st)   # floor to truncation toward zero
    return np.where(b == 0, 0, np.where(b == -1, (np.zeros_like(a) - a), q)).astype(st)   # -INT_MIN wraps
  safe = np.where(b == 0, 1, b).astype(st)
  return np.where(b == 0, 0, a // safe).astype(st)


def _mod(a, b, st):
  if st.kind == "f": return np.fmod(a, b).astype(st)
  a, b = np.broadcast_arrays(a, b)
  zero = (b == 0) | (b == -1) if st.kind == "i" else b == 0
  safe = np.where(zero, 1, b).astype(st)
  return np.where(zero, 0, np.fmod(a, safe)).astype(st)


def fold(items: list) -> None:
  """Compute every schedule item's output on the host, in order, and keep it as the node's (host) data."""
  ev = HostEvaluator()
  for it in items:
    data = ev(it.out)
    ev.values[id(it.out)] = data.astype(storage(it.out.dtype), copy=False)   # later kernels read what was stored
    it.out.set_buffer(data)
