"""Integer index expressions with bounds, simplified as they are built.

An expression is a linear combination of atoms (loop variables, floor divisions, modulos) plus a constant.
Dividing or taking the modulo by a constant pulls out the terms that are exact multiples and drops what the bounds
prove to be zero, so the index math of reshapes, permutes and sliding windows comes out as plain strides.

Rendered C keeps Python's floor semantics: `/` and `%` (which truncate toward zero in C) only where the bounds prove
the numerator non-negative, the prelude's floordiv_i/floormod_i elsewhere (padding makes `i - 1` negative). An
expression whose terms or partial sums could leave int32 is rendered in `long` (floordiv_l/floormod_l).
"""
from __future__ import annotations
import functools
from dataclasses import dataclass

INT_MIN, INT_MAX = -2 ** 31, 2 ** 31 - 1


def _fits_int(lo: int, hi: int) -> bool: return INT_MIN <= lo and hi <= INT_MAX


@dataclass(frozen=True)
class Var:
  name: str
  lo: int
  hi: int

  def bounds(self): return self.lo, self.hi
  def render(self): return self.name
  def uses(self, var) -> bool: return self == var
  @property
  def key(self): return (0, self.name)


@dataclass(frozen=True)
class FloorDiv:
  num: "Lin"
  den: int

  def bounds(self):
    lo, hi = self.num.bounds()
    return lo // self.den, hi // self.den

  @property
  def key(self): return (1, self.num.key, self.den)
  def uses(self, var) -> bool: return self.num.uses(var)

  def render(self):
    n = self.num.render()
    if self.num.bounds()[0] >= 0: return f"(({n})/{self.den})"
    return f"floordiv_{'l' if self.num.wide else 'i'}(({n}),{self.den})"


@dataclass(frozen=True)
class Mod:
  num: "Lin"
  den: int

  def bounds(self): return 0, self.den - 1

  @property
  def key(self): return (2, self.num.key, self.den)
  def uses(self, var) -> bool: return self.num.uses(var)

  def render(self):
    n = self.num.render()
    if self.num.bounds()[0] >= 0: return f"(({n})%{self.den})"
    return f"floormod_{'l' if self.num.wide else 'i'}(({n}),{self.den})"


@dataclass(frozen=True, eq=False)
class Lin:
  """sum(coef * atom) + const, terms kept sorted so equal expressions compare equal."""
  terms: tuple = ()
  const: int = 0

  @functools.cached_property
  def key(self) -> tuple:   # expressions are immutable, hashed and compared often: computed once, when first needed
    return (tuple((a.key, c) for a, c in self.terms), self.const)

  def __hash__(self): return hash(self.key)
  def __eq__(self, other): return isinstance(other, Lin) and self.key == other.key

  @staticmethod
  def of(x) -> Lin:
    if isinstance(x, Lin): return x
    if isinstance(x, int): return Lin((), x)
    return Lin(((x, 1),), 0)

  @staticmethod
  def combine(parts, const: int = 0) -> Lin:
    """sum(k * expr for expr, k in parts) + const in one step."""
    coefs = {}
    for expr, k in parts:
      for a, c in expr.terms: coefs[a] = coefs.get(a, 0) + c * k
      const += expr.const * k
    return Lin._make(coefs, const)

  @staticmethod
  def _make(coefs: dict, const: int) -> Lin:
    return Lin(tuple(sorted(((a, c) for a, c in coefs.items() if c != 0), key=lambda t: t[0].key)), const)

  def bounds(self): return self._bounds

  @functools.cached_property
  def _bounds(self):
    lo = hi = self.const
    for atom, c in self.terms:
      a_lo, a_hi = atom.bounds()
      lo, hi = lo + min(c * a_lo, c * a_hi), hi + max(c * a_lo, c * a_hi)
    return lo, hi

  def __add__(self, other) -> Lin:
    other = Lin.of(other)
    coefs = dict(self.terms)
    for a, c in other.terms: coefs[a] = coefs.get(a, 0) + c
    return Lin._make(coefs, self.const + other.const)

  def __mul__(self, k: int) -> Lin:
    return Lin._make({a: c * k for a, c in self.terms}, self.const * k) if k else Lin()

  def __sub__(self, other) -> Lin: return self + Lin.of(other) * -1

  def _split(self, k: int):
    """(quotient, rest) with self = k*quotient + rest, taking out exact multiples of k."""
    q, r = {}, {}
    for a, c in self.terms:
      if c % k == 0: q[a] = c // k
      else: r[a] = c
    return Lin._make(q, self.const // k), Lin._make(r, self.const % k)

  def __floordiv__(self, k: int) -> Lin:
    if k <= 0: raise ValueError(f"index division by {k}: only positive divisors are supported")
    if k == 1: return self
    quot, rest = self._split(k)
    lo, hi = rest.bounds()
    if lo // k == hi // k: return quot + lo // k
    return quot + Lin.of(FloorDiv(rest, k))

  def __mod__(self, k: int) -> Lin:
    if k <= 0: raise ValueError(f"index modulo by {k}: only positive divisors are supported")
    if k == 1: return Lin()
    _, rest = self._split(k)
    lo, hi = rest.bounds()
    if lo // k == hi // k: return rest - (lo // k) * k
    return Lin.of(Mod(rest, k))

  def is_const(self): return not self.terms
  def uses(self, var) -> bool: return any(a.uses(var) for a, _ in self.terms)

  def split_var(self, var) -> tuple[int, Lin]:
    """(coefficient, rest) with self = coefficient * var + rest; coefficient None when var also sits inside a
    division or modulo."""
    rest = Lin._make({a: c for a, c in self.terms if a != var}, self.const)
    return (None if rest.uses(var) else dict(self.terms).get(var, 0)), rest

  @functools.cached_property
  def wide(self) -> bool:
    """Whether int arithmetic could overflow: some term, or some partial sum (C adds left to right), leaves int32."""
    lo = hi = 0
    for atom, c in self.terms:
      a_lo, a_hi = atom.bounds()
      t_lo, t_hi = min(c * a_lo, c * a_hi), max(c * a_lo, c * a_hi)
      lo, hi = lo + t_lo, hi + t_hi
      if not (_fits_int(t_lo, t_hi) and _fits_int(lo, hi)): return True
    return not (_fits_int(self.const, self.const) and _fits_int(lo + self.const, hi + self.const))

  def render(self) -> str:
    wide = self.wide
    atoms = [f"((long)({a.render()}))" if wide else a.render() for a, _ in self.terms]
    parts = [a if c == 1 else f"{a}*{c}" for a, (_, c) in zip(atoms, self.terms)]
    if self.const or not parts: parts.append(f"{self.const}L" if wide else str(self.const))
    return "+".join(parts).replace("+-", "-")
