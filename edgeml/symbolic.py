"""Integer index expressions with bounds, simplified as they are built.

An expression is a linear combination of atoms (loop variables, floor divisions, modulos) plus a constant.
Dividing or taking the modulo by a constant pulls out the terms that are exact multiples and drops what the bounds
prove to be zero, so the index math of reshapes, permutes and sliding windows comes out as plain strides.

Rendered C keeps Python's floor semantics: `/` and `%` (which truncate toward zero in C) only where the bounds prove
the numerator non-negative, the prelude's floordiv_i/floormod_i elsewhere (padding makes `i - 1` negative). An
expression whose terms or partial sums could leave int32 is rendered in `long` (floordiv_l/floormod_l).

Speed: expressions are immutable, so each computes its sort key, hash and bounds once, at construction; terms stay
sorted by atom key, so splitting, scaling and adding a constant keep the order without sorting again, and adding
two expressions merges two sorted lists. Equality and ordering are unchanged: an expression equals another with the
same key (a variable's key is its name and bounds), an atom equals another of the same kind and fields.
"""
from __future__ import annotations

INT_MIN, INT_MAX = -2 ** 31, 2 ** 31 - 1


def _fits_int(lo: int, hi: int) -> bool: return INT_MIN <= lo and hi <= INT_MAX


class Var:
  """A loop variable in [lo, hi]."""
  __slots__ = ("name", "lo", "hi", "key", "_hash")

  def __init__(self, name: str, lo: int, hi: int):
    self.name, self.lo, self.hi = name, lo, hi
    self.key = (0, name, lo, hi)   # the bounds too: a cache keyed on expressions must not mix two ranges of one name
    self._hash = hash((name, lo, hi))

  def __eq__(self, other):
    return self is other or (type(other) is Var and self.name == other.name and self.lo == other.lo and self.hi == other.hi)
  def __hash__(self): return self._hash
  def __repr__(self): return f"Var(name={self.name!r}, lo={self.lo}, hi={self.hi})"
  def bounds(self): return self.lo, self.hi
  def render(self): return self.name
  def uses(self, var) -> bool: return self is var or self == var


class _Quotient:
  """FloorDiv and Mod: `num` (a Lin) by a positive constant `den`."""
  __slots__ = ("num", "den", "key", "_hash", "lo", "hi")
  TAG = -1

  def __init__(self, num: "Lin", den: int):
    self.num, self.den = num, den
    self.key = (self.TAG, num.key, den)
    self._hash = hash((self.TAG, hash(num), den))
    self.lo, self.hi = self._compute_bounds()

  def __eq__(self, other):
    return self is other or (type(other) is type(self) and self.den == other.den and self.num.key == other.num.key)
  def __hash__(self): return self._hash
  def __repr__(self): return f"{type(self).__name__}(num={self.num!r}, den={self.den})"
  def bounds(self): return self.lo, self.hi
  def uses(self, var) -> bool: return self.num.uses(var)


class FloorDiv(_Quotient):
  __slots__ = ()
  TAG = 1

  def _compute_bounds(self):
    lo, hi = self.num.bounds()
    return lo // self.den, hi // self.den

  def render(self):
    n = self.num.render()
    if self.num.bounds()[0] >= 0: return f"(({n})/{self.den})"
    return f"floordiv_{'l' if self.num.wide else 'i'}(({n}),{self.den})"


class Mod(_Quotient):
  __slots__ = ()
  TAG = 2

  def _compute_bounds(self): return 0, self.den - 1

  def render(self):
    n = self.num.render()
    if self.num.bounds()[0] >= 0: return f"(({n})%{self.den})"
    return f"floormod_{'l' if self.num.wide else 'i'}(({n}),{self.den})"


def _term_key(t): return t[0].key


