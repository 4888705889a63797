"""The memory plan: every intermediate buffer gets an offset in one shared arena, reusing bytes whose contents are
dead. Buffers are placed one by one at the lowest aligned offset free for their whole lifetime; a few placement
orders are tried and the smallest arena wins."""
from dataclasses import dataclass


@dataclass
class Interval:
  nbytes: int
  first: int    # index of the kernel that writes it
  last: int     # index of the last kernel that reads it


def align_up(n: int, align: int) -> int:
  return -(-n // align) * align


ORDERS = (
  lambda iv: (-iv.nbytes, iv.first),                        # largest first
  lambda iv: (iv.first, -iv.nbytes),                        # in execution order
  lambda iv: (-(iv.last - iv.first), -iv.nbytes),           # longest-lived first
  lambda iv: (-iv.nbytes * (iv.last - iv.first + 1), iv.first),
)


def plan_arena(intervals: list[Interval], align: int) -> tuple[list[int], int]:
  """(offset per interval, arena size): the smallest of a few greedy placement orders."""
  return min((_place(intervals, align, order) for order in ORDERS), key=lambda plan: plan[1])


def _place(intervals: list[Interval], align: int, order) -> tuple[list[int], int]:
  """Each buffer, in `order`, at the lowest aligned offset free during its whole lifetime."""
  offsets: list[int] = [0] * len(intervals)
  placed: list[int] = []
  for i in sorted(range(len(intervals)), key=lambda i: (order(intervals[i]), i)):
    me, size = intervals[i], align_up(intervals[i].nbytes, align)
    busy = sorted((offsets[j], offsets[j] + align_up(intervals[j].nbytes, align)) for j in placed
                  if intervals[j].first <= me.last and me.first <= intervals[j].last)
    offset = 0
    for start, end in busy:
      if offset + size <= start: break
      offset = max(offset, end)
    offsets[i] = offset
    placed.append(i)
  return offsets, max((o + align_up(iv.nbytes, align) for o, iv in zip(offsets, intervals)), default=0)


def liveness_lower_bound(intervals: list[Interval], align: int) -> int:
  """The most bytes live at one time: no plan can use less."""
  steps = {iv.first for iv in intervals}
  return max((sum(align_up(iv.nbytes, align) for iv in intervals if iv.first <= t <= iv.last) for t in steps), default=0)
