"""What each kernel of an OpenCL program source declares, read from its text: parameter kinds, its required work-group
size, its guard on the first global id, how many elements of its output one work item stores, (where every store
index is plain integer arithmetic of the global ids) which elements a launch stores, and how far its unconditional
reads reach (the largest index of every read that is not behind a condition, over the launch and the loop ranges).

The loader checks an artifact's kernel arguments and launch sizes against these (compiled/artifact.py validate). It
understands the fixed forms the compiler generates (edgeml/codegen.py) and plain hand-written kernels:

    __kernel [__attribute__((reqd_work_group_size(X,Y,Z)))] void NAME(PARAM, ...) { ... }
    PARAM: [const] __global [const] T [*] [restrict] NAME | read_only image2d_t NAME | int NAME | float NAME
    stores: NAME[...] = v;   vstore_half(v, i, NAME);   vstoreN(v, 0, NAME + i);
    guard:  int gx = get_global_id(0) ... if (gx >= N) return;
    grouped: int lid = get_local_id(0) ... if (lid == 0) { stores }   (one work item per group stores)
"""
import ast
import functools
import re
from dataclasses import dataclass

import numpy as np

ELEMENT_BYTES = {"float": 4, "half": 2, "double": 8, "char": 1, "uchar": 1, "short": 2, "ushort": 2, "int": 4,
                 "uint": 4, "long": 8, "ulong": 8}
SCALAR_PARAMS = {"int": "int32", "float": "float32"}  # the scalar argument kinds of an artifact, by C type
_WORDS = re.compile(r"[A-Za-z_]\w*|\*")
_KERNEL = re.compile(r"\b(?:__)?kernel\s+((?:__attribute__\s*\(\([^;{]*?\)\)\s*)*)void\s+([A-Za-z_]\w*)\s*\(([^)]*)\)\s*\{")
_REQD = re.compile(r"reqd_work_group_size\s*\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)")
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_FOR_HEAD = r"for\s*\(\s*int\s+([A-Za-z_]\w*)\s*=\s*0\s*;\s*\1\s*<\s*(\w+)\s*;\s*\1\s*\+\+\s*\)"  # bound: literal or int arg
_FOR = re.compile(_FOR_HEAD + r"\s*$")
_FOR_STATEMENT = re.compile(_FOR_HEAD + r"([^;{}]*)$")   # a loop whose body is the one statement that follows
MAX_EVALUATED = 1 << 22  # stored elements enumerated per kernel at most; larger launches are only counted


class SourceError(ValueError):
  """A kernel declaration the loader cannot read."""


@dataclass(frozen=True)
class Param:
  name: str
  kind: str           # 'buffer' | 'image' | 'int32' | 'float32'
  writes: bool = False  # a non-const __global pointer: the kernel's output
  ctype: str = ""     # element type of a buffer


