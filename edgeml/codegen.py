"""OpenCL C code generation: one ScheduleItem becomes one kernel, one work item per output element.

The fused graph is rendered from the output down: every value becomes a local variable (shared subexpressions are
rendered once per scope), movement ops turn into index expressions, padding into validity conditions, and a fused
reduce into a loop whose body is rendered in its own scope.
"""
from __future__ import annotations
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
  source: str              # a full OpenCL program holding this one kernel
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
    src = n.src[0]
    acc = f"acc{self.count}"
    self.count += 1
    init = literal(0, n.dtype) if n.op is Op.SUM else min_literal(n.dtype)
    self.lines.append(f"{self.compute_type(n.dtype)} {acc} = {init};")
    inner, loops = list(idx), 0
    for ax in n.arg:
      if src.shape[ax] == 1: continue
      var = f"r{self.count}_{ax}"
      inner[ax] = Lin.of(Var(var, 0, src.shape[ax] - 1))
      self.lines.append(f"for (int {var} = 0; {var} < {src.shape[ax]}; {var}++) {{")
      self.trips *= src.shape[ax]
      loops += 1
    self.scopes.append({})
    v = self.value(src, tuple(inner), valid)
    self.lines.append(f"{acc} = {acc} + {v};" if n.op is Op.SUM else f"{acc} = ({v}>{acc}?{v}:{acc});")
    self.flops += self.trips
    self.scopes.pop()
    self.lines += ["}"] * loops
    for ax in n.arg: self.trips //= src.shape[ax]
    return acc


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
  strides, offset = n.arg
  linear = Lin.of(offset)
  for i, st in zip(idx, strides): linear = linear + i * st
  out = []
  for size, st in zip(n.src[0].shape, contiguous_strides(n.src[0].shape)):
    out.append(Lin() if size == 1 else (linear // st) % size)
  return tuple(out)


def kernel_name(item: ScheduleItem) -> str:
  reduces = []
  stack, seen = [item.out], set()
  while stack:
    n = stack.pop()
    if id(n) in seen or (n is not item.out and n in item.loads): continue
    seen.add(id(n))
    if n.op in REDUCE: reduces.append(n)
    stack.extend(n.src)
  dims = "_".join(str(s) for s in item.out.shape) or "1"
  if not reduces: return f"E_{dims}"
  red = math.prod(reduces[0].src[0].shape[a] for a in reduces[0].arg)
  return f"r_{dims}_{red}"


def render(item: ScheduleItem, half_math: bool = False, name: str | None = None) -> Kernel:
  """OpenCL source and launch sizes for one schedule item."""
  out, size = item.out, max(item.out.size, 1)
  r = _Renderer(item, half_math)
  gid = Lin.of(Var("gid", 0, size - 1))
  idx = tuple(Lin() if s == 1 else (gid // st) % s for s, st in zip(out.shape, contiguous_strides(out.shape)))
  v = r.value(out.src[0] if out.op is Op.CONTIGUOUS else out, idx, ())
  if out.dtype.type is np.float16 and not half_math: store = f"vstore_half({v},gid,data0);"
  else: store = f"data0[gid] = ({ctype(out.dtype)})({v});"
  local = pick_local_size(size)
  global_size = -(-size // local) * local
  name = name or kernel_name(item)
  params = [f"__global {ctype(out.dtype)}* restrict data0"]
  params += [f"const __global {ctype(n.dtype)}* restrict data{r.args[id(n)]}" for n in item.loads]
  body = "\n  ".join(r.lines + [store])
  guard = f"\n  if (gid >= {size}) return;" if global_size != size else ""
  fp16 = "#pragma OPENCL EXTENSION cl_khr_fp16 : enable\n" if half_math else ""
  source = (f"{fp16}{PRELUDE}__kernel __attribute__((reqd_work_group_size({local},1,1)))\n"
            f"void {name}({', '.join(params)}) {{\n  int gid = get_global_id(0);{guard}\n  {body}\n}}\n")
  nbytes = out.nbytes + sum(n.nbytes for n in item.loads)
  return Kernel(name, source, global_size, local, out, list(item.loads), r.flops * size, nbytes)
