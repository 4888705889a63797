"""edgeml/opt.py: the shapes proposed per device class (no device needed except where numerics are checked)."""
import math
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from compiled.targets import TARGETS
from edgeml import Tensor
from edgeml.codegen import NotVectorizable, program_source, render, render_shape
from edgeml.host_eval import device_buffer
from edgeml.opt import MIN_GPU_ITEMS, KernelShape, candidates, channel_lane_shapes, cpu_shapes, reduce_length, work_items
from edgeml.realize import realize
from edgeml.schedule import schedule
from compiled.kernelsig import kernels_of

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


def test_stride2_stem_conv_on_pocl_puts_output_channels_in_lanes():
  """Output channels in vector lanes (conv2d stores the weights in blocks of 8 channels: one vload8 per tap) and a
  tile of output positions per work item: each input read is shared by 8 channels, no stride-2 lane shuffles; the
  kernel still computes the convolution."""
  x = rng.standard_normal((1, 12, 16, 32)).astype(np.float32)
  w = rng.standard_normal((24, 12, 3, 3)).astype(np.float32)
  t = Tensor(x).conv2d(Tensor(w), stride=2, padding=1)
  item = last_item(t)
  assert render(item, target=TARGETS["pocl"]).source in [render_shape(item, s).source for s in channel_lane_shapes(item)]
  xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
  want = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + 15:2, j:j + 31:2], w[:, :, i, j]) for i in range(3) for j in range(3))
  np.testing.assert_allclose(t.numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [KernelShape({1: 8}, 8), KernelShape(group=64, local=64), KernelShape({1: 8, 3: 4}, 8, lane_axis=1)])
def test_shapes_are_hashable_records(shape):
  assert len({shape, KernelShape(dict(shape.tiles), shape.width, shape.reduce_lanes, shape.flat, shape.local, shape.group,
                                 shape.lane_axis)}) == 1