@dataclass(frozen=True)
class KernelDecl:
  name: str
  params: tuple[Param, ...]
  reqd_local: tuple[int, int, int] | None
  body: str

  @property
  def output(self) -> int | None:
    """The index of the one parameter the kernel writes (None when there is not exactly one)."""
    written = [i for i, p in enumerate(self.params) if p.writes]
    return written[0] if len(written) == 1 else None

  def guard_x(self) -> int | None:
    """N when the body returns for work items with get_global_id(0) >= N (the compiler's padded launches)."""
    return self._guard

  @functools.cached_property
  def _guard(self) -> int | None:
    if self._work_ids.get("gx") != ("global", 0): return None
    m = re.search(r"\bif\s*\(\s*gx\s*>=\s*(\d+)\s*\)\s*return\s*;", self.body)
    return int(m.group(1)) if m else None

  @functools.cached_property
  def _work_ids(self) -> dict[str, tuple[str, int]]:
    """{variable: (global | group | local, dimension)} of every `NAME = get_..._id(D)` in the body."""
    out = {}
    for m in re.finditer(r"get_(global|group|local)_id\s*\(\s*([012])\s*\)", self.body):
      name = re.search(r"([A-Za-z_]\w*)\s*=\s*$", self.body[max(0, m.start() - 64):m.start()])
      if name: out[name.group(1)] = (m.group(1), int(m.group(2)))
    return out

  def _ranges(self, global_size: tuple[int, ...], local_size: tuple[int, ...] | None) -> dict[str, int]:
    """{id variable: how many values it takes} over a launch (the guard applied; group and local ids only when the
    local size is known; in a kernel that stores once per group, `lid` of the storing work item only)."""
    out = {}
    for v, (kind, d) in self._work_ids.items():
      g = global_size[d] if d < len(global_size) else 1
      if kind == "global": out[v] = min(g, self._guard) if d == 0 and self._guard is not None else g
      elif local_size is not None:
        l = local_size[d] if d < len(local_size) else 1
        out[v] = g // l if kind == "group" else l
    return out

  @functools.cached_property
  def _returns_only_at_guard(self) -> bool:
    return len(re.findall(r"\breturn\b", self.body)) == (self._guard is not None)

  @functools.cached_property
  def _reads(self) -> dict[str, list[tuple[int, str, int]]]:
    """{parameter name: [(position, index expression, elements)]} of the reads the loader understands."""
    out: dict[str, list] = {}
    for m in re.finditer(r"(?<![\w.>])([A-Za-z_]\w*)\s*\[([^\]\[;]*)\]", self.body):
      out.setdefault(m.group(1), []).append((m.start(), m.group(2), 1))
    for m in re.finditer(r"\bvload_half\s*\(([^;,()]*),\s*([A-Za-z_]\w*)\s*\)", self.body):
      out.setdefault(m.group(2), []).append((m.start(), m.group(1), 1))
    for m in re.finditer(r"\bvload(\d+)\s*\(\s*0\s*,\s*([A-Za-z_]\w*)\s*\+([^;]*?)\)\s*[;:)]", self.body):
      out.setdefault(m.group(2), []).append((m.start(), m.group(3), int(m.group(1))))
    return out

  def stores_once_per_group(self) -> bool:
    """Whether only the first work item of each work-group (along dimension 0) stores: the compiler's grouped
    reduces, `int lid = get_local_id(0)` with every store under `if (lid == 0) {`."""
    if not re.search(r"\bint\s+lid\s*=\s*get_local_id\s*\(\s*0\s*\)", self.body): return False
    m = re.search(r"\bif\s*\(\s*lid\s*==\s*0\s*\)\s*\{", self.body)
    return m is not None and all(at > m.start() for at, _, _ in self._stores)

  @functools.cached_property
  def _stores(self) -> list[tuple[int, str | None, int]]:
    """(position, index expression or None, elements) of every store to the output parameter."""
    name = re.escape(self.params[self.output].name)
    out = [(m.start(), m.group(1), 1) for m in re.finditer(rf"(?<![\w.>]){name}\s*\[([^\]\[;]*)\]\s*=(?!=)", self.body)]
    for m in re.finditer(rf"\bvstore_half\s*\(([^;]*),\s*{name}\s*\)\s*;", self.body):
      args = _split_args(m.group(1))
      out.append((m.start(), args[1] if len(args) == 2 else None, 1))
    for m in re.finditer(rf"\bvstore(\d+)\s*\(([^;]*),\s*{name}\s*\+([^;]*)\)\s*;", self.body):
      args = _split_args(m.group(2))
      out.append((m.start(), m.group(3) if len(args) == 2 and args[1].strip() == "0" else None, int(m.group(1))))
    return sorted(out)

  def stores_per_item(self) -> int:
    """Elements of the output parameter one work item stores, counting each store statement once."""
    return sum(n for _, _, n in self._stores)

  def stored_elements(self, global_size: tuple[int, ...], local_size: tuple[int, ...] | None = None) -> np.ndarray | None:
    """Every element index of the output the launch stores (one entry per store), or None when the loader cannot tell:
    a store index that is not integer arithmetic of the global ids, a store inside a loop or a condition, a return
    other than the guard, or more than MAX_EVALUATED elements."""
    if not self._returns_only_at_guard: return None
    ranges, grouped = self._ranges(global_size, local_size), self.stores_once_per_group()
    if grouped:
      if "lid" not in ranges: return None
      ranges["lid"] = 1   # only the first work item of each group stores
    if len(ranges) != len(self._work_ids): return None
    stores = self._stores
    if not stores or np.prod(list(ranges.values()), dtype=np.float64) * sum(n for *_, n in stores) > MAX_EVALUATED: return None
    names = sorted(ranges)   # each id on an axis of its own
    env = {v: np.arange(ranges[v], dtype=np.int64).reshape([-1 if a == i else 1 for a in range(len(names))])
           for i, v in enumerate(names)}
    shape = [ranges[v] for v in names]
    top = self.body.index("{", re.search(r"\bif\s*\(\s*lid\s*==\s*0\s*\)\s*\{", self.body).start()) + 1 if grouped else 0
    out = []
    for at, expr, n in stores:
      if expr is None or not _at_top_level(self.body[top:], at - top): return None
      try: index = np.broadcast_to(_evaluate(ast.parse(expr.strip(), mode="eval").body, env), shape).ravel()
      except (SyntaxError, ValueError, ZeroDivisionError): return None
      out += [index + k for k in range(n)]
    return np.concatenate(out)


  def read_extent(self, param: int, global_size: tuple[int, ...], scalars: dict[str, int] | None = None,
                  local_size: tuple[int, ...] | None = None) -> int | None:
    """Elements of parameter `param` the kernel surely reads: one past the largest index of its reads that run
    unconditionally (not behind ?:, if, or a loop the loader cannot read), over the launch and every loop iteration;
    None when there is no such read. `scalars`: the int arguments by parameter name (loop bounds)."""
    if not self._returns_only_at_guard: return None
    ranges = self._ranges(global_size, local_size)
    reach: dict[tuple, int] = {}   # (index expression less a trailing constant, variables) -> largest constant + width
    for at, expr, width in self._reads.get(self.params[param].name, ()):
      loops = self._loops_around(at, scalars or {})
      if loops is None: continue
      for name, value in (scalars or {}).items():   # int arguments are constants of the launch
        expr = re.sub(rf"\b{re.escape(name)}\b", f"({value})", expr)
      m = re.fullmatch(r"(.*?)\s*([+-]\s*\d+)?\s*", expr)
      key = (m.group(1) or "0", tuple(sorted({**ranges, **loops}.items())))
      reach[key] = max(reach.get(key, -2**62), int(m.group(2).replace(" ", "") if m.group(2) else 0) + width)
    tops = [(_max_over(*key), more) for key, more in reach.items()]
    return max((top + more for top, more in tops if top is not None), default=None)

  def _loops_around(self, at: int, scalars: dict[str, int]) -> dict[str, int] | None:
    """{loop variable: trip count} of the loops around position `at` when every block around it is a plain counted
    loop (a literal bound or an int argument) and the statement at `at` runs unconditionally inside them; else None."""
    def bound(text: str) -> int | None:
      return int(text) if text.isdigit() else scalars.get(text)
    loops = {}
    end = self.body.find(";", at)
    start = max(self.body.rfind(c, 0, at) for c in ";{}") + 1
    lone = _FOR_STATEMENT.search(self.body, max(0, at - 200), at)
    if lone and lone.start() < start:   # for (...) STATEMENT: the statement starts after the header
      if bound(lone.group(2)) is None: return None
      loops[lone.group(1)], start = bound(lone.group(2)), lone.start(3)
    statement = self.body[start:end if end >= 0 else len(self.body)]
    if "?" in statement or statement.count("(") != statement.count(")") or \
        re.search(r"\b(if|for|while|else|do|switch|return)\b", statement): return None
    for o, c, header in self._blocks:
      if o < at < c:
        m = _FOR.search(header)
        if m is None or bound(m.group(2)) is None: return None
        loops[m.group(1)] = bound(m.group(2))
    return loops

  @functools.cached_property
  def _blocks(self) -> list[tuple[int, int, str]]:
    """(opening brace, closing brace, up to 200 characters before the opening brace) of every block."""
    out, stack = [], []
    for m in _BRACE.finditer(self.body):
      if m.group() == "{":   # a for header holds semicolons: keep the text just before the brace
        stack.append((m.start(), self.body[max(0, m.start() - 200):m.start()]))
      elif stack:
        o, header = stack.pop()
        out.append((o, m.start(), header))
    return out


