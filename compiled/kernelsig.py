"""What each kernel of an OpenCL program source declares, read from its text: parameter kinds, its required work-group
size, its guard on the first global id, and how many elements of its output one work item stores.

The loader checks an artifact's kernel arguments and launch sizes against these (compiled/artifact.py validate). It
understands the fixed forms the compiler generates (edgeml/codegen.py) and plain hand-written kernels:

    __kernel [__attribute__((reqd_work_group_size(X,Y,Z)))] void NAME(PARAM, ...) { ... }
    PARAM: [const] __global [const] T [*] [restrict] NAME | read_only image2d_t NAME | int NAME | float NAME
    stores: NAME[...] = v;   vstore_half(v, i, NAME);   vstoreN(v, 0, NAME + i);
    guard:  int gx = get_global_id(0) ... if (gx >= N) return;
"""
import re
from dataclasses import dataclass

ELEMENT_BYTES = {"float": 4, "half": 2, "double": 8, "char": 1, "uchar": 1, "short": 2, "ushort": 2, "int": 4,
                 "uint": 4, "long": 8, "ulong": 8}
SCALAR_PARAMS = {"int": "int32", "float": "float32"}  # the scalar argument kinds of an artifact, by C type
_WORDS = re.compile(r"[A-Za-z_]\w*|\*")
_KERNEL = re.compile(r"\b(?:__)?kernel\s+((?:__attribute__\s*\(\([^;{]*?\)\)\s*)*)void\s+([A-Za-z_]\w*)\s*\(([^)]*)\)\s*\{")
_REQD = re.compile(r"reqd_work_group_size\s*\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)")
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


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
    if not re.search(r"\bint\s+gx\s*=\s*get_global_id\s*\(\s*0\s*\)", self.body): return None
    m = re.search(r"\bif\s*\(\s*gx\s*>=\s*(\d+)\s*\)\s*return\s*;", self.body)
    return int(m.group(1)) if m else None

  def stores_per_item(self) -> int:
    """Elements of the output parameter one work item stores: every store statement, outside any loop."""
    name = re.escape(self.params[self.output].name)
    plain = len(re.findall(rf"(?<![\w.>]){name}\s*\[[^\]\[;]*\]\s*=(?!=)", self.body))
    half = len(re.findall(rf"\bvstore_half\s*\([^;]*,\s*{name}\s*\)\s*;", self.body))
    vector = sum(int(n) for n in re.findall(rf"\bvstore(\d+)\s*\([^;]*,\s*{name}\s*\+[^;]*\)\s*;", self.body))
    return plain + half + vector


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


def _body(source: str, start: int) -> str:
  depth = 0
  for i in range(start, len(source)):
    if source[i] == "{": depth += 1
    elif source[i] == "}":
      depth -= 1
      if depth == 0: return source[start + 1:i]
  raise SourceError("a kernel body has no closing brace")


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
