"""The scheduler: splits a lazy graph into kernels, each computing one node into its own buffer.

Fusion rules:
- elementwise ops and movement ops fuse into whatever kernel reads them (recomputed, never copied);
- a reduce and the elementwise ops and views above it that keep the elements in their stored order (reshapes,
  slices), up to the last node where all their paths meet, form one kernel whose output is that node
  (`_realize_points`): bias, activation, x * sigmoid(x), a GRU's gates over three slices of one matmul all fuse; when
  that node is a max pool only zero-padded and copied (the next conv's padded input), the kernel writes the padded
  buffer;
- one reduce per kernel: a second one met while building a kernel gets its own buffer;
- costly elementwise math that a reduce reads through a broadcast or overlapping windows (so it would be redone for
  every read) gets its own buffer;
- everything else a kernel reads (device buffers, outputs, chain tops, CONTIGUOUS) is a load; a CONTIGUOUS of
  something that has a buffer anyway is read from that buffer (a copy only where it is an output).
"""
from __future__ import annotations
import math
from dataclasses import dataclass, field
from edgeml.ops import Op, REDUCE, ELEMENTWISE
from edgeml.lazy import Node, contiguous_strides


@dataclass
class ScheduleItem:
  out: Node                                     # the node this kernel computes
  loads: list = field(default_factory=list)     # nodes read from buffers, in first-use order
  pitches: dict = field(default_factory=dict)   # id(node) -> plane pitch in elements, for buffers stored in planes

  def strides(self, n: Node) -> tuple:
    """The element strides of `n`'s buffer as stored: row-major, each plane (the last two axes) `pitch` elements
    after the one before where `n` has a pitch."""
    pitch = self.pitches.get(id(n))
    if pitch is None: return contiguous_strides(n.shape)
    outer = contiguous_strides(n.shape[:-2])
    return tuple(st * pitch for st in outer) + contiguous_strides(n.shape)[-2:]

  def stored_bytes(self, n: Node) -> int:
    """Bytes `n`'s buffer takes as stored: one past its last element."""
    return n.nbytes if id(n) not in self.pitches else stored_bytes(n, self.pitches[id(n)])


PLANE_PAD_BYTES = 64   # one cache line


def plane_pitch(n: Node) -> int | None:
  """Elements from one channel plane (the last two axes) of an activation to the next, one cache line more than the
  plane, when the plane's size is a multiple of 1 KiB: else a reduce over channels (a 1x1 conv) reads, and a tile of
  channels writes, addresses a multiple of 1 KiB apart, which share a handful of cache sets and evict each other
  (mini_drive's 64x128 planes are 32 KiB: its 1x1 convs ran 1.1-1.7x slower). None: row-major is fine."""
  if len(n.shape) < 3 or n.shape[-3] < 2: return None
  plane = n.shape[-1] * n.shape[-2]
  if plane * n.dtype.itemsize % 1024: return None
  return plane + PLANE_PAD_BYTES // n.dtype.itemsize


def stored_bytes(n: Node, pitch: int) -> int:
  """Bytes of `n`'s buffer stored in planes `pitch` elements apart."""
  planes, plane = math.prod(n.shape[:-2]), n.shape[-1] * n.shape[-2]
  return ((planes - 1) * pitch + plane) * n.dtype.itemsize


def is_injective(node: Node) -> bool:
  """True when no two elements of a VIEW read the same source element (no broadcast, no overlapping windows)."""
  dims = sorted((abs(st), n) for n, st in zip(node.shape, node.arg[0]) if n != 1)
  span = 0
  for st, n in dims:
    if st <= span: return False
    span += (n - 1) * st
  return True


COSTLY = {Op.EXP, Op.LOG, Op.SIN, Op.SQRT, Op.POW, Op.DIV}


def _expensive(n: Node, points: set, budget: int = 8) -> bool:
  """Whether computing `n` (down to buffers) takes a transcendental or more than `budget` elementwise ops."""
  stack, seen, count = [n], set(), 0
  while stack:
    m = stack.pop()
    if id(m) in seen or m.op is Op.BUFFER or (m is not n and id(m) in points): continue
    seen.add(id(m))
    if m.op in COSTLY: return True
    count += m.op in ELEMENTWISE
    if count > budget: return True
    if m.op not in REDUCE: stack.extend(m.src)
  return False


def _parents(outputs) -> dict:
  """id(node) -> the distinct unrealized nodes that read it."""
  parents, seen, stack = {}, set(), list(outputs)
  while stack:
    n = stack.pop()
    if id(n) in seen or n.op is Op.BUFFER: continue
    seen.add(id(n))
    for s in n.src:
      ps = parents.setdefault(id(s), [])
      if not any(p is n for p in ps): ps.append(n)
      stack.append(s)
  return parents


