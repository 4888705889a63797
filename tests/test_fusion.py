"""Kernel counts of the scheduler's fusion rules, checked both in the schedule and in what actually runs."""
import numpy as np
import pytest
from edgeml import Tensor
from edgeml.ops import Op
from edgeml.realize import realize
from edgeml.schedule import schedule

pytestmark = pytest.mark.portable   # small and device-independent: the Oclgrind job runs these too


def rng(*shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_count(t: Tensor) -> int:
  stats = []
  realize([t.node], stats)
  return len(stats)


def weight_kernels(out: Tensor, x: Tensor) -> list:
  """The nodes out's kernels compute that do not depend on x (weights re-laid for the kernels that read them:
  compiling folds them)."""
  dynamic, weights = {id(x.node)}, []
  for it in schedule([out.node]):
    if any(id(n) in dynamic for n in it.loads): dynamic.add(id(it.out))
    else: weights.append(it.out)
  return weights


def input_kernels(out: Tensor, x: Tensor) -> int:
  """Kernels of out's schedule that depend on x."""
  return len(schedule([out.node])) - len(weight_kernels(out, x))


def test_linear_bias_relu_is_one_kernel():
  x, w, b = Tensor(rng(4, 16)), Tensor(rng(16, 8, seed=1)), Tensor(rng(8, seed=2))
  out = (x @ w + b).relu()
  assert input_kernels(out, x) == 1
  realize(weight_kernels(out, x))
  assert run_count(out) == 1
  np.testing.assert_allclose(out.numpy(), np.maximum(rng(4, 16) @ rng(16, 8, seed=1) + rng(8, seed=2), 0), rtol=1e-4, atol=1e-5)


def test_conv_bias_relu_is_one_kernel():
  out = Tensor(rng(1, 3, 8, 8)).conv2d(Tensor(rng(4, 3, 3, 3, seed=1)), Tensor(rng(4, seed=2)), padding=1).relu()
  assert run_count(out) == 1


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_is_at_most_three_kernels(axis):
  out = Tensor(rng(5, 6, 7)).softmax(axis)
  assert len(schedule([out.node])) <= 3
  assert run_count(out) <= 3


def test_elementwise_chain_and_movement_are_one_kernel():
  x = Tensor(rng(6, 5))
  out = ((x.T * 2 + 1).exp().reshape(30)[::-1].reshape(5, 6) - x.T).sqrt().abs()
  assert run_count(out) == 1


def test_elementwise_before_and_after_reduce_fuse():
  x = Tensor(rng(8, 9))
  out = ((x * 3).exp().sum(1) + 1).log()
  assert run_count(out) == 1


def test_shared_reduce_is_computed_once():
  x = Tensor(rng(8, 9))
  s = x.sum(1)
  a, b = s + 1, s * 2
  items = schedule([a.node, b.node])
  assert len(items) == 3                              # the sum, then each output reads its buffer
  Tensor.realize_all(a, b)
  np.testing.assert_allclose(a.numpy(), rng(8, 9).sum(1) + 1, rtol=1e-5)


def test_broadcast_reduce_result_gets_its_own_kernel():
  x = Tensor(rng(8, 9))
  out = x - x.mean(1, keepdim=True)                   # the mean is read by every element of its row
  assert run_count(out) == 2


def test_gates_reading_slices_of_a_matmul_fuse_into_it():
  """GRU gates (linear before reset): three slices of one matmul, combined elementwise with the input's gates and the
  state, are the matmul's kernel, written into a CONTIGUOUS (the next state's buffer): one kernel; and two slices
  that overlap are still right (each one's elements computed where it reads them)."""
  H = 16
  h, xg, R, b = rng(2, H), rng(2, 3 * H, seed=1), rng(H, 3 * H, seed=2), rng(3 * H, seed=3)
  ht = Tensor(h)
  a = ht @ Tensor(R) + Tensor(b)
  x = Tensor(xg)
  z, r = (x[:, :H] + a[:, :H]).sigmoid(), (x[:, H:2 * H] + a[:, H:2 * H]).sigmoid()
  out = ((1 - z) * (x[:, 2 * H:] + r * a[:, 2 * H:]).tanh() + z * ht).contiguous()
  assert input_kernels(out, ht) == 1
  sig = lambda v: 1 / (1 + np.exp(-v))
  an = h.astype(np.float64) @ R + b
  zn, rn = sig(xg[:, :H] + an[:, :H]), sig(xg[:, H:2 * H] + an[:, H:2 * H])
  np.testing.assert_allclose(out.numpy(), (1 - zn) * np.tanh(xg[:, 2 * H:] + rn * an[:, 2 * H:]) + zn * h,
                             rtol=1e-4, atol=1e-5)
  overlap = (a[:, :2 * H] * a[:, H:]).exp()
  np.testing.assert_allclose(overlap.numpy(), np.exp(an[:, :2 * H] * an[:, H:]), rtol=1e-4, atol=1e-5)


def test_squeeze_excite_is_four_kernels():
  """global mean -> 1x1 conv -> relu -> 1x1 conv -> sigmoid -> scale: a reduce over size-1 axes (the 1x1 kernel on a
  1x1 map) is a reshape, not a kernel, and 96 outputs of a long mean are one kernel (no split)."""
  x, w1, b1, w2, b2 = rng(1, 96, 16, 24), rng(24, 96, 1, 1, seed=1), rng(24, seed=2), rng(96, 24, 1, 1, seed=3), rng(96, seed=4)
  xt = Tensor(x)
  s = xt.mean((2, 3), keepdim=True).conv2d(Tensor(w1), Tensor(b1)).relu().conv2d(Tensor(w2), Tensor(b2)).sigmoid()
  out = xt * s
  assert input_kernels(out, xt) == 4
  h = np.maximum(np.einsum("oc,c->o", w1[:, :, 0, 0], x.astype(np.float64).mean((0, 2, 3))) + b1, 0)
  want = x / (1 + np.exp(-(np.einsum("oc,c->o", w2[:, :, 0, 0], h) + b2))).reshape(1, 96, 1, 1)
  np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-5)