@functools.lru_cache(maxsize=4096)
def _max_over(expr: str, variables: tuple[tuple[str, int], ...]) -> int | None:
  """The largest value of integer expression `expr` when each variable takes every value in range(n) of its
  (name, n): terms of the top-level sum that share no variable are maximized apart. None when it is not such an
  expression."""
  ranges = dict(variables)
  try: tree = ast.parse(expr.strip(), mode="eval").body
  except SyntaxError: return None
  terms = []
  def flatten(node, sign):
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
      flatten(node.left, sign)
      flatten(node.right, sign if isinstance(node.op, ast.Add) else -sign)
    else: terms.append((sign, node, {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}))
  flatten(tree, 1)
  if any(not names <= ranges.keys() or any(ranges[v] < 1 for v in names) for _, _, names in terms): return None
  groups: list[tuple[set, list]] = []
  for sign, node, names in terms:   # terms sharing a variable are evaluated together
    joined = [g for g in groups if g[0] & names]
    merged = (set(names).union(*(g[0] for g in joined)), [(sign, node)] + [t for g in joined for t in g[1]])
    groups = [g for g in groups if not g[0] & names] + [merged]
  total = 0
  for names, group_terms in groups:
    names = sorted(names)
    if np.prod([ranges[v] for v in names], dtype=np.float64) > MAX_EVALUATED: return None
    env = {v: np.arange(ranges[v], dtype=np.int64).reshape([-1 if a == i else 1 for a in range(len(names))])
           for i, v in enumerate(names)}
    try: value = sum(sign * _evaluate(node, env) for sign, node in group_terms)
    except (ValueError, ZeroDivisionError): return None
    total += int(np.max(value))
  return total


