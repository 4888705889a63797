"""OpenCL C code generation: one ScheduleItem becomes one kernel.

The fused graph is rendered from the output down: every value becomes a local variable (shared subexpressions are
rendered once per scope), movement ops turn into index expressions, padding into validity conditions (with a branch
free of them for the work items inside the borders, `_finish`), and a fused reduce into one loop nest shared by every
output of the work item, or split across a work-group (grouped reduce).
The shape a kernel takes (tiles, vector lanes, grouped reduce, work-group size) is decided in edgeml/opt.py; this
module prints a given KernelShape (`render_shape`), and `render` keeps, of the shapes opt proposes, the one with the
fewest statements per output, or the one a chooser (the tuner) picks.
"""
from __future__ import annotations
import functools
import itertools
import math
import numpy as np
from dataclasses import dataclass
from compiled.targets import TARGETS, Target
from edgeml.ops import Op, REDUCE
from edgeml.lazy import Node, contiguous_strides
from edgeml.opt import KernelShape, candidates, kernel_nodes, lane_axis_of, pick_local_size, reduce_length
from edgeml.reads import NotVectorizable, Reads
from edgeml.schedule import ScheduleItem
from edgeml.symbolic import Lin, Var

FLOAT32 = np.dtype(np.float32)
CTYPES = {np.float32: "float", np.float16: "half", np.float64: "double", np.int8: "char", np.uint8: "uchar",
          np.int16: "short", np.uint16: "ushort", np.int32: "int", np.uint32: "uint", np.int64: "long",
          np.uint64: "ulong", np.bool_: "uchar"}

ALU = {
  Op.NEG: "(-{0})", Op.EXP: "exp({0})", Op.LOG: "log({0})", Op.SQRT: "sqrt({0})", Op.SIN: "sin({0})",
  Op.FLOOR: "floor({0})", Op.ADD: "({0}+{1})", Op.MUL: "({0}*{1})", Op.DIV: "({0}/{1})", Op.MAX: "({0}>{1}?{0}:{1})",
  Op.POW: "pow({0},{1})", Op.CMPLT: "({0}<{1})", Op.CMPEQ: "({0}=={1})", Op.AND: "({0}&{1})", Op.OR: "({0}|{1})",
  Op.XOR: "({0}^{1})", Op.WHERE: "({0}?{1}:{2})",
}

VECTOR_ALU = {op: ALU[op] for op in (Op.NEG, Op.EXP, Op.LOG, Op.SQRT, Op.SIN, Op.FLOOR, Op.ADD, Op.MUL, Op.DIV)}
VECTOR_ALU.update({Op.MAX: "select({1},{0},{0}>{1})", Op.POW: "pow({0},{1})", Op.WHERE: "({0}?{1}:{2})"})

# Integer ops that C leaves undefined for some operands, rendered so every operand has numpy's answer. {t}: the type,
# {u}: its unsigned twin, {w}: the unsigned type the arithmetic runs in (uint, ulong for 64-bit: narrower types would
# be promoted to int, where ushort*ushort can overflow). ADD/MUL/NEG wrap modulo 2^bits like numpy; the result is
# reinterpreted with as_{t} (a bit copy, no out-of-range conversion). A zero divisor gives 0 (numpy's result);
# INT_MIN / -1 wraps to INT_MIN and INT_MIN % -1 is 0.
SIGNED_ALU = {
  Op.ADD: "as_{t}(({u})(({w})({0})+({w})({1})))", Op.MUL: "as_{t}(({u})(({w})({0})*({w})({1})))",
  Op.NEG: "as_{t}(({u})(-({w})({0})))",
  Op.DIV: "({1}==0?({t})0:{1}==-1?as_{t}(({u})(-({w})({0}))):({t})({0}/{1}))",
  Op.MOD: "({1}==0||{1}==-1?({t})0:({t})({0}%{1}))",
}
UNSIGNED_ALU = {
  Op.ADD: "({u})(({w})({0})+({w})({1}))", Op.MUL: "({u})(({w})({0})*({w})({1}))", Op.NEG: "({u})(-({w})({0}))",
  Op.DIV: "({1}==0?({t})0:({t})({0}/{1}))", Op.MOD: "({1}==0?({t})0:({t})({0}%{1}))",
}


def int_alu(op: Op, dtype: np.dtype, srcs) -> str | None:
  """`op` on integer operands without undefined behaviour (SIGNED_ALU/UNSIGNED_ALU); None for ops C defines for every
  operand (comparisons, bitwise ops, MAX, WHERE)."""
  table = SIGNED_ALU if dtype.kind == "i" else UNSIGNED_ALU if dtype.kind == "u" else {}
  if dtype.kind == "b" and op in (Op.DIV, Op.MOD): table = UNSIGNED_ALU   # bools are uchar 0/1: only the zero divisor
  if op not in table: return None
  t = ctype(dtype)
  u, w = ("u" + t).replace("uu", "u"), "ulong" if dtype.itemsize == 8 else "uint"
  return table[op].replace("{t}", t).replace("{u}", u).replace("{w}", w).format(*srcs)


