"""What shape a kernel takes: the decisions between scheduling and rendering, one small record per kernel.

A kernel's outputs form a grid; a `KernelShape` says how work items cover it: `tiles` neighbouring outputs per work
item along some axes (register tiles), `width` vector lanes on an output axis (`lane_axis`: by default the last one
longer than 1; for a convolution also its output channels) or, with `reduce_lanes`, on the innermost reduce axis;
`flat` launches the grid as one padded dimension of `local` work items per group (GPU-like devices, which need many
work items in groups of 64 or more); `group` > 1 splits each output's reduce across a work-group of that many work
items (a grouped reduce: each takes a strided share of the reduce axes, the partial results are combined through
__local memory), so few outputs with long reduces still fill a GPU.

`candidates` lists the shapes worth rendering for a ScheduleItem on a Target (compiled/targets.py), best guess first;
the renderer (edgeml/codegen.py) prints any of them and decides nothing. Heuristics per device class: CPU-like targets
(PoCL) get big register tiles and vector lanes; GPU-like targets keep at least MIN_GPU_ITEMS work items per launch.
"""
from __future__ import annotations
import math
from dataclasses import dataclass, field
from compiled.targets import Target
from edgeml.ops import REDUCE
from edgeml.schedule import ScheduleItem

MIN_GPU_ITEMS = 4096     # work items a GPU launch should have (so every compute unit gets several groups)
CHANNEL_BLOCK = 8        # vector lanes of channel-lane shapes; conv and matmul weights are stored in blocks of as many
MAX_GROUP = 256          # work items sharing one grouped reduce at most


@dataclass(frozen=True)
class KernelShape:
  tiles: dict = field(default_factory=dict)   # output axis -> outputs per work item along it
  width: int = 1              # vector lanes (on the lane axis, or with reduce_lanes on the innermost reduce axis)
  reduce_lanes: bool = False
  flat: bool = False          # one padded launch dimension over the whole grid, `local` work items per group
  local: int = 0              # work-group size of a flat or grouped launch (0: chosen by pick_local_size)
  group: int = 1              # work items splitting each output's reduce (grouped reduce); its work-group size
  lane_axis: int | None = None   # the output axis in vector lanes (None: lane_axis_of the output shape)

  def __hash__(self): return hash((tuple(sorted(self.tiles.items())), self.width, self.reduce_lanes, self.flat,
                                   self.local, self.group, self.lane_axis))

  def lanes_on(self, out_shape: tuple) -> int:
    """The output axis in vector lanes."""
    return lane_axis_of(out_shape) if self.lane_axis is None else self.lane_axis


