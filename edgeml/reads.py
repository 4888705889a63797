"""How a kernel reads what it loads: one element (a buffer index, vload_half, a component of an image texel), or
`width` vector lanes at once (vloadN of neighbouring elements, two loads and a shuffle for every other element, a
broadcast, a gather of lanes far apart, whole texels); and the per-lane conditions of a read at a padded border.
edgeml/codegen.py prints the rest of the kernel around these reads.

`images` maps id(load node) -> image width in texels for loads read through image2d_t: element e is component e%4 of
texel e/4, at (texel % width, texel / width)."""
from __future__ import annotations
import numpy as np
from edgeml.schedule import ScheduleItem
from edgeml.symbolic import Lin, Var


class NotVectorizable(Exception):
  """The kernel reads or computes something lane by lane that a vector type cannot express; use scalar tiles."""


class Reads:
  def __init__(self, item: ScheduleItem, width: int, reduce_lanes: bool, images: dict | None):
    self.width, self.reduce_lanes = width, reduce_lanes
    self.images = {i: w for i, w in (images or {}).items() if any(id(n) == i for n in item.loads)}
    self.args = {id(n): i + 1 for i, n in enumerate(item.loads)}   # id(load node) -> its kernel argument
    self.lane = Var("lane", 0, width - 1)
    self.extra = 0   # statements beyond one that the reads cost (a stride-2 lane read: 3)

  def texel(self, n, t: Lin) -> str:
    w = self.images[id(n)]
    return f"read_imagef(data{self.args[id(n)]},weights_sampler,(int2)({(t % w).render()},{(t // w).render()}))"

  def scalar(self, n, offset: Lin) -> str:
    """Element `offset` of n."""
    if id(n) in self.images:
      lane, texel = offset % 4, self.texel(n, offset // 4)
      return f"{texel}.s{lane.const}" if lane.is_const() else f"texel_lane({texel},{lane.render()})"
    buf = f"data{self.args[id(n)]}"
    if n.dtype.type is np.float16: return f"vload_half({offset.render()},{buf})"
    return f"{buf}[{offset.render()}]"

  def vector(self, n, offset: Lin) -> str:
    """`width` lanes of n from offset: one vload for neighbouring elements, two overlapping ones for every other
    element (stride-2 windows), a broadcast when the offset does not depend on the lane, else one read per lane."""
    coef, rest = offset.split_var(self.lane)
    if coef == 0: return f"((float{self.width})({self.scalar(n, offset)}))"
    if coef is None: raise NotVectorizable("lane inside a division")
    if coef not in (1, 2):   # lanes far apart: one read each
      # not for lanes on the reduce axis: such gathers seldom pay, and Oclgrind 21.10 computes some of those kernels
      # wrong where PoCL is right (a 1x1 conv over 16 + 24 concatenated channels, 3 output rows per work item)
      if self.reduce_lanes: raise NotVectorizable("reduce lanes far apart")
      self.extra += self.width - 1
      return f"(float{self.width})({','.join(self.scalar(n, rest + coef * k) for k in range(self.width))})"
    if id(n) in self.images:   # whole texels only: 4 or 8 lanes from a multiple of 4
      if coef != 1 or self.width not in (4, 8) or not (rest % 4).is_const() or (rest % 4).const:
        raise NotVectorizable("image lanes not aligned to texels")
      reads = [self.texel(n, rest // 4 + i) for i in range(self.width // 4)]
      return reads[0] if self.width == 4 else f"(float8)({reads[0]},{reads[1]})"
    vload, w, at = ("vload_half" if n.dtype.type is np.float16 else "vload"), self.width, f"data{self.args[id(n)]}+{rest.render()}"
    if coef == 2:   # two loads and a shuffle
      self.extra += 2
      return f"(float{w})({vload}{w}(0,{at}).even,{vload}{w}(0,{at}+{w - 1}).odd)"
    return f"{vload}{w}(0,{at})"

  def by_lane(self, conds: tuple) -> tuple[tuple, tuple]:
    """(conditions that hold for all lanes alike, conditions that depend on the lane)."""
    per_lane = tuple(c for c in conds if c[0].uses(self.lane))
    if any(j.split_var(self.lane)[0] is None for j, _ in per_lane): raise NotVectorizable("lane inside a division")
    return tuple(c for c in conds if not c[0].uses(self.lane)), per_lane

  def at_lane(self, j: Lin, k: int) -> Lin:
    coef, rest = j.split_var(self.lane)
    return rest + coef * k

  def at(self, conds: tuple, k: int) -> tuple: return tuple((self.at_lane(j, k), size) for j, size in conds)

  def ends(self, conds: tuple) -> tuple:
    """Conditions at the first and last lane: indices are linear in the lane, so both ends in range means all."""
    return self.at(conds, 0) + self.at(conds, self.width - 1)

  def lane_mask(self, conds: tuple) -> str:
    """An int vector, -1 in the lanes where every condition holds."""
    lanes = f"(int{self.width})({','.join(map(str, range(self.width)))})"
    parts = []
    for j, size in conds:
      coef, rest = j.split_var(self.lane)
      jv = f"({rest.render()}+{lanes}*{coef})"
      parts.append(f"({jv}>=0)&({jv}<{size})")
    return "(" + "&".join(parts) + ")"
