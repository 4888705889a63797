"""The scheduler: splits a lazy graph into kernels, each computing one node into its own buffer.

Fusion rules:
- elementwise ops and movement ops fuse into whatever kernel reads them (recomputed, never copied);
- a reduce and the chain of single-consumer elementwise ops and element-preserving views (reshape, permute, flip)
  above it form one kernel whose output is the top of that chain (`_realize_points`);
- one reduce per kernel: a second one met while building a kernel gets its own buffer;
- everything else a kernel reads (device buffers, outputs, chain tops, CONTIGUOUS) is a load.
"""
from __future__ import annotations
from dataclasses import dataclass, field
from edgeml.ops import Op, REDUCE, ELEMENTWISE
from edgeml.lazy import Node


@dataclass
class ScheduleItem:
  out: Node                                     # the node this kernel computes
  loads: list = field(default_factory=list)     # nodes read from buffers, in first-use order


def is_permutation(node: Node) -> bool:
  """True when a VIEW reads every source element exactly once (a reshape, permute or flip)."""
  if node.op is not Op.VIEW: return False
  strides, offset = node.arg
  if node.size != node.src[0].size: return False
  dims = sorted((abs(st), n) for n, st in zip(node.shape, strides) if n != 1)
  expect = 1
  for st, n in dims:
    if st != expect: return False
    expect *= n
  return offset == sum((n - 1) * -st for n, st in zip(node.shape, strides) if st < 0)


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
  return n.op in ELEMENTWISE or is_permutation(n)


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
      while id(top) not in points and len(ps := parents.get(id(top), [])) == 1 and _fuses_upward(ps[0]): top = ps[0]
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

    def explore(n: Node, in_reduce: bool):
      if (id(n), in_reduce) in seen: return
      seen.add((id(n), in_reduce))
      if n is not root and (n.op is Op.BUFFER or id(n) in points):
        if n not in loads: loads.append(n)
        return
      if n.op in REDUCE:
        if in_reduce or (fused and fused[0] is not n):   # a second reduce in one kernel: give it a buffer
          points.add(id(n))
          loads.append(n)
          return
        fused[:] = [n]
      for s in n.src: explore(s, in_reduce or n.op in REDUCE)

    explore(root.src[0] if root.op is Op.CONTIGUOUS else root, False)
    for n in loads: visit(n)
    items.append(ScheduleItem(root, loads))

  for o in outputs: visit(o)
  return items


def kernel_count(outputs: list[Node]) -> int:
  return len(schedule(outputs))
