"""edgeml/opt.py: the shapes proposed per device class (no device needed except where numerics are checked)."""
import math
import numpy as np
import pytest
from compiled.targets import TARGETS
from edgeml import Tensor
from edgeml.codegen import render, render_shape
from edgeml.opt import MIN_GPU_ITEMS, KernelShape, candidates, cpu_shapes, reduce_length, work_items
from edgeml.schedule import schedule

rng = np.random.default_rng(0)


def last_item(t: Tensor):
  return schedule([t.node])[-1]


def test_elementwise_gets_lanes_only():
  item = last_item(Tensor(rng.standard_normal((4, 64)).astype(np.float32)).exp())
  assert reduce_length(item) == 0
  assert [(s.tiles, s.width) for s in cpu_shapes(item)] == [({1: 8}, 8), ({}, 1)]


def test_gemv_on_a_gpu_is_a_grouped_reduce():
  x, w = Tensor(np.ones((1, 2048), np.float32)), Tensor(np.ones((1024, 2048), np.float32))
  item = last_item(x.linear(w))
  for name in ("nvidia", "adreno"):
    shapes = candidates(item, TARGETS[name])
    assert shapes and all(s.group >= 64 and work_items(item, s) >= MIN_GPU_ITEMS for s in shapes), shapes
  assert all(s.group == 1 for s in candidates(item, TARGETS["pocl"]))
  k = render(item, target=TARGETS["nvidia"])
  assert math.prod(k.global_size) == 1024 * k.local_size[0] and k.local_size[0] >= 64


def test_big_conv_on_a_gpu_keeps_enough_work_items():
  x, w = Tensor(np.ones((1, 32, 32, 64), np.float32)), Tensor(np.ones((64, 32, 3, 3), np.float32))
  item = last_item(x.conv2d(w, padding=1))
  shapes = candidates(item, TARGETS["nvidia"])
  assert shapes and all(s.flat and s.group == 1 and work_items(item, s) >= MIN_GPU_ITEMS for s in shapes)
  k = render(item, target=TARGETS["nvidia"])
  assert k.local_size == (TARGETS["nvidia"].work_group, 1)


def test_stride2_stem_conv_on_pocl_tiles_output_channels():
  """A stride-2 lane read is two loads and a shuffle: the stem conv shares each input read across output channels
  (about 2.5x faster on PoCL than output rows), and still computes the convolution."""
  x = rng.standard_normal((1, 12, 16, 32)).astype(np.float32)
  w = rng.standard_normal((24, 12, 3, 3)).astype(np.float32)
  t = Tensor(x).conv2d(Tensor(w), stride=2, padding=1)
  item = last_item(t)
  assert render(item, target=TARGETS["pocl"]).source == render_shape(item, KernelShape({1: 8, 3: 8}, 8)).source
  xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
  want = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + 15:2, j:j + 31:2], w[:, :, i, j]) for i in range(3) for j in range(3))
  np.testing.assert_allclose(t.numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [KernelShape({1: 8}, 8), KernelShape(group=64, local=64)])
def test_shapes_are_hashable_records(shape):
  assert len({shape, KernelShape(dict(shape.tiles), shape.width, shape.reduce_lanes, shape.flat, shape.local, shape.group)}) == 1
