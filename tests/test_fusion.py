"""Kernel counts of the scheduler's fusion rules, checked both in the schedule and in what actually runs."""
import numpy as np
import pytest
from edgeml import Tensor
from edgeml.realize import realize
from edgeml.schedule import schedule


def rng(*shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_count(t: Tensor) -> int:
  stats = []
  realize([t.node], stats)
  return len(stats)


def test_linear_bias_relu_is_one_kernel():
  x, w, b = Tensor(rng(4, 16)), Tensor(rng(16, 8, seed=1)), Tensor(rng(8, seed=2))
  out = (x @ w + b).relu()
  assert len(schedule([out.node])) == 1
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
