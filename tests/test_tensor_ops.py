"""Every Tensor op and composition against numpy on the default OpenCL device, with hypothesis shapes and values.

Float32 tolerances: exact ops (add, max, movement, where...) match to rtol 1e-6; transcendental ops to
rtol 1e-5 / atol 1e-6 (OpenCL's exp/log/sin are within a few ulp); reductions and matmul/conv, whose summation
order differs from numpy's, to rtol 1e-4 / atol 1e-4 against a float64 reference.
"""
import math
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from edgeml import Tensor
from edgeml.realize import realize

pytestmark = pytest.mark.portable   # small and device-independent: the Oclgrind job runs these too

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
EXACT = dict(rtol=1e-6, atol=1e-6)
TRANSCENDENTAL = dict(rtol=1e-5, atol=1e-6)
SUMS = dict(rtol=1e-4, atol=1e-4)

dims = st.integers(1, 7)
shapes = st.lists(dims, min_size=1, max_size=4).map(tuple)


def arrays(shape, lo=-3.0, hi=3.0, seed=0):
  return np.random.default_rng(seed).uniform(lo, hi, size=shape).astype(np.float32)


def check(got: Tensor, want, **tol):
  got = got.numpy()
  want = np.asarray(want)
  assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
  np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), **(tol or EXACT))


UNARY = [
  ("neg", lambda t: -t, lambda a: -a, (-3, 3), EXACT),
  ("exp", Tensor.exp, np.exp, (-5, 5), TRANSCENDENTAL),
  ("log", Tensor.log, np.log, (0.01, 10), TRANSCENDENTAL),
  ("sqrt", Tensor.sqrt, np.sqrt, (0, 10), TRANSCENDENTAL),
  ("reciprocal", Tensor.reciprocal, lambda a: 1 / a, (0.1, 5), TRANSCENDENTAL),
  ("sin", Tensor.sin, np.sin, (-6, 6), TRANSCENDENTAL),
  ("cos", Tensor.cos, np.cos, (-6, 6), dict(rtol=1e-5, atol=1e-5)),
  ("abs", Tensor.abs, np.abs, (-3, 3), EXACT),
  ("floor", Tensor.floor, np.floor, (-5, 5), EXACT),
  ("ceil", Tensor.ceil, np.ceil, (-5, 5), EXACT),
  ("round", Tensor.round, np.round, (-5, 5), EXACT),
  ("relu", Tensor.relu, lambda a: np.maximum(a, 0), (-3, 3), EXACT),
  ("sigmoid", Tensor.sigmoid, lambda a: 1 / (1 + np.exp(-a)), (-8, 8), TRANSCENDENTAL),
  ("tanh", Tensor.tanh, np.tanh, (-5, 5), dict(rtol=1e-5, atol=1e-6)),
  ("leaky_relu", lambda t: t.leaky_relu(0.1), lambda a: np.where(a > 0, a, 0.1 * a), (-3, 3), EXACT),
  ("elu", Tensor.elu, lambda a: np.where(a > 0, a, np.expm1(a)), (-3, 3), TRANSCENDENTAL),
  ("gelu", Tensor.gelu, lambda a: 0.5 * a * (1 + np.vectorize(math.erf)(a / math.sqrt(2))), (-4, 4), dict(rtol=1e-5, atol=1e-6)),
  ("gelu_tanh", lambda t: t.gelu("tanh"),
   lambda a: 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3))), (-4, 4), dict(rtol=1e-5, atol=1e-6)),
  ("silu", Tensor.silu, lambda a: a / (1 + np.exp(-a)), (-6, 6), TRANSCENDENTAL),
  ("clip", lambda t: t.clip(-1, 0.5), lambda a: np.clip(a, -1, 0.5), (-3, 3), EXACT),
  ("erf", Tensor.erf, np.vectorize(math.erf), (-3, 3), dict(rtol=0, atol=2e-7)),
  ("square", Tensor.square, np.square, (-3, 3), EXACT),
]


@pytest.mark.parametrize("name,fn,ref,rng,tol", UNARY, ids=[u[0] for u in UNARY])
@SETTINGS
@given(shape=shapes)
def test_unary(name, fn, ref, rng, tol, shape):
  a = arrays(shape, *rng)
  check(fn(Tensor(a)), ref(a.astype(np.float64)), **tol)