def _split_args(text: str) -> list[str]:
  """Top-level comma-separated arguments."""
  args, depth, start = [], 0, 0
  for i, c in enumerate(text):
    if c in "([": depth += 1
    elif c in ")]": depth -= 1
    elif c == "," and depth == 0: args.append(text[start:i]); start = i + 1
  return args + [text[start:]]


def _at_top_level(body: str, at: int) -> bool:
  """Whether the statement at `at` runs unconditionally: outside every brace and after a complete statement."""
  before = body[:at]
  return before.count("{") == before.count("}") and (before.rstrip()[-1:] in ("", ";", "{", "}"))


def _evaluate(node, env: dict):
  """An integer expression of +, -, *, / and % (C semantics: truncating), literals and the global ids, over arrays."""
  if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool): return node.value
  if isinstance(node, ast.Name) and node.id in env: return env[node.id]
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
    v = _evaluate(node.operand, env)
    return -v if isinstance(node.op, ast.USub) else v
  if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Mod)):
    a, b = _evaluate(node.left, env), _evaluate(node.right, env)
    if isinstance(node.op, ast.Add): return a + b
    if isinstance(node.op, ast.Sub): return a - b
    if isinstance(node.op, ast.Mult): return a * b
    if np.any(np.asarray(b) == 0): raise ZeroDivisionError
    q = np.abs(a) // np.abs(b) * np.sign(a) * np.sign(b)
    return q if isinstance(node.op, ast.Div) else a - q * b
  raise ValueError("not integer arithmetic of the global ids")


def _param(text: str) -> Param:
  words = _WORDS.findall(text)
  if not words or words[-1] == "*": raise SourceError(f"parameter {text.strip()!r} has no name")
  name, words = words[-1], words[:-1]
  if "image2d_t" in words:
    if "write_only" in words or "read_write" in words: raise SourceError(f"image parameter {name} is not read_only")
    return Param(name, "image")
  if "*" in words:
    if words.count("*") != 1 or not ({"__global", "global"} & set(words)):
      raise SourceError(f"parameter {name} is not a __global pointer")
    types = [w for w in words if w in ELEMENT_BYTES]
    if len(types) != 1: raise SourceError(f"parameter {name} has no element type the loader knows")
    return Param(name, "buffer", writes="const" not in words[:words.index("*")], ctype=types[0])
  rest = [w for w in words if w not in ("const", "__private", "private")]
  if len(rest) == 1 and rest[0] in SCALAR_PARAMS: return Param(name, SCALAR_PARAMS[rest[0]])
  raise SourceError(f"parameter {text.strip()!r} is neither a __global pointer, an image nor an int or float")


_BRACE = re.compile(r"[{}]")


def _closing_brace(source: str, start: int) -> int:
  """The index just past the brace that closes the one at `start`."""
  depth = 0
  for m in _BRACE.finditer(source, start):
    depth += 1 if m.group() == "{" else -1
    if depth == 0: return m.end()
  raise SourceError("a kernel body has no closing brace")


def _body(source: str, start: int) -> str:
  """The text between the brace at `start` and its matching closing brace."""
  return source[start + 1:_closing_brace(source, start) - 1]


def function_span(source: str, name: str) -> tuple[int, int] | None:
  """(start, end) of the `__kernel` function `name` in `source`: from its qualifier to its closing brace, or None."""
  m = next((m for m in _KERNEL.finditer(source) if m.group(2) == name), None)
  if m is None: return None
  try: return m.start(), _closing_brace(source, m.end() - 1)
  except SourceError: return None


def kernels_of(source: str) -> dict[str, KernelDecl]:
  """Every kernel declared in `source`, by name (SourceError for a declaration the loader cannot read)."""
  source = _COMMENT.sub(" ", source)
  out = {}
  for m in _KERNEL.finditer(source):
    attrs, name, params = m.groups()
    reqd = _REQD.search(attrs)
    try: parsed = tuple(_param(p) for p in params.split(",")) if params.strip() not in ("", "void") else ()
    except SourceError as e: raise SourceError(f"kernel {name!r}: {e}") from None
    if name in out: raise SourceError(f"kernel {name!r} is declared twice")
    out[name] = KernelDecl(name, parsed, tuple(int(v) for v in reqd.groups()) if reqd else None, _body(source, m.end() - 1))
  return out