def _fold_quotients(coefs: dict, const: int) -> int:
  """Rewrite c*k*(n // k) + c*(n % k) as c*n in `coefs` (the index of an axis split in two and merged back);
  returns the new constant."""
  for atom, c in list(coefs.items()):
    if type(atom) is not Mod or c == 0: continue
    div = FloorDiv(atom.num, atom.den)
    if coefs.get(div, 0) != c * atom.den or coefs.get(atom, 0) != c: continue
    del coefs[atom], coefs[div]
    for a, k in atom.num.terms: coefs[a] = coefs.get(a, 0) + c * k
    const += c * atom.num.const
  return const


def _terms_bounds(terms, const: int):
  lo = hi = const
  for atom, c in terms:
    a, b = c * atom.lo, c * atom.hi
    if a <= b: lo, hi = lo + a, hi + b
    else: lo, hi = lo + b, hi + a
  return lo, hi


def _insert(terms: tuple, atom, coef: int = 1):
  """`terms` plus coef*atom, still sorted by key; None when an atom of equal key but unequal value is met (then the
  caller takes the general path, which orders such ties as a dict and a stable sort would)."""
  key = atom.key
  for i, (a, c) in enumerate(terms):
    if a.key < key: continue
    if key < a.key: return terms[:i] + ((atom, coef),) + terms[i:]
    if a != atom: return None
    return terms[:i] + (((a, c + coef),) if c + coef else ()) + terms[i + 1:]
  return terms + ((atom, coef),)