BINARY = [
  ("add", lambda x, y: x + y, np.add, (-3, 3)),
  ("sub", lambda x, y: x - y, np.subtract, (-3, 3)),
  ("mul", lambda x, y: x * y, np.multiply, (-3, 3)),
  ("div", lambda x, y: x / y, np.divide, (0.5, 3)),
  ("pow", lambda x, y: x ** y, np.power, (0.1, 3)),
  ("maximum", Tensor.maximum, np.maximum, (-3, 3)),
  ("minimum", Tensor.minimum, np.minimum, (-3, 3)),
  ("mod", lambda x, y: x % y, np.mod, (-3, 3)),
  ("lt", lambda x, y: x < y, np.less, (-3, 3)),
  ("gt", lambda x, y: x > y, np.greater, (-3, 3)),
  ("le", lambda x, y: x <= y, np.less_equal, (-3, 3)),
  ("ge", lambda x, y: x >= y, np.greater_equal, (-3, 3)),
  ("eq", lambda x, y: x.eq(y), np.equal, (-3, 3)),
  ("ne", lambda x, y: x.ne(y), np.not_equal, (-3, 3)),
]


@st.composite
def broadcastable(draw):
  """Two shapes that broadcast: a base shape and a copy with random axes set to 1 and leading axes dropped."""
  base = draw(shapes)
  other = tuple(1 if draw(st.booleans()) else d for d in base)
  return base, other[draw(st.integers(0, len(other) - 1)):]


@pytest.mark.parametrize("name,fn,ref,rng", BINARY, ids=[b[0] for b in BINARY])
@SETTINGS
@given(pair=broadcastable(), swap=st.booleans())
def test_binary(name, fn, ref, rng, pair, swap):
  sa, sb = pair[::-1] if swap else pair
  a, b = arrays(sa, *rng, seed=1), arrays(sb, *rng, seed=2)
  if name in ("eq", "ne", "le", "ge"): a, b = a.round(), b.round()   # make equal values common
  check(fn(Tensor(a), Tensor(b)), ref(a.astype(np.float64), b.astype(np.float64)), **TRANSCENDENTAL)


def test_scalar_operands_and_reflected_ops():
  a = arrays((3, 4))
  check(2 - Tensor(a), 2 - a)
  check(1 / (Tensor(a).abs() + 1), 1 / (np.abs(a) + 1), **TRANSCENDENTAL)
  check(Tensor(a) * 3 + 0.5, a * 3 + 0.5)
  check(2 ** Tensor(a), 2 ** a.astype(np.float64), **TRANSCENDENTAL)


def test_integer_and_bool_ops():
  a = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
  b = np.array([1, 2, -3, 5], np.int32)
  check(Tensor(a) + Tensor(b), a + b)
  check(Tensor(a) * 3, a * 3)
  check(Tensor(a) % Tensor(b), a % b)
  check(Tensor(a).fmod(Tensor(b)), np.fmod(a, b))
  check(Tensor(a).idiv(Tensor(b)), np.trunc(a / b).astype(np.int32))
  check(Tensor(a).maximum(Tensor(b)), np.maximum(a, b))
  check(Tensor(a).minimum(Tensor(b)), np.minimum(a, b))
  check(Tensor(a).abs(), np.abs(a))
  check(Tensor(a).sum(0), a.sum(0))
  check(Tensor(a).max(1), a.max(1))
  check(Tensor(a).min(1), a.min(1))
  m, n = a > 0, (a % 2) == 0
  check(Tensor(m) & Tensor(n), m & n)
  check(Tensor(m) | Tensor(n), m | n)
  check(Tensor(m) ^ Tensor(n), m ^ n)
  check(~Tensor(m), ~m)
  check(Tensor(m).sum(), m.sum())
  check(Tensor(a).bitwise_and(Tensor(b)), a & b)
  big = np.array([2 ** 40, -(2 ** 35)], np.int64)
  check(Tensor(big) * 2, big * 2)


@SETTINGS
@given(shape=shapes, dtype=st.sampled_from(["float32", "int32", "int64", "uint8", "bool", "float16"]))
def test_cast_roundtrip(shape, dtype):
  a = arrays(shape, -100, 100)
  want = a.astype(dtype)
  got = Tensor(a).cast(dtype).numpy()
  assert got.dtype == np.dtype(dtype)
  np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-3 if dtype == "float16" else 0)
  np.testing.assert_array_equal(Tensor(want).cast(np.float32).numpy(), want.astype(np.float32))


def test_where():
  c, a, b = arrays((4, 1, 3)) > 0, arrays((5, 1), seed=1), arrays((1, 3), seed=2)
  check(Tensor(c).where(Tensor(a), Tensor(b)), np.where(c, a, b))
  check(Tensor(c).where(1.5, Tensor(b)), np.where(c, 1.5, b))
  check(Tensor(c).where(Tensor(a), 0), np.where(c, a, 0))