def test_conv_with_many_taps_reads_a_padded_copy():
  """A 3x3 conv, 8 -> 16 channels: a padding kernel, then the conv (no border conditions), whose constant weights are
  re-laid in blocks of 8 output channels by a kernel that depends on no input."""
  from compiled.targets import TARGETS
  from edgeml.codegen import render
  xs, w, b = rng(1, 8, 8, 8), rng(16, 8, 3, 3, seed=1), rng(16, seed=2)
  x = Tensor(xs)
  out = x.conv2d(Tensor(w), Tensor(b), padding=1).relu()
  items = schedule([out.node])
  assert input_kernels(out, x) == 2 and len(items) == 3
  assert ">=0" not in render(items[-1], target=TARGETS["pocl"]).source   # no border conditions in the conv
  xp = np.pad(xs.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
  want = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + 8, j:j + 8], w[:, :, i, j]) for i in range(3) for j in range(3))
  np.testing.assert_allclose(out.numpy(), np.maximum(want + b.reshape(1, 16, 1, 1), 0), rtol=1e-4, atol=1e-4)



def test_pool_writes_the_next_convs_padded_input():
  """A 2x2 max pool feeding a 3x3 conv that reads a padded copy: the pool's kernel writes the padded buffer itself,
  zero border included (no separate copy), in vector lanes; pool then conv match numpy, border rows and columns too."""
  from compiled.targets import TARGETS
  from edgeml.codegen import render
  xs, w = rng(1, 8, 16, 20), rng(16, 8, 3, 3, seed=1)
  x = Tensor(xs)
  out = x.relu().max_pool2d(2).conv2d(Tensor(w), padding=1)
  items = schedule([out.node])
  assert input_kernels(out, x) == 2, [it.out for it in items]
  pool = next(it for it in items if it.loads == [x.node])
  assert pool.out.op is Op.PAD and pool.out.shape[2:] == (10, 16)   # 8 + 2 rows; 10 + 2 columns, up to 8 lanes
  assert "float8" in render(pool, target=TARGETS["pocl"]).source
  pooled = np.maximum(xs, 0).reshape(1, 8, 8, 2, 10, 2).max((3, 5)).astype(np.float64)
  xp = np.pad(pooled, ((0, 0), (0, 0), (1, 1), (1, 1)))
  want = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + 8, j:j + 10], w[:, :, i, j]) for i in range(3) for j in range(3))
  np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4)