class Lin:
  """sum(coef * atom) + const, terms kept sorted by atom key so equal expressions compare equal. Key, hash, bounds,
  width and rendering are computed when first asked for, once."""
  __slots__ = ("terms", "const", "_key", "_hash", "_bounds", "_wide", "_splits", "_render", "_uses")

  def __init__(self, terms: tuple = (), const: int = 0):
    self.terms, self.const = terms, const
    self._key = self._hash = self._bounds = self._wide = self._splits = self._render = self._uses = None

  @property
  def key(self) -> tuple:
    if self._key is None: self._key = (tuple((a.key, c) for a, c in self.terms), self.const)
    return self._key

  def __hash__(self):
    if self._hash is None: self._hash = hash(self.key)
    return self._hash

  def __eq__(self, other): return self is other or (isinstance(other, Lin) and self.key == other.key)
  def __repr__(self): return f"Lin(terms={self.terms!r}, const={self.const})"

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
    if len(coefs) <= 1:
      return Lin(tuple((a, c) for a, c in coefs.items() if c != 0), const)
    if any(type(a) is Mod for a in coefs): const = _fold_quotients(coefs, const)
    return Lin._make(coefs, const)

  @staticmethod
  def _make(coefs: dict, const: int) -> Lin:
    return Lin(tuple(sorted(((a, c) for a, c in coefs.items() if c != 0), key=_term_key)), const)

  def bounds(self):
    if self._bounds is None: self._bounds = _terms_bounds(self.terms, self.const)
    return self._bounds

  def _plus_const(self, k: int) -> Lin: return Lin(self.terms, self.const + k) if k else self

  def __add__(self, other) -> Lin:
    if isinstance(other, int): return self._plus_const(other)
    other = Lin.of(other)
    if not other.terms: return self._plus_const(other.const)
    if not self.terms: return Lin(other.terms, self.const + other.const)
    # merge two lists sorted by key; an atom in both adds its coefficients (self's object is kept, as a dict would)
    a, b, out, i, j = self.terms, other.terms, [], 0, 0
    while i < len(a) and j < len(b):
      ka, kb = a[i][0].key, b[j][0].key
      if ka < kb: out.append(a[i]); i += 1
      elif kb < ka: out.append(b[j]); j += 1
      elif a[i][0] == b[j][0]:
        c = a[i][1] + b[j][1]
        if c: out.append((a[i][0], c))
        i += 1; j += 1
      else: return self._add_slow(other)   # equal keys of different atoms: the general (dict, stable sort) path
    out.extend(a[i:]); out.extend(b[j:])
    return Lin(tuple(out), self.const + other.const)

  def _add_slow(self, other: Lin) -> Lin:
    coefs = dict(self.terms)
    for a, c in other.terms: coefs[a] = coefs.get(a, 0) + c
    return Lin._make(coefs, self.const + other.const)

  def __mul__(self, k: int) -> Lin:
    if k == 1: return self
    return Lin(tuple((a, c * k) for a, c in self.terms), self.const * k) if k else Lin()

  def __sub__(self, other) -> Lin:
    if isinstance(other, int): return self._plus_const(-other)
    return self + Lin.of(other) * -1

  def _split(self, k: int):
    """(quotient terms, rest terms, rest bounds): self = k*(quotient + const//k) + (rest + const%k), the exact
    multiples of k taken out (computed once per k)."""
    if self._splits is None: self._splits = {}
    if (hit := self._splits.get(k)) is not None: return hit
    q, r = [], []
    for t in self.terms:
      c = t[1]
      if c % k == 0: q.append((t[0], c // k))
      else: r.append(t)
    const = self.const % k
    if len(r) == len(self.terms):   # nothing taken out: the rest's bounds are self's, shifted with the constant
      r = self.terms
      lo, hi = self.bounds()
      bounds = (lo - self.const + const, hi - self.const + const)
    else:
      r = tuple(r)
      bounds = _terms_bounds(r, const) if r else (const, const)
    out = self._splits[k] = (tuple(q), r, bounds)
    return out

  def _rest(self, k: int, r: tuple) -> Lin:
    return self if r is self.terms and self.const % k == self.const else Lin(r, self.const % k)

  def __floordiv__(self, k: int) -> Lin:
    if k <= 0: raise ValueError(f"index division by {k}: only positive divisors are supported")
    if k == 1: return self
    q, r, (lo, hi) = self._split(k)
    if lo // k == hi // k: return Lin(q, self.const // k + lo // k)
    atom = FloorDiv(self._rest(k, r), k)
    terms = _insert(q, atom)
    if terms is None: return Lin._make(dict(q), self.const // k) + Lin.of(atom)
    return Lin(terms, self.const // k)

  def __mod__(self, k: int) -> Lin:
    if k <= 0: raise ValueError(f"index modulo by {k}: only positive divisors are supported")
    if k == 1: return Lin()
    _, r, (lo, hi) = self._split(k)
    if lo // k == hi // k: return Lin(r, self.const % k - (lo // k) * k)
    return Lin(((Mod(self._rest(k, r), k), 1),), 0)

  def is_const(self): return not self.terms

  def uses(self, var) -> bool:
    if self._uses is None: self._uses = {}
    if (hit := self._uses.get(var)) is None: hit = self._uses[var] = any(a.uses(var) for a, _ in self.terms)
    return hit

  def split_var(self, var) -> tuple[int, Lin]:
    """(coefficient, rest) with self = coefficient * var + rest; coefficient None when var also sits inside a
    division or modulo."""
    rest = Lin(tuple((a, c) for a, c in self.terms if a != var), self.const)
    return (None if rest.uses(var) else dict(self.terms).get(var, 0)), rest

  @property
  def wide(self) -> bool:
    """Whether int arithmetic could overflow: some term, or some partial sum (C adds left to right), leaves int32."""
    if self._wide is None: self._wide = self._compute_wide()
    return self._wide

  def _compute_wide(self) -> bool:
    lo = hi = 0
    for atom, c in self.terms:
      a_lo, a_hi = atom.bounds()
      t_lo, t_hi = min(c * a_lo, c * a_hi), max(c * a_lo, c * a_hi)
      lo, hi = lo + t_lo, hi + t_hi
      if not (_fits_int(t_lo, t_hi) and _fits_int(lo, hi)): return True
    return not (_fits_int(self.const, self.const) and _fits_int(lo + self.const, hi + self.const))

  def render(self) -> str:
    if self._render is None:
      wide = self.wide
      atoms = [f"((long)({a.render()}))" if wide else a.render() for a, _ in self.terms]
      parts = [a if c == 1 else f"{a}*{c}" for a, (_, c) in zip(atoms, self.terms)]
      if self.const or not parts: parts.append(f"{self.const}L" if wide else str(self.const))
      self._render = "+".join(parts).replace("+-", "-")
    return self._render
