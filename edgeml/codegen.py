"""OpenCL C code generation: one ScheduleItem becomes one kernel, one work item per output element.

The fused graph is rendered from the output down: every value becomes a local variable (shared subexpressions are
rendered once per scope), movement ops turn into index expressions, padding into validity conditions, and a fused
reduce into a loop whose body is rendered in its own scope.
"""
from __future__ import annotations
import functools
import itertools
import math
import numpy as np
from dataclasses import dataclass
from edgeml.ops import Op, UNARY, BINARY, REDUCE
from edgeml.lazy import Node, contiguous_strides
from edgeml.schedule import ScheduleItem
from edgeml.symbolic import Lin, Var

CTYPES = {np.float32: "float", np.float16: "half", np.float64: "double", np.int8: "char", np.uint8: "uchar",
          np.int16: "short", np.uint16: "ushort", np.int32: "int", np.uint32: "uint", np.int64: "long",
          np.uint64: "ulong", np.bool_: "uchar"}

ALU = {
  Op.NEG: "(-{0})", Op.EXP: "exp({0})", Op.LOG: "log({0})", Op.SQRT: "sqrt({0})", Op.SIN: "sin({0})",
  Op.FLOOR: "floor({0})", Op.ADD: "({0}+{1})", Op.MUL: "({0}*{1})", Op.DIV: "({0}/{1})", Op.MAX: "({0}>{1}?{0}:{1})",
  Op.POW: "pow({0},{1})", Op.CMPLT: "({0}<{1})", Op.CMPEQ: "({0}=={1})", Op.AND: "({0}&{1})", Op.OR: "({0}|{1})",
  Op.XOR: "({0}^{1})", Op.WHERE: "({0}?{1}:{2})",
}

PRELUDE = """int floordiv_i(int a, int b) { return (a - (a % b + b) % b) / b; }
int floormod_i(int a, int b) { return (a % b + b) % b; }
"""


@dataclass
class Kernel:
  name: str
  source: str              # the kernel function (program_source() adds what a program needs around it)
  global_size: int
  local_size: int
  out: Node
  loads: list              # nodes whose buffers follow the output buffer as arguments
  flops: int
  bytes: int


def ctype(dtype: np.dtype) -> str:
  if dtype.type not in CTYPES: raise TypeError(f"dtype {dtype} is not supported on OpenCL")
  return CTYPES[dtype.type]


def literal(value, dtype: np.dtype) -> str:
  if dtype.kind == "f":
    v = float(value)
    if math.isnan(v): return "NAN"
    if math.isinf(v): return "INFINITY" if v > 0 else "(-INFINITY)"
    return f"{v!r}f" if dtype.itemsize <= 4 else repr(v)
  if dtype.kind == "b": return "1" if value else "0"
  return f"{int(value)}L" if dtype.itemsize == 8 else f"({ctype(dtype)}){int(value)}"


MAX_UNROLL = 16   # reduce iterations unrolled at most (3x3 windows yes, long channel loops no)


def pick_local_size(n: int) -> int:
  """A power of two up to 64 that still gives at least 8 work groups (2 cores x 2 and some slack)."""
  local = 64
  while local > 1 and n < local * 8: local //= 2
  return local