@st.composite
def shape_and_axes(draw):
  shape = draw(shapes)
  axes = draw(st.lists(st.integers(0, len(shape) - 1), unique=True, max_size=len(shape)))
  return shape, (tuple(axes) if axes else None)


REDUCES = [
  ("sum", Tensor.sum, np.sum), ("max", Tensor.max, np.max), ("min", Tensor.min, np.min),
  ("mean", Tensor.mean, np.mean), ("prod", Tensor.prod, np.prod),
]


@pytest.mark.parametrize("name,fn,ref", REDUCES, ids=[r[0] for r in REDUCES])
@SETTINGS
@given(sa=shape_and_axes(), keepdim=st.booleans())
def test_reduce(name, fn, ref, sa, keepdim):
  shape, axes = sa
  a = arrays(shape, 0.5, 1.5) if name == "prod" else arrays(shape)
  check(fn(Tensor(a), axes, keepdim), ref(a.astype(np.float64), axis=axes, keepdims=keepdim), **SUMS)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_argmax_argmin_cumsum(shape, data):
  a = np.round(arrays(shape), 1)   # ties happen: the first index must win, as in numpy
  axis = data.draw(st.integers(0, len(shape) - 1))
  check(Tensor(a).argmax(axis), a.argmax(axis))
  check(Tensor(a).argmin(axis), a.argmin(axis))
  check(Tensor(a).argmax(), a.argmax())
  check(Tensor(a).cumsum(axis), np.cumsum(a, axis), **SUMS)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_movement(shape, data):
  a = arrays(shape)
  t = Tensor(a)
  perm = data.draw(st.permutations(range(len(shape))))
  check(t.permute(perm), a.transpose(perm))
  check(t.reshape(-1), a.reshape(-1))
  check(t.permute(perm).reshape(a.size), a.transpose(perm).reshape(-1))
  axis = data.draw(st.integers(0, len(shape) - 1))
  check(t.flip(axis), np.flip(a, axis))
  check(t.unsqueeze(axis).expand(*shape[:axis], 3, *shape[axis:]), np.broadcast_to(a[(slice(None),) * axis + (None,)],
                                                                                    shape[:axis] + (3,) + shape[axis:]))
  pads = [tuple(data.draw(st.integers(-1, 2)) for _ in range(2)) for _ in shape]
  pads = [(max(b, -(n // 2)), max(e, -(n // 2))) for (b, e), n in zip(pads, shape)]
  crop = tuple(slice(max(-b, 0), n - max(-e, 0)) for (b, e), n in zip(pads, shape))
  want = np.pad(a[crop], [(max(b, 0), max(e, 0)) for b, e in pads], constant_values=1.5)
  check(t.pad(pads, value=1.5), want)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_slicing_with_steps(shape, data):
  a = arrays(shape)
  index = tuple(slice(data.draw(st.integers(-n, n)), data.draw(st.integers(-n - 1, n)),
                      data.draw(st.sampled_from([1, 2, 3, -1, -2]))) for n in shape)
  want = a[index]
  if want.size == 0: return
  check(Tensor(a)[index], want)
  check(Tensor(a)[0], a[0])
  check(Tensor(a)[..., None, -1], a[..., None, -1])
  check(Tensor(a)[..., :1], a[..., :1])
  check(Tensor(a)[0, ...], a[0, ...])


@SETTINGS
@given(shape=shapes, data=st.data())
def test_concatenate_and_split(shape, data):
  axis = data.draw(st.integers(0, len(shape) - 1))
  a, b = arrays(shape), arrays(shape[:axis] + (2,) + shape[axis + 1:], seed=1)
  check(Tensor(a).cat(Tensor(b), Tensor(a), axis=axis), np.concatenate([a, b, a], axis))
  parts = Tensor(a).split([1, shape[axis] - 1] if shape[axis] > 1 else [1], axis)
  for got, want in zip(parts, np.split(a, [1], axis) if shape[axis] > 1 else [a]): check(got, want)
  check(Tensor.stack([Tensor(a), Tensor(a) * 2], axis=axis), np.stack([a, a * 2], axis))
  check(Tensor(a).repeat(*([2] + [1] * (len(shape) - 1))), np.tile(a, [2] + [1] * (len(shape) - 1)))


@SETTINGS
@given(m=dims, k=dims, n=dims, batch=st.lists(st.integers(1, 3), max_size=2).map(tuple))
def test_matmul(m, k, n, batch):
  a, b = arrays(batch + (m, k)), arrays((k, n), seed=1)
  check(Tensor(a) @ Tensor(b), a.astype(np.float64) @ b, **SUMS)
  check(Tensor(a[..., 0, :]) @ Tensor(b), a[..., 0, :].astype(np.float64) @ b, **SUMS)
  check(Tensor(b.T) @ Tensor(a[(0,) * len(batch)][0]), b.T.astype(np.float64) @ a[(0,) * len(batch)][0], **SUMS)
  bias = arrays((n,), seed=3)
  check(Tensor(a).linear(Tensor(b.T.copy()), Tensor(bias)), a.astype(np.float64) @ b + bias, **SUMS)


def conv_reference(x, w, stride, pad, dil, groups):
  n, c, h, wd = x.shape
  co, cg, kh, kw = w.shape
  xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  oh, ow = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1, (wd + 2 * pad - dil * (kw - 1) - 1) // stride + 1
  out = np.zeros((n, co, oh, ow))
  for o in range(co):
    g = o // (co // groups)
    for i in range(kh):
      for j in range(kw):
        patch = xp[:, g * cg:(g + 1) * cg, i * dil:i * dil + stride * (oh - 1) + 1:stride, j * dil:j * dil + stride * (ow - 1) + 1:stride]
        out[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, i, j])
  return out


@SETTINGS
@given(groups=st.sampled_from([1, 2, 3]), cg=st.integers(1, 3), cog=st.integers(1, 3), hw=st.tuples(st.integers(3, 9), st.integers(3, 9)),
       k=st.integers(1, 3), stride=st.integers(1, 2), pad=st.integers(0, 2), dil=st.integers(1, 2), batch=st.integers(1, 2))
def test_conv2d(groups, cg, cog, hw, k, stride, pad, dil, batch):
  if hw[0] + 2 * pad < dil * (k - 1) + 1 or hw[1] + 2 * pad < dil * (k - 1) + 1: return
  x = arrays((batch, groups * cg) + hw)
  w = arrays((groups * cog, cg, k, k), seed=1)
  b = arrays((groups * cog,), seed=2)
  got = Tensor(x).conv2d(Tensor(w), Tensor(b), stride=stride, padding=pad, dilation=dil, groups=groups)
  check(got, conv_reference(x, w, stride, pad, dil, groups) + b.reshape(1, -1, 1, 1), **SUMS)


def test_conv_transpose2d():
  x, w = arrays((1, 4, 5, 6)), arrays((4, 3, 3, 3), seed=1)
  # the transposed conv is the adjoint of conv: <conv_t(x), y> == <x, conv(y)> for any y
  got = Tensor(x).conv_transpose2d(Tensor(w), stride=2, padding=1).numpy()
  y = arrays(got.shape, seed=2)
  lhs = (got.astype(np.float64) * y).sum()
  rhs = (x.astype(np.float64) * conv_reference(y, w, 2, 1, 1, 1)).sum()
  assert got.shape == (1, 3, 9, 11)
  np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


@SETTINGS
@given(hw=st.tuples(st.integers(2, 9), st.integers(2, 9)), k=st.integers(1, 3), stride=st.integers(1, 3))
def test_pooling(hw, k, stride):
  if k > min(hw): return
  x = arrays((2, 3) + hw)
  oh, ow = (hw[0] - k) // stride + 1, (hw[1] - k) // stride + 1
  win = np.stack([x[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride] for i in range(k) for j in range(k)])
  check(Tensor(x).max_pool2d(k, stride), win.max(0))
  check(Tensor(x).avg_pool2d(k, stride), win.mean(0), **SUMS)


def test_pool_padding():
  x = arrays((1, 2, 5, 5))
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  want = np.stack([xp[:, :, i:i + 5:2, j:j + 5:2] for i in range(3) for j in range(3)]).max(0)
  check(Tensor(x).max_pool2d(3, 2, padding=1), want)
  ones = np.pad(np.ones((5, 5)), 1)
  counts = np.stack([ones[i:i + 5:2, j:j + 5:2] for i in range(3) for j in range(3)]).sum(0)
  xz = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  sums = np.stack([xz[:, :, i:i + 5:2, j:j + 5:2] for i in range(3) for j in range(3)]).sum(0)
  check(Tensor(x).avg_pool2d(3, 2, padding=1, count_include_pad=False), sums / counts, **SUMS)
  check(Tensor(x).avg_pool2d(3, 2, padding=1), sums / 9, **SUMS)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_softmax_family(shape, data):
  a = arrays(shape, -10, 10)
  axis = data.draw(st.integers(0, len(shape) - 1))
  e = np.exp(a - a.max(axis, keepdims=True))
  check(Tensor(a).softmax(axis), e / e.sum(axis, keepdims=True), **SUMS)
  check(Tensor(a).log_softmax(axis), np.log(e / e.sum(axis, keepdims=True)), **SUMS)


@SETTINGS
@given(shape=st.lists(dims, min_size=2, max_size=4).map(tuple))
def test_norms(shape):
  a = arrays(shape)
  w, b = arrays(shape[-1:], seed=1), arrays(shape[-1:], seed=2)
  mu, var = a.mean(-1, keepdims=True), a.var(-1, keepdims=True)
  check(Tensor(a).layernorm(-1, Tensor(w), Tensor(b)), (a - mu) / np.sqrt(var + 1e-5) * w + b, **SUMS)
  c = shape[1]
  mean, var2, g, beta = arrays((c,), seed=3), arrays((c,), 0.5, 2, seed=4), arrays((c,), seed=5), arrays((c,), seed=6)
  bshape = (1, c) + (1,) * (len(shape) - 2)
  want = (a - mean.reshape(bshape)) / np.sqrt(var2.reshape(bshape) + 1e-5) * g.reshape(bshape) + beta.reshape(bshape)
  check(Tensor(a).batchnorm(Tensor(mean), Tensor(var2), Tensor(g), Tensor(beta)), want, **SUMS)


def test_creation_and_laziness():
  check(Tensor.zeros(2, 3), np.zeros((2, 3)))
  check(Tensor.full((2, 2), 7), np.full((2, 2), 7))
  check(Tensor.arange(2, 11, 3), np.arange(2, 11, 3))
  check(Tensor([[1, 2], [3, 4]]) * 2, np.array([[2, 4], [6, 8]]))
  assert Tensor([1.5]).dtype == np.float32 and Tensor([1]).dtype == np.int32 and Tensor([True]).dtype == np.bool_
  t = Tensor(arrays((4,))) + 1
  assert not t.node.realized          # nothing ran yet
  t.realize()
  assert t.node.realized


@pytest.mark.parametrize("n", [3, 8, 64])   # scalar lanes, and shapes the code generator puts in vector lanes
def test_maximum_has_one_nan_rule(n):
  """max(a, b) is `a > b ? a : b` everywhere: scalar and vector kernels and the host's constant folding agree on NaN."""
  a = np.resize(np.array([0, np.nan, 1, 2, np.nan, 3, 4, 5], np.float32), (1, n))
  b = np.resize(np.array([np.nan, 0, 3, 1, 2, np.nan, 9, 0], np.float32), (1, n))
  want = np.where(a > b, a, b)
  np.testing.assert_array_equal(Tensor(a).maximum(Tensor(b)).numpy(), want)
  folded = Tensor(a).maximum(Tensor(b))
  realize([folded.node], host=True)
  np.testing.assert_array_equal(folded.numpy(), want)


@pytest.mark.parametrize("n", [8 * 2501, 2501])   # float8 lanes, and scalars
def test_exp_over_its_whole_range(n):
  """exp against numpy: within OpenCL's 3 ulp wherever the result is a normal float, denormal results within a few
  units of the smallest denormal, overflow to inf, and inf, -inf, NaN as numpy."""
  special = [0.0, -0.0, np.inf, -np.inf, np.nan, 88.72, 88.73, 89.5, -87.33, -87.34, -103.9, -104.0, -110.0, 1e-8, -1e-8]
  x = np.concatenate([special, np.linspace(-110, 95, n - 2 * len(special)),
                      np.random.default_rng(0).standard_normal(len(special)) * 20]).astype(np.float32)
  with np.errstate(over="ignore"): want = np.exp(x.astype(np.float64)).astype(np.float32)
  got = Tensor(x).exp().numpy()
  normal = np.isfinite(want) & (want >= np.finfo(np.float32).tiny)
  np.testing.assert_allclose(got[normal], want[normal], rtol=3 * np.finfo(np.float32).eps, atol=0)
  np.testing.assert_allclose(got[~normal & np.isfinite(want)], want[~normal & np.isfinite(want)], rtol=0, atol=1e-44)
  np.testing.assert_array_equal(got[~np.isfinite(want)], want[~np.isfinite(want)])   # inf and NaN where numpy's are