def test_conv_does_not_write_the_next_convs_padded_input():
  """A conv before a conv that reads a padded copy computes only its own outputs (computing the border too made
  yolov8n's stem 2x slower): the padded copy is a kernel of its own."""
  x = Tensor(rng(1, 8, 16, 16))
  out = x.conv2d(Tensor(rng(16, 8, 3, 3, seed=1)), padding=1).relu().conv2d(Tensor(rng(16, 16, 3, 3, seed=2)), padding=1)
  shapes = [it.out.shape for it in schedule([out.node]) if len(it.loads) == 2]   # the convs: input and weights
  assert shapes == [(1, 16, 16, 16)] * 2, shapes
  assert input_kernels(out, x) == 4   # x's padded copy, conv, its padded copy, conv


def test_conv_output_channels_are_padded_to_the_block():
  """A 1x1 conv to 27 channels (a detection head) computes 32, the 5 extra from zero weights, in blocks of 8
  channels; the result is cropped to 27 and matches numpy."""
  xs, w, b = rng(1, 48, 6, 10), rng(27, 48, 1, 1, seed=1), rng(27, seed=2)
  x = Tensor(xs)
  out = x.conv2d(Tensor(w), Tensor(b)).sigmoid()
  from edgeml.opt import reduce_length
  conv = [it.out.shape for it in schedule([out.node]) if reduce_length(it)]
  assert len(conv) == 1 and 32 in conv[0], conv
  assert [k.shape for k in weight_kernels(out, x)] == [(4, 48, 1, 1, 8)]
  want = np.einsum("nchw,oc->nohw", xs.astype(np.float64), w[:, :, 0, 0]) + b.reshape(1, 27, 1, 1)
  np.testing.assert_allclose(out.numpy(), 1 / (1 + np.exp(-want)), rtol=1e-4, atol=1e-5)


def test_stem_conv_with_few_weights_is_blocked():
  """A stem conv (3 -> 16 channels, 432 weights) over a large image does enough work to read blocked weights and a
  padded copy of its input; the same conv over a small input reads them as they are."""
  w = rng(16, 3, 3, 3, seed=1)
  for side, copies in [(128, 2), (8, 0)]:
    xs = rng(1, 3, side, side)
    x = Tensor(xs)
    out = x.conv2d(Tensor(w), padding=1)
    assert len(weight_kernels(out, x)) == copies // 2 and input_kernels(out, x) == 1 + copies // 2, side
    xp = np.pad(xs.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + side, j:j + side], w[:, :, i, j]) for i in range(3) for j in range(3))
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4)

@pytest.mark.parametrize("dtype", [np.float32, np.bool_, np.int32])
def test_reducing_only_size_one_axes_is_no_kernel(dtype):
  x = (rng(3, 1, 4, 1) > 0).astype(dtype)
  for op in ("sum", "max"):
    out = getattr(Tensor(x), op)((1, 3))
    stack, ops = [out.node], set()
    while stack: ops.add(stack[-1].op); stack.extend(stack.pop().src)
    assert not ops & {Op.SUM, Op.RMAX}, ops
    want = getattr(x, op)((1, 3))
    assert out.dtype == (np.int32 if dtype is np.bool_ and op == "sum" else dtype), (op, out.dtype)   # as for any axis
    np.testing.assert_array_equal(out.numpy(), want)


def test_contiguous_of_a_buffer_is_read_in_place():
  """h.contiguous() where h is a kernel's output anyway (a recurrent state) costs no copy kernel."""
  x, w = Tensor(rng(1, 64)), Tensor(rng(64, 64, seed=1))
  h = (x @ w).tanh().contiguous()
  out = (h @ w).tanh()
  assert input_kernels(out, x) == 2
  ref = np.tanh(np.tanh(rng(1, 64) @ rng(64, 64, seed=1)) @ rng(64, 64, seed=1))
  np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-5)
