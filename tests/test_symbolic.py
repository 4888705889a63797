"""Index expressions: simplification must never change the value, and the rendered C must compute it.

The rendered text is evaluated with C's rules (a tiny evaluator: `/` and `%` truncate toward zero, int arithmetic must
stay inside int32 unless cast to long), so choosing `/` where the numerator can be negative fails here; the prelude's
floor helpers are run on the OpenCL device against Python's floor semantics."""
import ast
import itertools
import re
import numpy as np
import pyopencl as cl
import pytest
from hypothesis import example, given, settings, strategies as st
from edgeml.codegen import LONG_PRELUDE, PRELUDE
from edgeml.symbolic import Lin, Var, INT_MIN, INT_MAX

LONG_MIN, LONG_MAX = -2 ** 63, 2 ** 63 - 1


def c_div(a: int, b: int) -> int:
  q = abs(a) // abs(b)
  return q if (a < 0) == (b < 0) else -q


def c_mod(a: int, b: int) -> int: return a - b * c_div(a, b)


def _floor_fix(a, b):   # the prelude's floordiv/floormod, step by step with C's truncating operators
  r = c_mod(a, b)
  wrong = r != 0 and (r < 0) != (b < 0)
  return c_div(a, b) - wrong, r + b if wrong else r


FUNCTIONS = {"floordiv_i": (lambda a, b: _floor_fix(a, b)[0], False), "floormod_i": (lambda a, b: _floor_fix(a, b)[1], False),
             "floordiv_l": (lambda a, b: _floor_fix(a, b)[0], True), "floormod_l": (lambda a, b: _floor_fix(a, b)[1], True)}


def evaluate_c(source: str, env: dict) -> int:
  """The value of a rendered C index expression. Values carry their C type (int or long); an int result outside
  int32, a long outside int64, or an int argument to a long helper (or the reverse) fails."""
  tree = ast.parse(re.sub(r"(\d)L\b", r"\1", source), mode="eval").body   # `(long)(x)` parses as a call

  def ev(node) -> tuple[int, bool]:
    if isinstance(node, ast.Constant): return node.value, not INT_MIN <= node.value <= INT_MAX
    if isinstance(node, ast.Name): return env[node.id], False
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
      v, wide = ev(node.operand)
      return check(-v, wide)
    if isinstance(node, ast.BinOp):
      (a, wa), (b, wb) = ev(node.left), ev(node.right)
      op = type(node.op)
      if op in (ast.Div, ast.Mod): assert b != 0, f"division by zero in {source}"
      v = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
           ast.Div: lambda: c_div(a, b), ast.Mod: lambda: c_mod(a, b)}[op]()
      return check(v, wa or wb)
    if isinstance(node, ast.Call) and node.func.id == "long": return ev(node.args[0])[0], True
    if isinstance(node, ast.Call):
      fn, wide = FUNCTIONS[node.func.id]
      args = [ev(a) for a in node.args]
      assert all(w <= wide for _, w in args), f"a long argument to {node.func.id} in {source}"
      return check(fn(*(v for v, _ in args)), wide)
    raise AssertionError(f"unexpected C syntax {ast.dump(node)} in {source}")

  def check(v: int, wide: bool) -> tuple[int, bool]:
    lo, hi = (LONG_MIN, LONG_MAX) if wide else (INT_MIN, INT_MAX)
    assert lo <= v <= hi, f"{'long' if wide else 'int'} overflow ({v}) in {source}"
    return v, wide

  return ev(tree)[0]


def test_the_evaluator_truncates_like_c():
  assert evaluate_c("((x-1)/2)", {"x": 0}) == 0 and evaluate_c("((x-1)%2)", {"x": 0}) == -1
  assert evaluate_c("floordiv_i((x-1),2)", {"x": 0}) == -1 and evaluate_c("floormod_i((x-1),2)", {"x": 0}) == 1
  with pytest.raises(AssertionError, match="overflow"): evaluate_c("x*65536", {"x": 65536})
  assert evaluate_c("((long)(x))*65536", {"x": 65536}) == 2 ** 32


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 6), min_size=1, max_size=3), coefs=st.lists(st.integers(-12, 12), min_size=3, max_size=3),
       const=st.integers(-20, 20), ops=st.lists(st.tuples(st.sampled_from(["div", "mod"]), st.integers(1, 9)), max_size=3))