class _Renderer:
  def __init__(self, item: ScheduleItem, half_math: bool):
    self.item, self.half_math = item, half_math
    self.args = {id(n): i + 1 for i, n in enumerate(item.loads)}
    self.lines: list[str] = []
    self.scopes: list[dict] = [{}]
    self.count, self.trips, self.flops = 0, 1, 0
    self.pending: list[tuple] = []     # fused-reduce requests: (node, index, validity, accumulator name)

  def compute_type(self, dtype) -> str:
    return "float" if dtype.type is np.float16 and not self.half_math else ctype(dtype)

  def emit(self, dtype, expr: str) -> str:
    name = f"v{self.count}"
    self.count += 1
    self.lines.append(f"{self.compute_type(dtype)} {name} = {expr};")
    return name

  def value(self, n: Node, idx: tuple, valid: tuple) -> str:
    key = (id(n), idx, valid)
    for scope in reversed(self.scopes):
      if key in scope: return scope[key]
    self.scopes[-1][key] = out = self._render(n, idx, valid)
    return out

  def _render(self, n: Node, idx: tuple, valid: tuple) -> str:
    if id(n) in self.args: return self._load(n, idx, valid)
    if n.op is Op.CONST: return literal(n.arg, n.dtype)
    if n.op is Op.VIEW: return self.value(n.src[0], view_index(n, idx), valid)
    if n.op is Op.PAD: return self._pad(n, idx, valid)
    if n.op in REDUCE: return self._reduce(n, idx, valid)
    if n.op is Op.CONTIGUOUS: return self.value(n.src[0], idx, valid)
    srcs = [self.value(s, idx, valid) for s in n.src]
    self.flops += self.trips
    if n.op is Op.CAST: return self.emit(n.dtype, f"({srcs[0]}!=0)" if n.dtype.kind == "b" else
                                         f"(({self.compute_type(n.dtype)}){srcs[0]})")
    if n.op is Op.MOD and n.dtype.kind == "f": return self.emit(n.dtype, f"fmod({srcs[0]},{srcs[1]})")
    if n.op is Op.MOD: return self.emit(n.dtype, f"({srcs[0]}%{srcs[1]})")
    return self.emit(n.dtype, ALU[n.op].format(*srcs))

  def _load(self, n: Node, idx: tuple, valid: tuple) -> str:
    offset = Lin()
    for i, st in zip(idx, contiguous_strides(n.shape)): offset = offset + i * st
    buf = f"data{self.args[id(n)]}"
    read = (f"vload_half({offset.render()},{buf})" if n.dtype.type is np.float16 and not self.half_math
            else f"{buf}[{offset.render()}]")
    if valid: read = f"({render_conditions(valid)}?{read}:{literal(0, n.dtype)})"
    return self.emit(n.dtype, read)

  def _pad(self, n: Node, idx: tuple, valid: tuple) -> str:
    conds, inner = [], []
    for i, (before, _), size in zip(idx, n.arg, n.src[0].shape):
      j = i - before
      lo, hi = j.bounds()
      if hi < 0 or lo >= size: return literal(0, n.dtype)   # entirely in the padding
      if lo < 0 or hi >= size: conds.append((j, size))
      inner.append(j)
    if not conds: return self.value(n.src[0], tuple(inner), valid)
    conds = tuple(conds)
    v = self.value(n.src[0], tuple(inner), valid + conds)
    return self.emit(n.dtype, f"({render_conditions(conds)}?{v}:{literal(0, n.dtype)})")

  def _reduce(self, n: Node, idx: tuple, valid: tuple) -> str:
    """Deferred: the accumulator's name now, the loop later in `reduce_loop`, shared by every output of the tile."""
    acc = f"acc{len(self.pending)}"
    self.pending.append((n, idx, valid, acc))
    return acc

  def reduce_loop(self) -> list[str]:
    """One loop nest over the fused reduce's axes, accumulating every pending request. Short axes (a 3x3 window)
    are unrolled, so values shared between neighbouring outputs and taps are loaded once."""
    if not self.pending: return []
    n = self.pending[0][0]
    src, lines, loops = n.src[0], [], {}
    init = literal(0, n.dtype) if n.op is Op.SUM else min_literal(n.dtype)
    lines += [f"{self.compute_type(n.dtype)} {acc} = {init};" for *_, acc in self.pending]
    axes = [ax for ax in n.arg if src.shape[ax] > 1]
    unrolled = []
    for ax in reversed(axes):
      if src.shape[ax] <= MAX_UNROLL and math.prod(src.shape[a] for a in unrolled) * src.shape[ax] <= MAX_UNROLL: unrolled.append(ax)
    for ax in axes:
      if ax in unrolled: continue
      loops[ax] = Lin.of(Var(f"r{ax}", 0, src.shape[ax] - 1))
      lines.append(f"for (int r{ax} = 0; r{ax} < {src.shape[ax]}; r{ax}++) {{")
    self.lines, self.scopes = lines, [{}]
    self.trips = math.prod(src.shape[ax] for ax in loops)
    for values in itertools.product(*(range(src.shape[ax]) for ax in unrolled)):
      fixed = {**loops, **{ax: Lin.of(v) for ax, v in zip(unrolled, values)}}
      for _, idx, valid, acc in self.pending:
        inner = tuple(fixed.get(ax, i) for ax, i in enumerate(idx))
        v = self.value(src, inner, valid)
        self.lines.append(f"{acc} = {acc} + {v};" if n.op is Op.SUM else f"{acc} = ({v}>{acc}?{v}:{acc});")
        self.flops += self.trips
    return self.lines + ["}"] * len(loops)


def program_source(kernels: list[Kernel], half_math: bool = False) -> str:
  """One OpenCL program holding `kernels` (their names must be unique)."""
  fp16 = "#pragma OPENCL EXTENSION cl_khr_fp16 : enable\n" if half_math else ""
  return fp16 + PRELUDE + "\n".join(k.source for k in kernels)


def min_literal(dtype: np.dtype) -> str:
  if dtype.kind == "f": return "(-INFINITY)"
  if dtype.kind == "b": return "0"
  return literal(np.iinfo(dtype).min, dtype)


def render_conditions(conds: tuple) -> str:
  parts = []
  for j, size in conds:
    lo, hi = j.bounds()
    if lo < 0: parts.append(f"({j.render()})>=0")
    if hi >= size: parts.append(f"({j.render()})<{size}")
  return "(" + "&&".join(parts) + ")"


def view_index(n: Node, idx: tuple) -> tuple:
  """Index into the VIEW's source for index `idx` of the view."""
  return _view_index(n.src[0].shape, *n.arg, idx)


