"""Bad use raises ValueError/TypeError whose message names the shapes, axis or dtype involved."""
import numpy as np
import pytest
from edgeml import Tensor


def t(*shape):
  return Tensor(np.zeros(shape, np.float32))


@pytest.mark.parametrize("make,error,words", [
  (lambda: t(2, 3) + t(4, 3), ValueError, ["(2, 3)", "(4, 3)"]),
  (lambda: t(2, 3) @ t(4, 5), ValueError, ["(2, 3)", "(4, 5)", "3 != 4"]),
  (lambda: t(2, 3).sum(axis=2), ValueError, ["axis 2", "(2, 3)"]),
  (lambda: t(2, 3).softmax(-3), ValueError, ["axis -3"]),
  (lambda: t(2, 3).reshape(4, 2), ValueError, ["(2, 3)", "(4, 2)"]),
  (lambda: t(2, 3).permute(0, 0), ValueError, ["permute"]),
  (lambda: t(2, 3).expand(4, 3), ValueError, ["(2, 3)", "(4, 3)"]),
  (lambda: t(1, 3, 4, 4).conv2d(t(2, 2, 3, 3)), ValueError, ["(1, 3, 4, 4)", "(2, 2, 3, 3)"]),
  (lambda: t(1, 3, 2, 2).conv2d(t(2, 3, 3, 3)), ValueError, ["(3, 3)"]),
  (lambda: t(2, 3).cat(t(3, 3), axis=1), ValueError, ["(2, 3)", "(3, 3)"]),
  (lambda: t(2, 3).split([1, 1], axis=1), ValueError, ["[1, 1]", "3"]),
  (lambda: t(2, 3).squeeze(0), ValueError, ["axis 0", "(2, 3)"]),
  (lambda: t(2, 3)[5], IndexError, ["5", "axis 0"]),
  (lambda: t(2, 3).cast(np.complex64), TypeError, ["complex64"]),
  (lambda: Tensor(np.array(["a"])), TypeError, ["<U1"]),
  (lambda: Tensor(np.zeros(2, np.complex64)), TypeError, ["complex64"]),
])
def test_bad_use_names_the_problem(make, error, words):
  with pytest.raises(error) as info:
    make()
  for w in words: assert w in str(info.value), f"{w!r} not in {info.value}"