def conv_ref(x, w, stride, pad, groups):
  n, c, h, wd = x.shape
  co, cg, k, _ = w.shape
  xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
  out, cog = np.zeros((n, co, oh, ow)), co // groups
  for g in range(groups):
    for i in range(k):
      for j in range(k):
        win = xp[:, g * cg:(g + 1) * cg, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
        out[:, g * cog:(g + 1) * cog] += np.einsum("nchw,oc->nohw", win, w[g * cog:(g + 1) * cog, :, i, j])
  return out


def run(k):
  import pyopencl as cl
  from compiled.device import default_device
  dev = default_device()
  buf = dev.alloc(k.out.nbytes)
  args = [device_buffer(n) for n in k.loads]
  cl.Kernel(dev.build(program_source([k])), k.name)(dev.queue, k.global_size, k.local_size, buf, *args)
  return dev.download(buf, k.out.shape, k.out.dtype)


@settings(max_examples=10, deadline=None)
@given(cin_g=st.integers(1, 5), cout_g=st.sampled_from([1, 2, 3, 5, 7, 8, 11, 16, 24]), groups=st.sampled_from([1, 2, 3]),
       depthwise=st.booleans(), h=st.integers(1, 7), w=st.integers(1, 9), k=st.sampled_from([1, 3]),
       stride=st.sampled_from([1, 2]))
@example(cin_g=5, cout_g=16, groups=2, depthwise=False, h=5, w=9, k=3, stride=2)    # weights blocked by channels
@example(cin_g=5, cout_g=16, groups=3, depthwise=False, h=1, w=1, k=3, stride=1)
@example(cin_g=8, cout_g=32, groups=1, depthwise=False, h=6, w=4, k=3, stride=1)    # two vectors of channels
@example(cin_g=3, cout_g=24, groups=1, depthwise=False, h=12, w=16, k=3, stride=2)  # three vectors of channels
def test_every_shape_of_a_conv_computes_it(cin_g, cout_g, groups, depthwise, h, w, k, stride):
  """Convs with channel counts that are not multiples of a tile or of the weights' channel block, 1x1 and 3x3,
  stride 2, groups and depthwise, tiny and odd spatial sizes: the shape each target picks, every channel-lane shape,
  and the grouped reduce, against numpy."""
  if depthwise: cin_g, cout_g = 1, 1
  x = rng.standard_normal((1, cin_g * groups, h, w)).astype(np.float32)
  wt = rng.standard_normal((cout_g * groups, cin_g, k, k)).astype(np.float32)
  t = Tensor(x).conv2d(Tensor(wt), stride=stride, padding=k // 2, groups=groups).relu()
  want = np.maximum(conv_ref(x, wt, stride, k // 2, groups), 0)
  items = schedule([t.node])
  realize([it.out for it in items[:-1]])   # the weights blocked by channels, when they are
  item = schedule([t.node])[-1]
  kernels = [render(item, target=TARGETS[name]) for name in ("pocl", "nvidia")]
  for shape in channel_lane_shapes(item):
    try: kernels.append(render_shape(item, shape))
    except NotVectorizable: pass
  if reduce_length(item): kernels.append(render_shape(item, KernelShape(group=4, local=4)))
  for kernel in kernels:
    np.testing.assert_allclose(run(kernel).reshape(want.shape), want, rtol=1e-4, atol=1e-4, err_msg=kernel.source[:200])


@pytest.mark.parametrize("stride", [1, 2])
def test_a_padded_conv_branches_for_work_items_inside_the_borders(stride):
  """A depthwise 3x3 conv over a padded 16x24 map: work items whose every read is inside the map take a branch with
  no border conditions (plain vector loads), the others check every read; every shape computes the conv, borders
  included, against numpy."""
  x = rng.standard_normal((1, 16, 16, 24)).astype(np.float32)
  wt = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)
  t = Tensor(x).conv2d(Tensor(wt), stride=stride, padding=1, groups=16)
  want = conv_ref(x, wt, stride, 1, 16)
  item = last_item(t)
  kernels = []
  for shape in cpu_shapes(item)[:6]:
    try: kernels.append(render_shape(item, shape))
    except NotVectorizable: pass
  assert all(" else {" in k.source for k in kernels)
  fast = render(item, target=TARGETS["pocl"]).source.split(" else {")[0]
  assert "if ((" in fast and "?" not in fast.split("if ((")[1], fast   # the inside branch: no condition per read
  for kernel in kernels:
    np.testing.assert_allclose(run(kernel).reshape(want.shape), want, rtol=1e-4, atol=1e-4, err_msg=kernel.source[:300])


def test_a_concatenation_has_no_inside_branch():
  """Concatenating along an outer axis (rows, not the columns in vector lanes): the parts' conditions exclude each
  other, so there is no branch where all of them hold."""
  a = rng.standard_normal((6, 16)).astype(np.float32)
  t = Tensor(a).cat(Tensor(a[:3]).exp(), axis=0)
  source = render(last_item(t), target=TARGETS["pocl"]).source
  assert "?" in source and " else {" not in source, source
  np.testing.assert_allclose(t.numpy(), np.concatenate([a, np.exp(a[:3])]), rtol=1e-6)

def test_a_reduce_over_a_concatenation_loops_over_each_part():
  """A 1x1 conv over channels concatenated from three tensors (8, 8 and 5 channels): the channel loop is split at the
  parts' boundaries, and no loop reads a part under a per-step condition."""
  x = rng.standard_normal((1, 8, 6, 8)).astype(np.float32)
  w = rng.standard_normal((16, 21, 1, 1)).astype(np.float32)
  t = Tensor(x).cat(Tensor(x) * 2, Tensor(x[:, :5]), axis=1).conv2d(Tensor(w))
  item = last_item(t)
  source = render(item, target=TARGETS["pocl"]).source
  loops = [line for line in source.splitlines() if line.strip().startswith("for (")]
  assert [loop.split(";")[1].split("<")[1].strip() for loop in loops] == ["8", "8", "5"], loops   # one loop per part
  assert "?" not in source.split("for (")[1].split("}")[0]   # no condition in the first part's loop
  decl = kernels_of(source)[item_name(source)]
  assert all(decl.read_extent(p, render(item, target=TARGETS["pocl"]).global_size) for p in range(1, len(decl.params))), \
    "the loader checks every read of every part"
  want = np.einsum("nchw,oc->nohw", np.concatenate([x, 2 * x, x[:, :5]], 1).astype(np.float64), w[:, :, 0, 0])
  np.testing.assert_allclose(t.numpy(), want, rtol=1e-4, atol=1e-4)


def test_an_elementwise_concatenation_branches_per_part():
  """Concatenating along the innermost axis (16 + 8 + 8 columns): one branch per part, on the work item's column,
  with no per-element condition inside; in vector lanes too."""
  a = rng.standard_normal((4, 16)).astype(np.float32)
  t = Tensor(a).cat(Tensor(a[:, :8]).exp(), Tensor(a[:, 8:]) * 2, axis=1)
  item = last_item(t)
  for shape in cpu_shapes(item):
    kernel = render_shape(item, shape)
    per = 8 if shape.width == 8 else 1
    assert f"if (gx < {16 // per}) {{" in kernel.source and f"}} else if (gx < {24 // per}) {{" in kernel.source
    assert "?" not in kernel.source, kernel.source
    np.testing.assert_allclose(run(kernel), np.concatenate([a, np.exp(a[:, :8]), 2 * a[:, 8:]], 1), rtol=1e-6)


def item_name(source: str) -> str:
  return source.split("void ")[1].split("(")[0]


def test_concatenation_keeps_negative_zero_and_addition_does_not():
  """cat copies -0.0 as it is (numpy); x + 0.0 is +0.0 (IEEE), though both are x plus a zero in the graph."""
  x = np.array([[-0.0, 1.0, -0.0, 2.0] * 4] * 3, np.float32)
  cat = Tensor(x).cat(Tensor(x), axis=1).numpy()
  np.testing.assert_array_equal(np.signbit(cat), np.signbit(np.concatenate([x, x], 1)))
  assert not np.signbit((Tensor(x) + 0.0).numpy()).any()


def test_launches_divide_odd_grids():
  """A 900 x 9 elementwise kernel: its work-groups divide the grid (9 columns, 900 rows), so no work item needs a
  bounds guard, and hold more than a handful of work items; it computes the same."""
  a = rng.standard_normal((900, 9)).astype(np.float32)
  kernel = render(last_item(Tensor(a).exp() * 2), target=TARGETS["pocl"])
  assert kernel.global_size == (9, 900) and "return;" not in kernel.source
  assert 900 % kernel.local_size[1] == 0 and math.prod(kernel.local_size) >= 32, kernel.local_size
  np.testing.assert_allclose(run(kernel), np.exp(a) * 2, rtol=1e-6)
