"""The lazy graph: one Node per primitive op, with its shape and dtype; nothing runs until a Node is realized."""
from __future__ import annotations
import math
import numpy as np
from edgeml.ops import Op


class Node:
  __slots__ = ("op", "src", "arg", "shape", "dtype", "buffer", "host", "__weakref__")

  def __init__(self, op: Op, src: tuple, arg, shape: tuple, dtype: np.dtype):
    self.op, self.src, self.arg, self.shape, self.dtype = op, src, arg, tuple(int(s) for s in shape), np.dtype(dtype)
    self.buffer = None   # once realized: a numpy array (data on the host) or, once a kernel needed it, a device buffer
    self.host = None     # the host copy of the data when there is one (kept after upload: no download needed)

  @property
  def size(self) -> int: return math.prod(self.shape)

  @property
  def nbytes(self) -> int: return self.size * self.dtype.itemsize

  @property
  def realized(self) -> bool: return self.buffer is not None

  def set_buffer(self, buffer) -> None:
    """Becomes a leaf holding `buffer` (a numpy array in the row-major layout of shape, bools as bool or uint8, or a
    device buffer): the graph behind it can be freed."""
    self.op, self.src, self.arg, self.buffer = Op.BUFFER, (), None, buffer
    self.host = buffer if isinstance(buffer, np.ndarray) else None

  def __repr__(self): return f"Node({self.op.name}, {self.shape}, {self.dtype})"


def contiguous_strides(shape) -> tuple:
  strides, acc = [], 1
  for s in reversed(shape):
    strides.append(acc if s != 1 else 0)
    acc *= s
  return tuple(reversed(strides))


def view(src: Node, shape, strides, offset: int = 0) -> Node:
  """A strided view over the row-major elements of `src` (the primitive behind every reshape/permute/expand/slice)."""
  shape = tuple(int(s) for s in shape)
  strides = tuple(0 if n == 1 else int(st) for n, st in zip(shape, strides))
  if shape == src.shape and strides == contiguous_strides(shape) and offset == 0: return src
  return Node(Op.VIEW, (src,), (strides, offset), shape, src.dtype)