def pick_local_size(nx: int, ny: int) -> tuple[int, int]:
  """CPU-like launches: (lx, ly), up to 64 work items, leaving at least 8 work groups (2 cores x 2 and some slack)
  when possible. lx divides nx when it can, so no work item falls off the grid: a bounds guard (`if (gx >= nx)
  return;`) keeps PoCL from running a group's work items in vector lanes (3x slower on a plain elementwise kernel).
  Else a power of two padding nx by at most 1/8. ly divides ny."""
  lx = _divisor(nx, 64, ny)
  if lx < 3 and lx != nx:
    lx = next((l for l in (64, 32, 16, 8, 4, 2) if -(-nx // l) * l - nx <= nx // 8 and -(-nx // l) * ny >= 8), lx)
  return lx, _divisor(ny, 64 // lx, -(-nx // lx))


def _divisor(n: int, limit: int, other_groups: int) -> int:
  """The largest divisor of n of at most `limit` that leaves at least 8 work groups (times other_groups), else 1."""
  return next((d for d in range(min(n, limit), 0, -1) if n % d == 0 and n // d * other_groups >= 8), 1)


def lane_axis_of(shape: tuple) -> int:
  """The axis put in vector lanes: the last one longer than 1 (its elements are contiguous)."""
  return max([a for a, s in enumerate(shape) if s > 1], default=len(shape) - 1)


def kernel_nodes(item: ScheduleItem) -> list:
  """The nodes computed inside the kernel (not its loads)."""
  out, stack, seen = [], [item.out], set()
  while stack:
    n = stack.pop()
    if id(n) in seen or (n is not item.out and n in item.loads): continue
    seen.add(id(n))
    out.append(n)
    stack.extend(n.src)
  return out


def reduce_length(item: ScheduleItem) -> int:
  """Elements folded into each output by the kernel's reduce (0 without one)."""
  reduces = [n for n in kernel_nodes(item) if n.op in REDUCE]
  return math.prod(reduces[0].src[0].shape[a] for a in reduces[0].arg) if reduces else 0


def cpu_shapes(item: ScheduleItem) -> list[KernelShape]:
  """Shapes for CPU-like devices. Each work item computes `tiles[axis]` neighbouring outputs along one or two axes
  (a small divisor of the axis); vector lanes on the lane axis, or on the innermost reduce axis, or (channel lanes)
  8 lanes on another axis, times a tile along the lane axis: a convolution's output channels, whose weights conv2d
  stores in blocks of 8 channels, so one vector load feeds a vector FMA for each output position of the tile. At
  most 32 scalar outputs, 64 vector lanes (80 for a channel-lane tile of 2 rows by 5) per work item; at least 8 work
  items."""
  shape = item.out.shape
  lane_axis = lane_axis_of(shape)
  if not reduce_length(item):   # elementwise: lanes only
    return [KernelShape({lane_axis: w}, w) for w in (8, 4) if shape and shape[lane_axis] % w == 0][:1] + [KernelShape()]
  singles = []
  for a, s in enumerate(shape):
    divisors = [t for t in (8, 4, 5, 3, 2) if s % t == 0 and s > 1]
    singles += [{a: t} for t in divisors[:2 if divisors[:1] == [8] else 1]]
  tilings = [{}] + singles + [{**x, **y} for i, x in enumerate(singles) for y in singles[i + 1:] if x.keys() != y.keys()]
  out = []
  for tiles in tilings:
    count = math.prod(tiles.values(), start=1)
    if item.out.size // count < 8: continue
    if tiles.get(lane_axis) in (2, 4, 8) and count <= 64: out.append(KernelShape(tiles, tiles[lane_axis]))
    if count <= 32: out.append(KernelShape(tiles))
    if count <= 8: out.append(KernelShape(tiles, 8, True))
  return out + channel_lane_shapes(item) or [KernelShape()]


def channel_lane_shapes(item: ScheduleItem) -> list[KernelShape]:
  """8 lanes on the channel axis (the first axis before the lane axis whose length is a multiple of 8), times a tile
  of up to 8 outputs along the lane axis, or of 2 rows (the axis before it) by up to 5; or 2 vectors of 8 channels
  times up to 5 outputs along the lane axis or 2 rows by 2, or 3 vectors times up to 4 outputs (each input load then
  feeds two or three vector FMAs; a 12 -> 24 channel stem: 1.3x faster). At most 12 vector accumulators (CPU-like
  devices: 16 vector registers)."""
  shape, lane_axis, b = item.out.shape, lane_axis_of(item.out.shape), CHANNEL_BLOCK
  a = next((a for a, s in enumerate(shape[:lane_axis]) if s % b == 0), None)
  if a is None: return []
  row = lane_axis - 1
  rows = row > a and shape[row] % 2 == 0
  cols = [t for t in range(8, 1, -1) if shape[lane_axis] % t == 0]
  tilings = [{a: b, lane_axis: t} for t in cols[:2]] or [{a: b}]
  if rows: tilings += [{a: b, row: 2, lane_axis: t} for t in cols if t <= 5][:1]
  if shape[a] % (2 * b) == 0:
    tilings += [{a: 2 * b, lane_axis: t} for t in cols if t <= 5][:1]
    if rows and 2 in cols: tilings.append({a: 2 * b, row: 2, lane_axis: 2})
  if shape[a] % (3 * b) == 0: tilings += [{a: 3 * b, lane_axis: t} for t in cols if t <= 4][:1]
  return [KernelShape(t, b, lane_axis=a) for t in tilings if item.out.size // math.prod(t.values()) >= 8]


def work_items(item: ScheduleItem, s: KernelShape) -> int:
  """Work items a shape launches (before padding to the work-group size)."""
  return item.out.size // math.prod(s.tiles.values(), start=1) * s.group


def gpu_shapes(item: ScheduleItem, target: Target) -> list[KernelShape]:
  """Shapes for GPU-like devices: flat launches in groups of target.work_group, only tiles that leave at least
  MIN_GPU_ITEMS work items; when none does and the kernel reduces, a grouped reduce of up to MAX_GROUP work items per
  output, enough to reach MIN_GPU_ITEMS (at least 64, at most the reduce length rounded up to a power of two)."""
  local = target.work_group
  flat = [KernelShape(s.tiles, s.width, s.reduce_lanes, True, local, lane_axis=s.lane_axis) for s in cpu_shapes(item)]
  big = [s for s in flat if work_items(item, s) >= MIN_GPU_ITEMS]
  k = reduce_length(item)
  if big or not k: return big or [s for s in flat if not s.tiles] or flat
  group = 64
  while group < MAX_GROUP and item.out.size * group < MIN_GPU_ITEMS and group < k: group *= 2
  return [KernelShape(group=group, local=group)]


def candidates(item: ScheduleItem, target: Target) -> list[KernelShape]:
  """The shapes worth rendering for `item` on `target`, in the order of the heuristic's preference."""
  return gpu_shapes(item, target) if target.gpu else cpu_shapes(item)