def cast_expr(value: str, src: np.dtype, dst: np.dtype) -> str:
  """`value` (of dtype `src`) converted to `dst` without undefined behaviour. To bool: != 0. To float: a C cast.
  Float to int: truncation toward zero like numpy for in-range values; out of range saturates to the type's min/max
  and NaN gives 0 (convert_T_sat_rtz, NaN tested first as not every driver maps it to 0; C leaves both undefined
  and numpy's result is platform-specific). Int to a
  narrower or same-size signed int: the low bits, like numpy (via the unsigned twin and as_T, a bit copy)."""
  if dst.kind == "b": return f"({value}!=0)"
  t = "float" if dst.type is np.float16 else ctype(dst)
  if dst.kind == "f": return f"(({t}){value})"
  if src.kind == "f": return f"({value}!={value}?({t})0:convert_{t}_sat_rtz({value}))"   # NaN: 0 on every driver
  if dst.kind == "i" and src.kind != "b" and dst.itemsize <= src.itemsize: return f"as_{t}((u{t}){value})"
  return f"(({t}){value})"

# Floor division and modulo for index math (edgeml/symbolic.py) whose numerator can be negative; the divisor is a
# positive constant there. No intermediate can overflow: the remainder is corrected only when its sign is wrong.
PRELUDE = """int floormod_i(int a, int b) { int r = a % b; return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
int floordiv_i(int a, int b) { int r = a % b; return a / b - ((r != 0 && ((r < 0) != (b < 0))) ? 1 : 0); }
"""
# the same in long, for index math beyond int32; only in programs that use it (64-bit integers are optional on
# embedded-profile devices)
LONG_PRELUDE = """long floormod_l(long a, long b) { long r = a % b; return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
long floordiv_l(long a, long b) { long r = a % b; return a / b - ((r != 0 && ((r < 0) != (b < 0))) ? 1 : 0); }
"""

# added to programs whose kernels read weights through image2d_t (RGBA texels of 4 consecutive elements)
IMAGE_PRELUDE = """__constant sampler_t weights_sampler = CLK_NORMALIZED_COORDS_FALSE | CLK_ADDRESS_NONE | CLK_FILTER_NEAREST;
float texel_lane(float4 v, int c) { return c == 0 ? v.s0 : c == 1 ? v.s1 : c == 2 ? v.s2 : v.s3; }
"""


@dataclass
class Kernel:
  name: str
  source: str              # the kernel function (program_source() adds what a program needs around it)
  global_size: tuple       # 2-d NDRange: (the innermost axis padded to the local size, every other axis)
  local_size: tuple
  out: Node
  loads: list              # nodes whose buffers follow the output buffer as arguments
  flops: int
  arg_bytes: tuple         # the size of each buffer argument, output first, as stored (ScheduleItem.stored_bytes)
  uses_images: bool = False   # some loads are image2d_t (program_source then adds IMAGE_PRELUDE)

  @property
  def bytes(self) -> int: return sum(self.arg_bytes)


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
  v, info = int(value), np.iinfo(dtype)
  if not info.min <= v <= info.max: raise ValueError(f"{v} does not fit {dtype}")
  if dtype.kind == "i" and v == info.min: return f"({ctype(dtype)})({v + 1}{'L' if dtype.itemsize == 8 else ''}-1)"
  if dtype.itemsize == 8: return f"{v}UL" if dtype.kind == "u" else f"{v}L"   # a literal too big for long is invalid
  return f"({ctype(dtype)}){v}{'u' if dtype.kind == 'u' else ''}"


MAX_UNROLL = 16   # reduce iterations unrolled at most (3x3 windows yes, long channel loops no)
MAX_SEGMENTS = 8  # reduce loops (elementwise launches) split at concatenation boundaries into at most this many parts