@functools.lru_cache(maxsize=1 << 18)
def _view_index(src_shape: tuple, strides: tuple, offset: int, idx: tuple) -> tuple:
  linear = Lin.combine(zip(idx, strides), offset)
  return tuple(Lin() if size == 1 else (linear // st) % size for size, st in zip(src_shape, contiguous_strides(src_shape)))


def kernel_name(item: ScheduleItem) -> str:
  reduces = [n for n in _kernel_nodes(item) if n.op in REDUCE]
  dims = "_".join(str(s) for s in item.out.shape) or "1"
  if not reduces: return f"E_{dims}"
  return f"r_{dims}_{math.prod(reduces[0].src[0].shape[a] for a in reduces[0].arg)}"


def tile_candidates(item: ScheduleItem) -> list[dict[int, int]]:
  """Ways to give each work item several neighbouring outputs ({output axis: tile}) when the kernel has a fused
  reduce: one or two axes, each tiled by its largest divisor among 8, 4, 5, 3, 2 (or by 4 where 8 divides);
  at most 32 outputs; smallest first."""
  if not any(n.op in REDUCE for n in _kernel_nodes(item)): return [{}]
  shape = item.out.shape
  singles = []
  for a, s in enumerate(shape):
    divisors = [t for t in (8, 4, 5, 3, 2) if s % t == 0 and s > 1]
    singles += [{a: t} for t in divisors[:2 if divisors[:1] == [8] else 1]]
  pairs = [{**x, **y} for i, x in enumerate(singles) for y in singles[i + 1:] if x.keys() != y.keys()]
  options = [{}] + sorted(singles + [p for p in pairs if math.prod(p.values()) <= 32], key=lambda o: math.prod(o.values()))
  return [o for o in options if item.out.size // math.prod(o.values(), start=1) >= 8] or [{}]


def _kernel_nodes(item: ScheduleItem) -> list[Node]:
  out, stack, seen = [], [item.out], set()
  while stack:
    n = stack.pop()
    if id(n) in seen or (n is not item.out and n in item.loads): continue
    seen.add(id(n))
    out.append(n)
    stack.extend(n.src)
  return out


def render(item: ScheduleItem, half_math: bool = False, name: str | None = None) -> Kernel:
  """OpenCL source and launch sizes for one schedule item: of the tilings offered, the one whose loop reads the
  fewest values per output."""
  best = None
  for tiles in tile_candidates(item):
    r, size, lines = _render_tiled(item, tiles, half_math)
    loop_loads = sum("data" in line for line in lines if line.startswith("float v") or line.startswith("int v"))
    cost = loop_loads / math.prod(tiles.values(), start=1)
    if best is None or cost < best[0]: best = (cost, r, size, lines)
  _, r, size, lines = best
  return _kernel(item, r, size, lines, name or kernel_name(item))


def _render_tiled(item: ScheduleItem, tiles: dict, half_math: bool):
  out = item.out
  grid = tuple(s // tiles.get(a, 1) for a, s in enumerate(out.shape))
  size = max(math.prod(grid), 1)
  r = _Renderer(item, half_math)
  gid = Lin.of(Var("gid", 0, size - 1))
  base = [Lin() if s == 1 else (gid // st) % s for s, st in zip(grid, contiguous_strides(grid))]
  root = out.src[0] if out.op is Op.CONTIGUOUS else out
  stores = []
  for offsets in itertools.product(*(range(t) for t in tiles.values())):
    idx = list(base)
    for (a, t), o in zip(tiles.items(), offsets): idx[a] = base[a] * t + o
    v = r.value(root, tuple(idx), ())
    where = Lin()
    for i, st in zip(idx, contiguous_strides(out.shape)): where = where + i * st
    stores.append(f"vstore_half({v},{where.render()},data0);" if out.dtype.type is np.float16 and not half_math
                  else f"data0[{where.render()}] = ({ctype(out.dtype)})({v});")
  post = r.lines
  return r, size, r.reduce_loop() + post + stores


def _kernel(item: ScheduleItem, r: _Renderer, size: int, lines: list, name: str) -> Kernel:
  out = item.out
  local = pick_local_size(size)
  global_size = -(-size // local) * local
  params = [f"__global {ctype(out.dtype)}* restrict data0"]
  params += [f"const __global {ctype(n.dtype)}* restrict data{r.args[id(n)]}" for n in item.loads]
  body = "\n  ".join(lines)
  guard = f"\n  if (gid >= {size}) return;" if global_size != size else ""
  source = (f"__kernel __attribute__((reqd_work_group_size({local},1,1)))\n"
            f"void {name}({', '.join(params)}) {{\n  int gid = get_global_id(0);{guard}\n  {body}\n}}\n")
  nbytes = out.nbytes + sum(n.nbytes for n in item.loads)
  return Kernel(name, source, global_size, local, out, list(item.loads), r.flops * size, nbytes)