def _fuses_upward(n: Node) -> bool:
  """Ops a reduce's kernel takes on above it: elementwise ops, views that keep the elements in their stored order
  (reshapes, and slices: a GRU's gates read three slices of one matmul), and a CONTIGUOUS (then its buffer is the
  output). Not permutes or windows: the kernel would store its result in their order, which its readers do not want."""
  if n.op in ELEMENTWISE or n.op is Op.CONTIGUOUS: return True
  if n.op is not Op.VIEW: return False
  strides, offset = n.arg
  if n.size == n.src[0].size: return strides == contiguous_strides(n.shape) and offset == 0
  rows = contiguous_strides(n.src[0].shape)   # a slice: the source's strides on every axis it keeps
  return len(n.shape) == len(rows) and all(size <= whole and st == (row if size > 1 else 0)
                                           for st, row, size, whole in zip(strides, rows, n.shape, n.src[0].shape))


def _merge_above(n: Node, parents: dict, points: set, limit: int = 40) -> Node | None:
  """The node where every path up from `n` meets again, when every node on the way is one `_fuses_upward` takes: a
  single parent, or the end of a diamond such as x * sigmoid(x). None when there is no such node."""
  region, frontier = {id(n)}, list(parents.get(id(n), []))
  while frontier and len(region) < limit:
    if not all(_fuses_upward(f) for f in frontier): return None
    if len({id(f) for f in frontier}) == 1 and all(id(s) in region or not _reaches(s, region) for s in frontier[0].src):
      return frontier[0]
    ready = [f for f in frontier if all(id(s) in region or not _reaches(s, region) for s in f.src)]
    if not ready or id(ready[0]) in points: return None
    f = ready[0]
    region.add(id(f))
    frontier = [g for g in frontier if g is not f] + [p for p in parents.get(id(f), []) if id(p) not in region]
  return None


def _padded_copy(n: Node, parents: dict) -> Node | None:
  """The zero-padding of `n` when that is `n`'s only reader and is only copied (a conv's prepadded input): the kernel
  computing `n` then writes the padded buffer itself, border included, and no copy is needed. Only for max pools: a
  conv's kernel that computes the padding too runs 1.5-3x slower (yolov8n's stem: 0.86 -> 1.8 ms)."""
  above = parents.get(id(n), [])
  if len(above) != 1 or above[0].op is not Op.PAD: return None
  pad = above[0]
  readers = parents.get(id(pad), [])
  if not readers or any(r.op is not Op.CONTIGUOUS for r in readers) or pad.size > 4 * n.size: return None
  return pad


def _reaches(n: Node, region: set, depth: int = 12) -> bool:
  """Whether `n` reads (through up to `depth` unrealized nodes) any node in `region`."""
  if id(n) in region: return True
  return depth > 0 and n.op is not Op.BUFFER and any(_reaches(s, region, depth - 1) for s in n.src)


def _realize_points(outputs, parents) -> set:
  """Ids of the nodes that get their own buffer: outputs, CONTIGUOUS, and for every reduce the top of the chain of
  single-consumer elementwise/permute nodes above it (its result leaves the kernel there)."""
  points, seen, stack = {id(o) for o in outputs}, set(), list(outputs)
  while stack:
    n = stack.pop()
    if id(n) in seen or n.op is Op.BUFFER: continue
    seen.add(id(n))
    stack.extend(n.src)
    if n.op is Op.CONTIGUOUS: points.add(id(n))
    if n.op in REDUCE:
      top = n
      while id(top) not in points and (above := _merge_above(top, parents, points)) is not None: top = above
      if id(top) not in points and n.op is Op.RMAX: top = _padded_copy(top, parents) or top
      points.add(id(top))
  return points


def schedule(outputs: list[Node]) -> list[ScheduleItem]:
  """Kernels in a valid execution order that realize every node in `outputs`."""
  points = _realize_points(outputs, _parents(outputs))
  items, scheduled = [], set()

  def visit(root: Node):
    if root.op is Op.BUFFER or id(root) in scheduled: return
    scheduled.add(id(root))
    loads, fused, seen = [], [], set()

    def explore(n: Node, in_reduce: bool, reread: bool = False):
      if (id(n), in_reduce, reread) in seen: return
      seen.add((id(n), in_reduce, reread))
      if n is not root and n.op is Op.CONTIGUOUS and (n.src[0].op is Op.BUFFER or id(n.src[0]) in points):
        n = n.src[0]             # already in a buffer of its own: read that one, no copy
      if n is not root and (n.op is Op.BUFFER or id(n) in points):
        if n not in loads: loads.append(n)
        return
      if n.op in REDUCE or (reread and n.op in ELEMENTWISE and _expensive(n, points)):
        if n.op in ELEMENTWISE or in_reduce or (fused and fused[0] is not n):
          points.add(id(n))      # a second reduce, or costly math a reduce would redo per read: its own buffer
          loads.append(n)
          return
        fused[:] = [n]
      for s in n.src:
        explore(s, in_reduce or n.op in REDUCE, reread or (in_reduce and n.op is Op.VIEW and not is_injective(n)))

    explore(root, False)
    for n in loads: visit(n)
    items.append(ScheduleItem(root, loads))

  for o in outputs: visit(o)
  return items
