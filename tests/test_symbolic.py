"""Index expressions: simplification must never change the value; checked by brute force over each variable's range."""
import itertools
from hypothesis import given, settings, strategies as st
from edgeml.symbolic import Lin, Var


def evaluate(expr: Lin, env: dict) -> int:
  return eval(expr.render().replace("/", "//").replace("floordiv_i", "fdiv").replace("floormod_i", "fmod_"),
              {"fdiv": lambda a, b: a // b, "fmod_": lambda a, b: a % b}, env)


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
    assert evaluate(e, env) == want, e.render()
    lo, hi = e.bounds()
    assert lo <= want <= hi


def test_reshape_style_index_collapses_to_plain_strides():
  i, j = Var("i", 0, 3), Var("j", 0, 7)
  linear = Lin.of(i) * 8 + Lin.of(j)
  assert (linear // 8).render() == "i"
  assert (linear % 8).render() == "j"
  window = Lin.of(Var("oh", 0, 4)) * 2 + Lin.of(Var("kh", 0, 2))      # a sliding window row index
  assert ((window * 11 + Lin.of(Var("w", 0, 10))) // 11).render() == window.render()