class _Renderer:
  """Renders one kernel. With `width` > 1 an output axis (KernelShape.lanes_on) is computed `width` lanes at a time
  in OpenCL vector types: values that do not depend on the lane stay scalar and broadcast; how loads are read
  (vloadN, gathers, image texels) is edgeml/reads.py's."""
  def __init__(self, item: ScheduleItem, width: int = 1, reduce_lanes: bool = False, images: dict | None = None,
               group: int = 1, inside: bool = False):
    self.item, self.width, self.reduce_lanes, self.group = item, width, reduce_lanes, group
    self.inside = inside                # render as if every padding condition held (a work item inside the borders)
    self.borders: set = set()          # the padding conditions met: (index, size), index in [0, size)
    self.loop_vars: list = []          # the reduce loop's variables
    self.reads = Reads(item, width, reduce_lanes, images)
    self.images, self.args, self.lane = self.reads.images, self.reads.args, self.reads.lane
    self.vectors: set[str] = set()     # names of values that are vectors
    self.lines: list[str] = []
    self.scopes: list[dict] = [{}]
    self.count, self.trips, self.flops = 0, 1, 0
    self.pending: list[tuple] = []     # fused-reduce requests: (node, index, validity, accumulator name)
    self.loop_statements = 0           # statements the reduce executes per work item (a vector one counts once)

  def compute_type(self, dtype) -> str:
    return "float" if dtype.type is np.float16 else ctype(dtype)   # half is a storage type: math in float

  def emit(self, dtype, expr: str, vector: bool = False) -> str:
    name = f"v{self.count}"
    self.count += 1
    ctype_ = self.compute_type(dtype)
    if vector:   # float lanes, or int lanes (-1/0) for comparisons
      if dtype != np.float32 and dtype.kind != "b": raise NotVectorizable(f"{dtype} lanes")
      ctype_ = f"float{self.width}" if dtype == np.float32 else f"int{self.width}"
      self.vectors.add(name)
    self.lines.append(f"{ctype_} {name} = {expr};")
    return name

  def is_vector(self, value: str) -> bool: return value.split(".")[0] in self.vectors

  def as_vector(self, value: str) -> str: return value if self.is_vector(value) else f"((float{self.width})({value}))"

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
    if n.op is Op.ADD:   # x + a padding's zero: a concatenation's part outside its range (-0.0 stays -0.0, as concat)
      zero = [k for k, (m, v) in enumerate(zip(n.src, srcs)) if m.op is Op.PAD and v == literal(0, n.dtype)]
      if zero and n.dtype.kind != "b": return srcs[1 - zero[0]]
    if any(self.is_vector(v) for v in srcs):
      self.flops += self.trips * self.width
      return self._vector_alu(n, srcs)
    self.flops += self.trips
    if n.op is Op.CAST: return self.emit(n.dtype, cast_expr(srcs[0], n.src[0].dtype, n.dtype))
    if n.op is Op.MOD and n.dtype.kind == "f": return self.emit(n.dtype, f"fmod({srcs[0]},{srcs[1]})")
    return self.emit(n.dtype, int_alu(n.op, n.dtype, srcs) or ALU[n.op].format(*srcs))

  def _vector_alu(self, n: Node, srcs: list) -> str:
    if n.op is Op.WHERE and self.is_vector(srcs[0]) and n.dtype == np.float32:
      return self.emit(n.dtype, f"select({self.as_vector(srcs[2])},{self.as_vector(srcs[1])},{srcs[0]})", True)
    if n.op in (Op.CMPLT, Op.CMPEQ) and all(s.dtype == np.float32 for s in n.src):
      return self.emit(n.dtype, ALU[n.op].format(*srcs), True)
    if n.dtype != np.float32 or n.op not in VECTOR_ALU: raise NotVectorizable(n.op.name)
    if n.op in (Op.MAX, Op.POW): srcs = [self.as_vector(v) for v in srcs]
    return self.emit(n.dtype, VECTOR_ALU[n.op].format(*srcs), vector=True)

  def _load(self, n: Node, idx: tuple, valid: tuple) -> str:
    offset = Lin.combine(zip(idx, self.item.strides(n)))
    free, per_lane = self.reads.by_lane(valid)
    guard = (lambda read, zero: f"({render_conditions(free)}?{read}:{zero})") if free else (lambda read, zero: read)
    if self.width > 1 and (offset.uses(self.lane) or per_lane):
      if n.dtype.type not in (np.float32, np.float16): raise NotVectorizable(f"{n.dtype} lanes")
      reads = self.reads
      read = reads.vector(n, offset)
      if per_lane:   # at a border some lanes are padding: read lane by lane there, whole rows elsewhere
        lanes = ",".join(f"({render_conditions(reads.at(per_lane, k))}?{reads.scalar(n, reads.at_lane(offset, k))}:0.0f)"
                         for k in range(self.width))
        read = f"({render_conditions(reads.ends(per_lane))}?{read}:(float{self.width})({lanes}))"
      return self.emit(FLOAT32, guard(read, f"((float{self.width})0.0f)"), True)
    return self.emit(n.dtype, guard(self.reads.scalar(n, offset), literal(0, n.dtype)))

  def _pad(self, n: Node, idx: tuple, valid: tuple) -> str:
    conds, inner = [], []
    for i, (before, _), size in zip(idx, n.arg, n.src[0].shape):
      j = i - before
      lo, hi = j.bounds()
      if hi < 0 or lo >= size: return literal(0, n.dtype)   # entirely in the padding
      if lo < 0 or hi >= size: conds.append((j, size))
      inner.append(j)
    if not conds or self.inside: return self.value(n.src[0], tuple(inner), valid)
    free, per_lane = self.reads.by_lane(tuple(conds))
    self.borders.update(free + self.reads.ends(per_lane))
    v = self.value(n.src[0], tuple(inner), valid + tuple(conds))
    if per_lane:
      if n.dtype != np.float32: raise NotVectorizable(f"{n.dtype} padding lanes")
      # lanes in the padding zeroed by a bitwise and with the mask (Oclgrind 21.10 misreads select() in some loops)
      w = self.width
      v = self.emit(n.dtype, f"as_float{w}(as_int{w}({self.as_vector(v)})&{self.reads.lane_mask(per_lane)})", True)
    if not free: return v
    zero = f"((float{self.width})0.0f)" if self.is_vector(v) else literal(0, n.dtype)
    return self.emit(n.dtype, f"({render_conditions(free)}?{v}:{zero})", self.is_vector(v))

  def _reduce(self, n: Node, idx: tuple, valid: tuple) -> str:
    """Deferred: the accumulator's name now, the loop later in `reduce_loop`, shared by every output of the tile."""
    acc = f"acc{len(self.pending)}"
    if any(i.uses(self.lane) for i in idx):
      if n.dtype != np.float32: raise NotVectorizable(f"{n.dtype} accumulator")
      self.vectors.add(acc)
    self.pending.append((n, idx, valid, acc))
    return acc

  def reduce_loop(self) -> list[str]:
    """One loop nest over the fused reduce's axes, accumulating every pending request. Short axes (a 3x3 window)
    are unrolled, so values shared between neighbouring outputs and taps are loaded once; the outermost loop is split
    where a concatenation along it changes part (concat_segments)."""
    if not self.pending: return []
    n = self.pending[0][0]
    src, lines = n.src[0], []
    init = literal(0, n.dtype) if n.op is Op.SUM else min_literal(n.dtype)
    axes = [ax for ax in n.arg if src.shape[ax] > 1]
    if self.group > 1: return self._grouped_loop(n, src, axes, init)
    if self.reduce_lanes:   # the innermost reduce axis in vector lanes: vector partial sums, added up after the loop
      if n.op is not Op.SUM or n.dtype != np.float32 or not axes or src.shape[axes[-1]] % self.width:
        raise NotVectorizable("reduce lanes")
      sums = {acc: f"{acc}_lanes" for *_, acc in self.pending}
      self.vectors.update(sums.values())
      lines += [f"float{self.width} {sums[acc]} = 0.0f;" for *_, acc in self.pending]
    else:
      lines += [f"{self.compute_type(n.dtype)}{self.width if acc in self.vectors else ''} {acc} = {init};"
                for *_, acc in self.pending]
    unrolled = []
    for ax in reversed(axes[:-1] if self.reduce_lanes else axes):
      if src.shape[ax] <= MAX_UNROLL and math.prod(src.shape[a] for a in unrolled) * src.shape[ax] <= MAX_UNROLL: unrolled.append(ax)
    looped = [ax for ax in axes if ax not in unrolled]
    split = next((ax for ax in looped if not (self.reduce_lanes and ax == axes[-1])), None)
    self.lines, self.loop_statements = lines, 0
    for lo, hi in concat_segments(self.item, src.shape[split]) if split is not None else [(0, 0)]:
      loops, trips = {}, 1
      for ax in looped:
        steps = src.shape[ax] // self.width if self.reduce_lanes and ax == axes[-1] else src.shape[ax]
        first, count = (lo, hi - lo + 1) if ax == split else (0, steps)
        loops[ax] = Lin.of(Var(f"r{ax}", 0, count - 1)) + first   # loops from 0 (the loader reads those)
        self.loop_vars.append(loops[ax].terms[0][0])
        self.lines.append(f"for (int r{ax} = 0; r{ax} < {count}; r{ax}++) {{")
        trips *= count
      if self.reduce_lanes: loops[axes[-1]] = loops[axes[-1]] * self.width + Lin.of(self.lane)
      self.scopes, self.trips = [{}], trips
      header, extra = len(self.lines), self.reads.extra
      for values in itertools.product(*(range(src.shape[ax]) for ax in unrolled)):
        fixed = {**loops, **{ax: Lin.of(v) for ax, v in zip(unrolled, values)}}
        for _, idx, valid, acc in self.pending:
          inner = tuple(fixed.get(ax, i) for ax, i in enumerate(idx))
          v = self._product(src, inner, valid) if n.op is Op.SUM else None
          v = v or self.value(src, inner, valid)
          if self.reduce_lanes: self.lines.append(f"{sums[acc]} = {sums[acc]} + {v};")
          elif n.op is Op.SUM: self.lines.append(f"{acc} = {int_alu(Op.ADD, n.dtype, (acc, v)) or f'{acc} + {v}'};")
          elif acc in self.vectors: self.lines.append(f"{acc} = fmax({acc},{self.as_vector(v)});")
          else: self.lines.append(f"{acc} = ({v}>{acc}?{v}:{acc});")
          self.flops += self.trips * (self.width if acc in self.vectors or self.reduce_lanes else 1)
      self.loop_statements += (len(self.lines) - header + self.reads.extra - extra) * self.trips
      self.lines += ["}"] * len(loops)
    if self.reduce_lanes:
      self.lines += [f"float {acc} = " + "+".join(f"{sums[acc]}.s{i:x}" for i in range(self.width)) + ";"
                     for *_, acc in self.pending]
    return self.lines


  def _product(self, src: Node, idx: tuple, valid: tuple) -> str | None:
    """A float sum's term `a*b` as an expression, not a statement: the accumulation `acc + a*b` is then one C
    expression, which OpenCL compilers contract to a fused multiply-add (FP_CONTRACT is on by default). None when the
    term is not a float product computed here."""
    if not self.is_product(src): return None
    a, b = (self.value(s, idx, valid) for s in src.src)
    self.flops += self.trips * (self.width if self.is_vector(a) or self.is_vector(b) else 1)
    return f"{a}*{b}"

  def is_product(self, src: Node) -> bool:
    """Whether a sum's source is a float product computed in the kernel (rendered by _product, no statement)."""
    return src.op is Op.MUL and src.dtype.kind == "f" and id(src) not in self.args

  def _grouped_loop(self, n: Node, src: Node, axes: list, init: str) -> list[str]:
    """The reduce split across the work-group: work item `lid` takes elements lid, lid + group, ... of the reduce
    axes in row-major order, then the partial results are combined in __local memory by halving (barriers reached by
    every work item); every work item reads the total."""
    g, t = self.group, self.compute_type(n.dtype)
    k = math.prod(src.shape[ax] for ax in axes)
    steps = -(-k // g)
    flat = Lin.of(Var("rg", 0, steps - 1)) * g + Lin.of(Var("lid", 0, g - 1))
    sizes = tuple(src.shape[ax] for ax in axes)
    at = {ax: (flat // st) % size for ax, size, st in zip(axes, sizes, contiguous_strides(sizes))}
    lines = [f"{t} {acc} = {init};" for *_, acc in self.pending]
    lines.append(f"for (int rg = 0; rg < {steps}; rg++) {{")
    if k % g: lines.append(f"if ({flat.render()} < {k}) {{")
    self.lines, self.scopes, self.trips = lines, [{}], steps
    header = len(lines)
    combine = (lambda a, b: int_alu(Op.ADD, n.dtype, (a, b)) or f"{a} + {b}") if n.op is Op.SUM else \
        (lambda a, b: f"({b}>{a}?{b}:{a})")
    for _, idx, valid, acc in self.pending:
      v = self.value(src, tuple(at.get(ax, i) for ax, i in enumerate(idx)), valid)
      self.lines.append(f"{acc} = {combine(acc, v)};")
      self.flops += self.trips
    self.loop_statements = (len(self.lines) - header) * self.trips
    self.lines += ["}"] * (2 if k % g else 1)
    for _, _, _, acc in self.pending:
      self.lines += [f"__local {t} {acc}_part[{g}];", f"{acc}_part[lid] = {acc};", "barrier(CLK_LOCAL_MEM_FENCE);",
                     f"for (int s = {g // 2}; s > 0; s >>= 1) {{",
                     f"if (lid < s) {acc}_part[lid] = {combine(f'{acc}_part[lid]', f'{acc}_part[lid + s]')};",
                     "barrier(CLK_LOCAL_MEM_FENCE);", "}", f"{acc} = {acc}_part[0];"]
    return self.lines


def concat_segments(item: ScheduleItem, size: int, per: int = 1) -> list[tuple[int, int]]:
  """Ranges [first, last], in steps of `per` elements, that split an axis of length `size` (a reduce loop, or the
  innermost launch axis) where a concatenation along it changes part: where a PAD of the kernel's, padding an axis of
  that length, begins or ends. In each range the validity conditions of the parts are known from the variable's
  bounds, so the renderer drops them. One range when there is nothing to split, when a cut falls inside a step, or
  when there would be more than MAX_SEGMENTS ranges (splitting there would multiply the code)."""
  cuts = set()
  for p in kernel_nodes(item):
    if p.op is not Op.PAD: continue
    for (before, _), out, inner in zip(p.arg, p.shape, p.src[0].shape):
      if out == size and inner != size: cuts |= {c for c in (before, before + inner) if 0 < c < size}
  if len(cuts) >= MAX_SEGMENTS or any(c % per for c in cuts): cuts = set()
  edges = [0] + sorted(c // per for c in cuts) + [size // per]
  return [(a, b - 1) for a, b in zip(edges, edges[1:])]


def uses_long_helpers(source: str) -> bool:
  """Whether `source` calls (or defines) the 64-bit floor helpers; a program gets LONG_PRELUDE only then, since
  64-bit integers are optional on embedded-profile devices."""
  return "floordiv_l(" in source or "floormod_l(" in source


def program_source(kernels: list[Kernel]) -> str:
  """One OpenCL program holding `kernels` (their names must be unique)."""
  source = "\n".join(k.source for k in kernels)
  longs = LONG_PRELUDE if uses_long_helpers(source) else ""
  return PRELUDE + longs + (IMAGE_PRELUDE if any(k.uses_images for k in kernels) else "") + source


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
  return "(" + ("&&".join(parts) or "1") + ")"


def view_index(n: Node, idx: tuple) -> tuple:
  """Index into the VIEW's source for index `idx` of the view."""
  return _view_index(n.src[0].shape, n.shape, *n.arg, idx)


@functools.lru_cache(maxsize=1 << 18)
def _view_index(src_shape: tuple, shape: tuple, strides: tuple, offset: int, idx: tuple) -> tuple:
  axes = _axis_parts(src_shape, shape, strides, offset)
  if axes is not None:   # no carry between source axes: each index is a sum of view indices (see _axis_parts)
    return tuple(Lin.combine([(idx[k], m) for k, m in parts], start) for parts, start in axes)
  linear = Lin.combine(zip(idx, strides), offset)
  return tuple(Lin() if size == 1 else (linear // st) % size for size, st in zip(src_shape, contiguous_strides(src_shape)))


def _axis_parts(src_shape: tuple, shape: tuple, strides: tuple, offset: int) -> list | None:
  """Per source axis ([(view axis, multiplier)], start) when every view axis steps along one source axis and no sum
  of them can carry into the next source axis (reshapes that add or drop axes of length 1, permutes, sliding
  windows): then the source index is that sum, exactly as the flat offset's digits for every index in range, and
  free of the division and modulo that keep an index which padding takes out of range (a read it guards anyway)."""
  src_strides = contiguous_strides(src_shape)
  parts, starts = [[] for _ in src_shape], []
  for size, st in zip(src_shape, src_strides):   # the offset's digit along each axis
    starts.append(offset // st % size if st else 0)
  if sum(d * st for d, st in zip(starts, src_strides)) != offset: return None
  for k, (size, st) in enumerate(zip(shape, strides)):
    if size == 1 or st == 0: continue
    m = next((m for m, (n, s) in enumerate(zip(src_shape, src_strides)) if s and st % s == 0 and st // s < n), None)
    if m is None: return None
    parts[m].append((k, st // src_strides[m]))
  for m, n in enumerate(src_shape):
    if starts[m] + sum((shape[k] - 1) * c for k, c in parts[m]) >= n: return None
  return list(zip(parts, starts))


def kernel_name(item: ScheduleItem) -> str:
  reduces = [n for n in kernel_nodes(item) if n.op in REDUCE]
  dims = "_".join(str(s) for s in item.out.shape) or "1"
  if not reduces: return f"E_{dims}"
  return f"r_{dims}_{math.prod(reduces[0].src[0].shape[a] for a in reduces[0].arg)}"


def render(item: ScheduleItem, name: str | None = None, choose=None, images: dict | None = None,
           target: Target | None = None) -> Kernel:
  """OpenCL source and launch sizes for one schedule item on `target` (default pocl). Every shape edgeml/opt.py
  proposes that renders is a candidate; `choose` (a `Variants`, the candidates in order, rendered as far as it looks,
  -> index, e.g. timing them on the device; called even when there is only one) picks one, else the one whose
  reduce executes the fewest statements per output does (a proxy for instructions: a vector statement counts once).
  `images`: id(load node) -> image width in texels, for weights read through image2d_t."""
  kernels = Variants(item, name or kernel_name(item), images, target or TARGETS["pocl"])
  return kernels[choose(kernels) if choose is not None and kernels.at_least(1) else 0]


class Variants:
  """The kernels of one schedule item in the picker's order: fewest reduce statements per output first (a vector
  statement counts once), ties in edgeml/opt.py's order, shapes that do not render left out. Rendered only as far as
  asked for: every shape's code outside the reduce loop is rendered up front (cheap), which gives a lower bound on
  its count (one accumulation per request per reduce step); a shape's loop is rendered only when a kernel not yet
  placed could come before the cheapest rendered one. Indexing and iterating render on demand; len() renders all."""
  def __init__(self, item: ScheduleItem, name: str, images: dict | None, target: Target):
    self.item, self.name, self.images = item, name, images
    self.waiting = []    # (lower bound, index in opt's order, shape, begun render): loop not yet rendered
    self.rendered = []   # (statements per output, index, kernel): rendered, not yet placed
    self.kernels: list[Kernel] = []
    for i, shape in enumerate(candidates(item, target)):
      try: begun = _begin(item, shape, images)
      except NotVectorizable: continue
      self.waiting.append((_lower_bound(begun[0], shape), i, shape, begun))

  def _place_next(self) -> bool:
    """Appends the next kernel in order to self.kernels; False when none is left."""
    while True:
      best = min(self.rendered, key=lambda c: c[:2], default=None)
      if best is not None and all(lb > best[0] or (lb == best[0] and i > best[1]) for lb, i, *_ in self.waiting):
        self.rendered.remove(best)
        self.kernels.append(best[2])
        return True
      if not self.waiting: return False
      nxt = min(self.waiting, key=lambda c: c[:2])
      self.waiting.remove(nxt)
      _, i, shape, begun = nxt
      try: r, kernel = _finish(self.item, shape, self.name, begun)
      except NotVectorizable: continue
      self.rendered.append((r.loop_statements / math.prod(shape.tiles.values(), start=1) / shape.group, i, kernel))

  def at_least(self, n: int) -> bool:
    while len(self.kernels) < n and self._place_next(): pass
    return len(self.kernels) >= n

  def __getitem__(self, index: int) -> Kernel:
    if index < 0: raise IndexError("Variants: only non-negative indices")
    self.at_least(index + 1)
    return self.kernels[index]

  def __iter__(self):
    i = 0
    while self.at_least(i + 1):
      yield self.kernels[i]
      i += 1

  def __len__(self) -> int:
    while self._place_next(): pass
    return len(self.kernels)


def _lower_bound(r: _Renderer, shape: KernelShape) -> float:
  """At most the statements per output `shape`'s reduce loop will execute (r.loop_statements / tiles / group, once
  rendered). Each reduce step has one accumulation per pending request, and, when the reduce's source always emits a
  statement (a load or an arithmetic op), one per distinct index of that source: the loop's scope starts empty, and
  requests whose indices differ off the reduce axes (or in validity) read distinct source values. A float product
  summed is an expression in the accumulation (_Renderer._product), not a statement."""
  if not r.pending: return 0.0
  n = r.pending[0][0]
  src = n.src[0]
  axes = [ax for ax in n.arg if src.shape[ax] > 1]
  steps = math.prod(src.shape[ax] for ax in axes)
  if shape.group > 1: steps = -(-steps // shape.group)
  elif r.reduce_lanes: steps = steps // r.width if axes and src.shape[axes[-1]] % r.width == 0 else 0
  per_step = len(r.pending)
  product = n.op is Op.SUM and r.is_product(src)   # no statement
  if id(src) in r.args or not product and src.op not in (Op.CONST, Op.VIEW, Op.PAD, Op.CONTIGUOUS) and src.op not in REDUCE:
    per_step += len({(tuple(i for ax, i in enumerate(idx) if ax not in axes), valid) for _, idx, valid, _ in r.pending})
  return per_step * steps / math.prod(shape.tiles.values(), start=1) / shape.group


def render_shape(item: ScheduleItem, shape: KernelShape, name: str | None = None, images: dict | None = None) -> Kernel:
  """The kernel of `item` in the given shape (NotVectorizable when its lanes cannot express the kernel)."""
  return _render(item, shape, name or kernel_name(item), images)[1]


def _render(item: ScheduleItem, shape: KernelShape, name: str, images: dict | None):
  return _finish(item, shape, name, _begin(item, shape, images))


def _begin(item: ScheduleItem, shape: KernelShape, images: dict | None, inside: bool = False):
  """Everything of `shape`'s kernel but the reduce loop: (renderer, launch grid, lines after the loop, stores, and
  (output values, a function storing the values named) where the stores may follow a branch, else None). An
  elementwise kernel over a concatenation along its innermost launch axis gets one branch per part (concat_segments),
  in which the bounds of gx drop the other parts' conditions. `inside`: render as if every padding condition held."""
  out, tiles, width, reduce_lanes = item.out, shape.tiles, shape.width, shape.reduce_lanes
  grid = tuple(s // tiles.get(a, 1) for a, s in enumerate(out.shape))
  r = _Renderer(item, width, reduce_lanes, images, shape.group, inside)
  lane_axis = shape.lanes_on(out.shape)
  segments = [None]
  if shape.flat or shape.group > 1:   # one launch dimension over the whole grid
    nx, ny = max(math.prod(grid), 1), 1
    base = lambda gx: [Lin() if s == 1 else (gx // st) % s for s, st in zip(grid, contiguous_strides(grid))]
  else:   # the innermost axis on the first launch dimension, every other axis on the second
    inner = lane_axis_of(grid)
    nx, ny = (grid[inner] if grid else 1), max(math.prod(grid), 1) // (grid[inner] if grid else 1)
    gy = Lin.of(Var("gy", 0, ny - 1))
    outer = tuple(1 if a == inner else s for a, s in enumerate(grid))
    base = lambda gx: [gx if a == inner else Lin() if s == 1 else (gy // st) % s
                       for a, (s, st) in enumerate(zip(outer, contiguous_strides(outer)))]
    if grid and not reduce_length(item):   # outputs per work item along the innermost axis: out.shape[inner] // nx
      segments = concat_segments(item, out.shape[inner], out.shape[inner] // nx)
      if len(segments) == 1: segments = [None]
  scalar_tiles = {a: t for a, t in tiles.items() if width == 1 or reduce_lanes or a != lane_axis}
  lanes = width > 1 and not reduce_lanes
  if lanes and out.dtype != np.float32: raise NotVectorizable("non-float32 output")

  vectors = tiles.get(lane_axis, width) // width if lanes else 1   # vectors per work item along the lane axis

  def indices(gx: Lin) -> list[list]:
    """The output index of each store of a work item."""
    at = base(gx)
    if not lanes: return _tile_indices(at, scalar_tiles)
    at[lane_axis] = at[lane_axis] * vectors * width + Lin.of(r.lane)
    return [idx[:lane_axis] + [idx[lane_axis] + k * width] + idx[lane_axis + 1:]
            for idx in _tile_indices(at, scalar_tiles) for k in range(vectors)]

  def stores(gx: Lin, values: list[str]) -> list[str]:
    out_lines = []
    for idx, v in zip(indices(gx), values):
      where = Lin.combine(zip(idx, item.strides(out)))
      if lanes:
        step, rest = where.split_var(r.lane)
        if step == 1: out_lines.append(f"vstore{width}({r.as_vector(v)},0,data0+{rest.render()});")
        else: out_lines += [f"data0[{(rest + step * k).render()}] = {r.as_vector(v)}.s{k:x};" for k in range(width)]
      elif out.dtype.type is np.float16: out_lines.append(f"vstore_half({v},{where.render()},data0);")
      else: out_lines.append(f"data0[{where.render()}] = ({ctype(out.dtype)})({v});")
    return out_lines

  whole = Lin.of(Var("gx", 0, nx - 1))
  if segments == [None]:
    values = [r.value(out, tuple(idx), ()) for idx in indices(whole)]
    if shape.group > 1:   # every work item reached the barriers; one stores
      return r, (nx, ny), r.lines, ["if (lid == 0) {"] + stores(whole, values) + ["}"], None
    return r, (nx, ny), r.lines, stores(whole, values), (values, lambda names: stores(whole, names))
  # one branch per part computes each output value into o0, o1, ...; the stores follow, for every work item alike
  lines, names, assign = _branch_outputs(r, len(indices(whole)), lanes, out.dtype)
  flops = r.flops
  for i, (first, last) in enumerate(segments):
    r.lines, r.scopes, before = [], [{}], r.flops
    values = [r.value(out, tuple(idx), ()) for idx in indices(Lin.of(Var("gx", first, last)))]
    flops += (r.flops - before) * (last - first + 1) / nx   # only this branch's work items do its arithmetic
    r.flops = before
    opening = "if" if i == 0 else "} else if" if i < len(segments) - 1 else "} else {"
    lines += [f"{opening} (gx < {last + 1}) {{" if i < len(segments) - 1 else opening] + r.lines + assign(values)
  r.flops = round(flops)
  return r, (nx, ny), [], lines + ["}"] + stores(whole, names), None


def _tile_indices(at: list, scalar_tiles: dict) -> list[list]:
  """The output index of each output of a work item's register tile, from the index of its first output."""
  out = []
  for offsets in itertools.product(*(range(t) for t in scalar_tiles.values())):
    idx = list(at)
    for (a, t), o in zip(scalar_tiles.items(), offsets): idx[a] = at[a] * t + o
    out.append(idx)
  return out


def _finish(item: ScheduleItem, shape: KernelShape, name: str, begun) -> tuple[_Renderer, Kernel]:
  """The reduce loop of a begun render, and the kernel. A kernel that reads across padding, where every padding
  condition depends on the work item alone (not on a reduce loop), gets a branch without them for the work items
  inside the borders (most of them): `if (inside) { no conditions } else { every condition }`."""
  r, grid, post, stores, outputs = begun
  lines = r.reduce_loop() + post
  borders = sorted(r.borders, key=lambda c: (c[0].render(), c[1]))
  if not _can_hold(borders) or outputs is None or any(j.uses(v) for j, _ in borders for v in r.loop_vars):
    return r, _kernel(item, r, shape, grid, lines + stores, name)
  # each branch computes the outputs into o0, o1, ...; the stores follow, once
  fast, _, fast_post, _, (fast_values, _) = _begin(item, shape, r.images, inside=True)
  fast_lines = fast.reduce_loop() + fast_post
  r.loop_statements = fast.loop_statements
  values, store = outputs
  decls, names, assign = _branch_outputs(r, len(values), shape.width > 1 and not shape.reduce_lanes, item.out.dtype)
  lines = (decls + [f"if {render_conditions(tuple(borders))} {{"] + fast_lines + assign(fast_values) + ["} else {"] +
           lines + assign(values) + ["}"] + store(names))
  return r, _kernel(item, r, shape, grid, lines, name)


def _branch_outputs(r: _Renderer, count: int, lanes: bool, dtype) -> tuple[list, list, object]:
  """Variables o0, o1, ... to which each branch of a kernel assigns its outputs, for the stores after the branches:
  (their declarations, their names, values -> the assignments)."""
  names = [f"o{k}" for k in range(count)]
  if lanes: r.vectors.update(names)
  kind = f"float{r.width}" if lanes else r.compute_type(dtype)
  assign = lambda values: [f"{o} = {r.as_vector(v) if lanes else v};" for o, v in zip(names, values)]
  return [f"{kind} {o};" for o in names], names, assign


def _can_hold(conds: list) -> bool:
  """Whether the conditions `0 <= j < size` can all hold at once (not two parts of a concatenation): for each index
  less its constant, the ranges they allow overlap."""
  ranges = {}
  for j, size in conds:
    base = Lin(j.terms, 0)
    lo, hi = ranges.get(base, base.bounds())
    ranges[base] = max(lo, -j.const), min(hi, size - 1 - j.const)
  return bool(conds) and all(lo <= hi for lo, hi in ranges.values())


def _kernel(item: ScheduleItem, r: _Renderer, shape: KernelShape, grid: tuple, lines: list, name: str) -> Kernel:
  out, (nx, ny) = item.out, grid
  if shape.group > 1:   # a work-group of `group` work items per output
    (lx, ly), padded = (shape.group, 1), nx * shape.group
    ids = "int lid = get_local_id(0), gx = get_group_id(0);"
  else:
    if shape.flat: lx, ly = min(shape.local, 1 << (nx - 1).bit_length()), 1
    else: lx, ly = pick_local_size(nx, ny)
    padded = -(-nx // lx) * lx
    ids = "int gx = get_global_id(0), gy = get_global_id(1);" + (f"\n  if (gx >= {nx}) return;" if padded != nx else "")
  params = [f"__global {ctype(out.dtype)}* restrict data0"]
  params += [f"read_only image2d_t data{r.args[id(n)]}" if id(n) in r.images else
             f"const __global {ctype(n.dtype)}* restrict data{r.args[id(n)]}" for n in item.loads]
  body = "\n  ".join(lines)
  source = (f"__kernel __attribute__((reqd_work_group_size({lx},{ly},1)))\n"
            f"void {name}({', '.join(params)}) {{\n  {ids}\n  {body}\n}}\n")
  flops = r.flops * nx * ny * (1 if shape.group == 1 else shape.group)
  arg_bytes = tuple(item.stored_bytes(n) for n in (out, *item.loads))
  return Kernel(name, source, (padded, ny), (lx, ly), out, list(item.loads), flops, arg_bytes, bool(r.images))