def test_simplified_expressions_keep_their_value(sizes, coefs, const, ops):
  variables = [Var(f"x{i}", 0, n - 1) for i, n in enumerate(sizes)]
  expr = Lin.of(const)
  for v, c in zip(variables, coefs): expr = expr + Lin.of(v) * c
  for env_values in itertools.product(*(range(n) for n in sizes)):
    env = {v.name: x for v, x in zip(variables, env_values)}
    want, e = sum(c * x for c, x in zip(coefs, env_values)) + const, expr
    for op, k in ops:
      want, e = (want // k, e // k) if op == "div" else (want % k, e % k)
      assert evaluate_c(e.render(), env) == want, e.render()   # every intermediate form renders right, not just the last
    lo, hi = e.bounds()
    assert lo <= want <= hi


def test_padded_window_index_floors_negative_numerators():
  """A padded (`i - 1`) and a flipped (`3 - i`) index read through a reshape: negative at the border, where C's `/`
  and `%` would round toward zero."""
  i = Var("i", 0, 9)
  for num, want in ((Lin.of(i) - 1, lambda x: x - 1), (Lin.of(i) * -1 + 3, lambda x: 3 - x)):
    row, col = num // 4, num % 4
    for x in range(10):
      assert (evaluate_c(row.render(), {"i": x}), evaluate_c(col.render(), {"i": x})) == divmod(want(x), 4)
  assert "floordiv_i" in ((Lin.of(i) * -1 + 3) // 4).render() and "floormod_i" in ((Lin.of(i) * -1 + 3) % 4).render()


def test_index_math_beyond_int32_is_rendered_in_long():
  """A flat offset into a buffer of more than 2**31 elements: products and sums would overflow int."""
  b, j = Var("b", 0, 3), Var("j", 0, 999)
  offset = Lin.of(b) * 1_000_000_000 + Lin.of(j) - 5
  assert offset.wide and "long" in offset.render()
  assert not (Lin.of(j) * 4 + 7).wide and "long" not in (Lin.of(j) * 4 + 7).render()
  for env in ({"b": 3, "j": 999}, {"b": 0, "j": 0}, {"b": 2, "j": 17}):
    want = env["b"] * 1_000_000_000 + env["j"] - 5
    assert evaluate_c(offset.render(), env) == want
    assert evaluate_c((offset // 7).render(), env) == want // 7
    assert evaluate_c((offset % 1_000_003).render(), env) == want % 1_000_003


def test_reshape_style_index_collapses_to_plain_strides():
  i, j = Var("i", 0, 3), Var("j", 0, 7)
  linear = Lin.of(i) * 8 + Lin.of(j)
  assert (linear // 8).render() == "i"
  assert (linear % 8).render() == "j"
  window = Lin.of(Var("oh", 0, 4)) * 2 + Lin.of(Var("kh", 0, 2))      # a sliding window row index
  assert ((window * 11 + Lin.of(Var("w", 0, 10))) // 11).render() == window.render()



@given(coef=st.integers(1, 12), const=st.integers(-20, 20), k=st.integers(2, 30), scale=st.integers(-3, 3),
       other=st.integers(-50, 50))
def test_an_axis_split_and_merged_back_is_its_index(coef, const, k, scale, other):
  """(n // k) * k + n % k is n again (a flat index split into rows of k and merged back), also scaled and beside
  other terms; a mismatched pair keeps its value."""
  g, r = Var("g", 0, 29), Var("r", 0, 4)
  n = Lin.of(g) * coef + const
  merged = Lin.combine([(n // k, k * scale), (n % k, scale), (Lin.of(r), other)])
  if scale: assert merged == Lin.combine([(n, scale), (Lin.of(r), other)]), merged.render()
  odd = Lin.combine([(n // k, k + 1), (n % k, 1)])
  for gv, rv in itertools.product(range(30), range(5)):
    env, value = {"g": gv, "r": rv}, coef * gv + const
    assert evaluate_c(merged.render(), env) == scale * value + other * rv
    assert evaluate_c(odd.render(), env) == (value // k) * (k + 1) + value % k

def test_nonpositive_divisors_are_refused():
  with pytest.raises(ValueError, match="positive"): Lin.of(Var("i", 0, 3)) // -2
  with pytest.raises(ValueError, match="positive"): Lin.of(Var("i", 0, 3)) % 0


@pytest.mark.portable
def test_prelude_floor_helpers_on_the_device():
  """floordiv/floormod of the prelude, int and long, against Python's // and % (negative numerators, INT_MIN)."""
  from compiled.device import default_device
  dev = default_device()
  a = np.array([v for v in range(-40, 41)] + [INT_MIN, INT_MIN + 1, INT_MAX, INT_MAX - 1], np.int32)
  b = np.array([1, 2, 3, 5, 7, 64, INT_MAX], np.int32)
  aa, bb = (x.reshape(-1) for x in np.meshgrid(a, b, indexing="ij"))
  src = PRELUDE + LONG_PRELUDE + """__kernel void floors(__global int* out, __global long* wide, const __global int* a, const __global int* b) {
    int i = get_global_id(0);
    out[2*i] = floordiv_i(a[i], b[i]); out[2*i+1] = floormod_i(a[i], b[i]);
    long x = (long)a[i] * 3000000000L;
    wide[2*i] = floordiv_l(x, (long)b[i]); wide[2*i+1] = floormod_l(x, (long)b[i]);
  }"""
  kernel = cl.Kernel(dev.build(src), "floors")
  out, wide = np.empty((aa.size, 2), np.int32), np.empty((aa.size, 2), np.int64)
  mf = cl.mem_flags
  bufs = [cl.Buffer(dev.ctx, mf.WRITE_ONLY, out.nbytes), cl.Buffer(dev.ctx, mf.WRITE_ONLY, wide.nbytes),
          cl.Buffer(dev.ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=aa), cl.Buffer(dev.ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=bb)]
  kernel(dev.queue, (aa.size,), None, *bufs)
  cl.enqueue_copy(dev.queue, out, bufs[0])
  cl.enqueue_copy(dev.queue, wide, bufs[1])
  a64, b64 = aa.astype(object), bb.astype(object)
  np.testing.assert_array_equal(out, np.stack([a64 // b64, a64 % b64], 1).astype(np.int64))
  x = a64 * 3000000000
  np.testing.assert_array_equal(wide, np.stack([x // b64, x % b64], 1).astype(np.int64))


def test_view_index_cache_keeps_bounds_apart():
  """The codegen's view-index cache must not hand an index simplified for one range of `gx` to a kernel where `gx`
  has another range: (4, 4) read as 16 elements drops the `% 4` only while gx < 16."""
  from edgeml.codegen import _view_index
  short, wide = Lin.of(Var("gx", 0, 15)), Lin.of(Var("gx", 0, 63))
  for gx in (short, wide):
    row, col = _view_index((4, 4), (16,), (1,), 0, (gx,))
    hi = gx.bounds()[1]
    for value in (0, 5, hi):
      assert evaluate_c(row.render(), {"gx": value}) == (value // 4) % 4, (gx, row.render())
      assert evaluate_c(col.render(), {"gx": value}) == value % 4


@st.composite
def _views(draw):
  """(source shape, view shape, strides, offset) of the views the tensors make: reshapes (merging and splitting axes,
  adding or dropping axes of length 1), permutes, slices and sliding windows with strides and dilations."""
  n = draw(st.integers(1, 3))
  src = tuple(draw(st.lists(st.integers(1, 7), min_size=n, max_size=n)))
  if draw(st.booleans()):   # a reshape: the elements in order, split into other axes
    size, shape = int(np.prod(src)), []
    while size > 1:
      shape.append(draw(st.sampled_from([d for d in range(2, size + 1) if size % d == 0])))
      size //= shape[-1]
    return src, tuple(shape), tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape))), 0
  strides = [int(np.prod(src[i + 1:])) for i in range(n)]
  shape, view_strides, offset = [], [], 0
  for size, stride in zip(src, strides):
    kernel = draw(st.integers(1, size))
    dilation = draw(st.integers(1, (size - 1) // (kernel - 1))) if kernel > 1 else 1
    span = dilation * (kernel - 1) + 1
    step = draw(st.integers(1, 3))
    start = draw(st.integers(0, size - span))
    outs = (size - start - span) // step + 1
    offset += start * stride
    shape += [outs, kernel]
    view_strides += [step * stride, dilation * stride]
  order = draw(st.permutations(range(len(shape))))
  ones = draw(st.lists(st.integers(0, len(shape)), max_size=2))   # axes of length 1 put in
  shape, view_strides = [shape[i] for i in order], [view_strides[i] for i in order]
  for at in ones: shape.insert(at, 1); view_strides.insert(at, 0)
  return src, tuple(shape), tuple(view_strides), offset


@given(_views())
@example(((2, 3), (6,), (1,), 0)).via("merged axes carry")
@example(((2, 3, 4), (6, 4), (4, 1), 0)).via("merged axes carry")
@example(((6,), (2, 3), (3, 1), 0)).via("a split axis")
@settings(max_examples=200, deadline=None)
def test_view_index_matches_the_view_elementwise(view):
  """Every index of a view maps to the source element numpy's strided view of the same strides reads, whether the
  index is derived axis by axis (windows, permutes) or through the flat offset."""
  from edgeml.codegen import _view_index
  src, shape, strides, offset = view
  data = np.arange(int(np.prod(src))).reshape(src)
  want = np.lib.stride_tricks.as_strided(data.reshape(-1)[offset:], shape, [s * data.itemsize for s in strides])
  names = [f"i{k}" for k in range(len(shape))]
  idx = tuple(Lin.of(Var(name, 0, size - 1)) for name, size in zip(names, shape))
  src_idx = _view_index(src, shape, strides, offset, idx)
  for at in itertools.islice(np.ndindex(*shape), 64):
    env = dict(zip(names, at))
    got = tuple(evaluate_c(i.render(), env) for i in src_idx)
    assert data[got] == want[at], (view, at, [i.render() for i in src_idx])


def test_padded_window_index_has_no_division():
  """A sliding window read through padding (index i - 1 can be -1 or past the end, where the read is guarded) steps
  along its source axis directly: no division or modulo, which would keep a pool's vector lanes from loading."""
  from edgeml.codegen import _view_index
  i, k = Lin.of(Var("i", 0, 81)) - 1, Lin.of(Var("k", 0, 1))
  row, col = _view_index((4, 160), (4, 80, 2), (160, 2, 1), 0, (Lin(), i, k))
  assert col.render() == (i * 2 + k).render() and "/" not in col.render() and "%" not in col.render()
