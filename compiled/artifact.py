"""The artifact: a compiled program as one file, and the dataclasses that describe it.

File layout (integers little-endian):

    magic (8 bytes) | u32 format version | u64 header length | u64 weights length
    | header (Cap'n Proto, compiled/artifact.capnp) | zero padding to a multiple of 64
    | weights blob | sha256 of every byte before it (32 bytes) [| signature trailer, see compiled/signing.py]

Reading reads the whole file once into memory (no live mapping: a file truncated or rewritten under a running program
cannot crash it), checks the magic, the version, the length fields, the checksum and the signature (when there is one
or one is required) before it parses a byte of the header, then checks the whole structure (`validate`): every field,
every kernel argument against the parameters the kernel declares, the data flow between kernels, the launch sizes
against what each kernel stores, and input and output sizes against a cap. Every refusal is an ArtifactError naming
the file and the field; no other exception leaves `read_artifact` for any file content. Writing goes to a temporary
file that is renamed into place, so a failed write never leaves a half-written artifact. The same spec always gives
the same bytes. No pickle anywhere.
"""
import hashlib
import math
import os
import struct
from dataclasses import dataclass, field
from compiled.atomic import write_atomic
from compiled.chain import chain_problem
from compiled.kernelsig import ELEMENT_BYTES, SourceError, function_span, kernels_of
from compiled.targets import TARGETS

import capnp
import numpy as np

MAGIC = b"EDGEML\0\1"  # fixed forever; the format version is the field after it
FORMAT_VERSION = 2  # 2: arena buffers may be stored in planes (BufferSpec.plane_bytes); 1 is read too
PREFIX = struct.Struct("<8sIQQ")  # magic, format version, header length, weights length
BLOB_ALIGN = 64
DIGEST = 32
ARG_KINDS = ("buffer", "int32", "float32")
BUFFER_KINDS = ("arena", "weights", "input", "output", "image")
IMAGE_FORMATS = {"float32": 16, "float16": 8}  # image_format -> bytes per RGBA texel
IMAGE_PITCH_ALIGN = 64  # bytes; image rows start at multiples of this
IMAGE_MAX_SIDE = 65535  # imageWidth and imageHeight are UInt16 in the header
MAX_CANDIDATES = 3  # other renderings per kernel (with the kernel itself, 4 to time on the device)
MAX_TENSOR_BYTES_ENV = "EDGEML_MAX_TENSOR_BYTES"
DEFAULT_MAX_TENSOR_BYTES = 256 << 20  # each input and output; EDGEML_MAX_TENSOR_BYTES or max_tensor_bytes= changes it
CTYPE_OF = {"float32": "float", "float16": "half", "float64": "double", "int8": "char", "uint8": "uchar", "int16": "short",
            "uint16": "ushort", "int32": "int", "uint32": "uint", "int64": "long", "uint64": "ulong", "bool": "uchar"}

schema = capnp.load(os.path.join(os.path.dirname(__file__), "artifact.capnp"))


class ArtifactError(ValueError):
  """An artifact (or a spec about to become one) that cannot be used, and why."""


@dataclass
class TensorSpec:
  """A graph input or output."""
  name: str
  shape: tuple[int, ...]
  dtype: str  # numpy dtype name
  buffer: int  # index into ProgramSpec.buffers


@dataclass
class BufferSpec:
  kind: str  # 'arena' | 'weights' | 'input' | 'output' | 'image'
  offset: int  # byte offset into the arena or the weights blob (weights and image); 0 for input and output
  nbytes: int  # an image: image_height * pitch
  # kind 'image' only: weights read through image2d_t, RGBA texels of 4 consecutive elements, rows of image_width
  # texels, each row `pitch` bytes (a multiple of 64) in the blob
  image_format: str = ""  # 'float32' (CL_FLOAT) | 'float16' (CL_HALF_FLOAT)
  image_width: int = 0
  image_height: int = 0
  # kind 'arena' only: an activation stored in planes of plane_bytes, each plane_pitch bytes after the one before
  # (channel planes padded apart: edgeml/schedule.py plane_pitch); 0 and 0: its elements one after another
  plane_bytes: int = 0
  plane_pitch: int = 0

  @property
  def pitch(self) -> int:
    """Bytes per image row (0 for other kinds)."""
    return self.nbytes // self.image_height if self.kind == "image" and self.image_height else 0

  def stored(self, indices: np.ndarray, element_bytes: int) -> np.ndarray | None:
    """The elements at buffer `indices` numbered one after another, planes without their padding; None when some
    index lies in the padding between planes."""
    if not self.plane_pitch: return indices
    plane, pitch = self.plane_bytes // element_bytes, self.plane_pitch // element_bytes
    planes, within = np.divmod(indices, pitch)
    return None if (within >= plane).any() else planes * plane + within

  def elements(self, element_bytes: int) -> int:
    """How many elements of `element_bytes` the buffer holds (planes without their padding)."""
    if not self.plane_pitch: return self.nbytes // element_bytes
    return (1 + (self.nbytes - self.plane_bytes) // self.plane_pitch) * self.plane_bytes // element_bytes


@dataclass
class CandidateSpec:
  """Another rendering of a kernel for on-device tuning: the whole `__kernel` function (same name and arguments) and
  its launch sizes."""
  source: str
  global_size: tuple[int, ...]
  local_size: tuple[int, ...] | None


@dataclass
class ChoiceSpec:
  """What edgeml-tune measured fastest on one device: picks[i] for kernel i, 0 the kernel in the program source,
  j its candidates[j - 1]."""
  device: str   # compiled.device.describe() of the device
  driver: str   # its CL_DRIVER_VERSION
  picks: list[int]


@dataclass
class KernelSpec:
  name: str  # entry point in ProgramSpec.source, unique
  global_size: tuple[int, ...]
  local_size: tuple[int, ...] | None
  args: list[tuple[str, int | float]]  # ('buffer', buffer id) | ('int32', v) | ('float32', v)
  flops: int
  bytes: int  # the bytes of its buffer arguments (an image: its data without row padding), checked by validate
  candidates: list[CandidateSpec] = field(default_factory=list)  # for on-device tuning (compiled/tune.py)
  with_previous: bool = False  # runs in one launch with the kernel before it (compiled/chain.py)


@dataclass
class ProgramSpec:
  target: str  # a name in compiled.targets.TARGETS
  compiler_version: str
  source: str  # one OpenCL program holding every kernel
  build_options: str
  inputs: list[TensorSpec]
  outputs: list[TensorSpec]
  buffers: list[BufferSpec]
  kernels: list[KernelSpec]
  arena_size: int
  align: int  # byte alignment of arena and weights offsets
  weights: bytes | memoryview
  choices: list[ChoiceSpec] = field(default_factory=list)  # by (device, driver), sorted and unique


@dataclass
class ArtifactFacts:
  """What the fixed-size parts of a file say: for inspect."""
  format_version: int
  header_nbytes: int
  weights_offset: int
  weights_nbytes: int
  file_nbytes: int
  sha256: str
  signer: str = ""  # the signer's Ed25519 public key (hex); '' when unsigned


def _padded(n: int) -> int:
  return -(-n // BLOB_ALIGN) * BLOB_ALIGN


# ---- invariants --------------------------------------------------------------------------------------------------

def tensor_cap(value: int | None = None) -> int:
  """The size cap of each input and output: `value`, else EDGEML_MAX_TENSOR_BYTES, else 256 MiB."""
  if value is not None: return value
  env = os.environ.get(MAX_TENSOR_BYTES_ENV, "")
  try: return int(env) if env else DEFAULT_MAX_TENSOR_BYTES
  except ValueError: raise ArtifactError(f"{MAX_TENSOR_BYTES_ENV}={env!r} is not a number of bytes") from None


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def validate(spec: ProgramSpec, where: str = "spec", max_tensor_bytes: int | None = None) -> None:
  """Raise ArtifactError (naming `where` and the field) unless `spec` is a program the compiler could have made:
  every field in range, every buffer inside its parent, every kernel argument of the kind its parameter declares,
  every buffer read only after it is written and not overwritten through another buffer before it is read, every
  launch storing exactly its output, and inputs and outputs of at most `max_tensor_bytes` (see tensor_cap)."""
  def fail(problem: str): raise ArtifactError(f"{where}: {problem}")
  cap = tensor_cap(max_tensor_bytes)
  for name in ("target", "compiler_version", "source", "build_options"):
    if not isinstance(getattr(spec, name), str): fail(f"{name} is not text")
  if spec.target not in TARGETS: fail(f"unknown target {spec.target!r} (known: {', '.join(TARGETS)})")
  if not _is_int(spec.align) or spec.align < 1 or spec.align & (spec.align - 1):
    fail(f"align must be a positive power of two, got {spec.align}")
  if not _is_int(spec.arena_size) or spec.arena_size < 0: fail(f"arena_size must be a byte count, got {spec.arena_size}")
  limits = {"arena": spec.arena_size, "weights": len(spec.weights), "image": len(spec.weights)}
  for i, b in enumerate(spec.buffers):
    if b.kind not in BUFFER_KINDS: fail(f"buffer {i} has unknown kind {b.kind!r}")
    if not (_is_int(b.offset) and _is_int(b.nbytes) and b.offset >= 0 and b.nbytes >= 0):
      fail(f"buffer {i} ({b.kind}) offset {b.offset} and nbytes {b.nbytes} must be byte counts")
    if b.kind in limits:
      if b.offset % spec.align: fail(f"buffer {i} ({b.kind}) offset {b.offset} is not a multiple of align {spec.align}")
      if b.offset + b.nbytes > limits[b.kind]:
        fail(f"buffer {i} ({b.kind}) bytes {b.offset}..{b.offset + b.nbytes} lie outside the "
             f"{'weights' if b.kind == 'image' else b.kind} ({limits[b.kind]} bytes)")
    elif b.offset: fail(f"buffer {i} ({b.kind}) must have offset 0, got {b.offset}")
    elif b.nbytes > cap:
      fail(f"buffer {i} ({b.kind}) nbytes {b.nbytes} exceeds the cap of {cap} bytes per input or output "
           f"({MAX_TENSOR_BYTES_ENV})")
    if b.kind == "image":
      if b.image_format not in IMAGE_FORMATS: fail(f"image buffer {i} has unknown format {b.image_format!r}")
      if not (_is_int(b.image_width) and _is_int(b.image_height)
              and 0 < b.image_width <= IMAGE_MAX_SIDE and 0 < b.image_height <= IMAGE_MAX_SIDE):
        fail(f"image buffer {i} has size {b.image_width}x{b.image_height}")
      if b.nbytes % b.image_height or b.pitch % IMAGE_PITCH_ALIGN or b.pitch < b.image_width * IMAGE_FORMATS[b.image_format]:
        fail(f"image buffer {i}: {b.nbytes} bytes in {b.image_height} rows of {b.image_width} {b.image_format} texels "
             f"is not a row pitch that is a multiple of {IMAGE_PITCH_ALIGN} bytes and holds a row")
    elif b.image_format or b.image_width or b.image_height: fail(f"buffer {i} ({b.kind}) has image fields")
    if b.plane_bytes or b.plane_pitch:
      if not (b.kind == "arena" and _is_int(b.plane_bytes) and _is_int(b.plane_pitch) and 0 < b.plane_bytes <= b.plane_pitch
              and b.nbytes >= b.plane_bytes and (b.nbytes - b.plane_bytes) % b.plane_pitch == 0):
        fail(f"buffer {i} ({b.kind}): {b.nbytes} bytes are not planes of {b.plane_bytes} bytes every {b.plane_pitch} bytes")
  arena_end = max((b.offset + b.nbytes for b in spec.buffers if b.kind == "arena"), default=0)
  if spec.arena_size > -(-arena_end // spec.align) * spec.align:
    fail(f"arena_size {spec.arena_size} is more than its buffers use ({arena_end} bytes, rounded up to align {spec.align})")
  blob = sorted((b.offset, b.offset + b.nbytes, i) for i, b in enumerate(spec.buffers)
                if b.kind in ("weights", "image") and b.nbytes)
  for (_, end, i), (start, _, j) in zip(blob, blob[1:]):
    if start < end: fail(f"buffers {i} and {j} overlap in the weights")
  _validate_tensors(spec, fail, cap)
  _validate_kernels(spec, fail)


def _validate_tensors(spec: ProgramSpec, fail, cap: int) -> None:
  owner = {}
  for role, tensors in (("input", spec.inputs), ("output", spec.outputs)):
    if len({t.name for t in tensors}) != len(tensors): fail(f"{role} names are not unique")
    for t in tensors:
      if not isinstance(t.name, str) or not t.name: fail(f"an {role} has no name")
      if not isinstance(t.dtype, str) or t.dtype not in CTYPE_OF:
        fail(f"{role} {t.name!r} has dtype {t.dtype!r}, not a numpy dtype name the runtime supports "
             f"({', '.join(CTYPE_OF)})")
      if not all(_is_int(d) and d >= 0 for d in t.shape) or len(t.shape) > 32:
        fail(f"{role} {t.name!r} has shape {list(t.shape)}: at most 32 sizes, each a count")
      need = math.prod(t.shape) * np.dtype(t.dtype).itemsize
      if need > cap:
        fail(f"{role} {t.name!r} {t.dtype}{list(t.shape)} needs {need} bytes, more than the cap of {cap} bytes per input "
             f"or output ({MAX_TENSOR_BYTES_ENV})")
      if not (_is_int(t.buffer) and 0 <= t.buffer < len(spec.buffers)):
        fail(f"{role} {t.name!r} refers to missing buffer {t.buffer}")
      b = spec.buffers[t.buffer]
      if b.kind != role: fail(f"{role} {t.name!r} must live in an {role} buffer, not {b.kind}")
      if t.buffer != len(owner): fail(f"{role} {t.name!r} is in buffer {t.buffer}; the buffers start with the inputs, "
                                      f"then the outputs, in order (expected buffer {len(owner)})")
      owner[t.buffer] = t.name
      if need != b.nbytes:
        fail(f"{role} {t.name!r} {t.dtype}{list(t.shape)} needs {need} bytes but buffer {t.buffer} has {b.nbytes}")
  for i, b in enumerate(spec.buffers):
    if b.kind in ("input", "output") and i not in owner: fail(f"buffer {i} ({b.kind}) belongs to no {b.kind}")


def _validate_kernels(spec: ProgramSpec, fail) -> None:
  """Arguments against the declared parameters, launch sizes against the stores, and the data flow between kernels."""
  if len({k.name for k in spec.kernels}) != len(spec.kernels): fail("kernel names are not unique")
  try: declared = kernels_of(spec.source)
  except SourceError as e: fail(f"source: {e}")
  ctype_of_buffer = {t.buffer: CTYPE_OF[t.dtype] for t in (*spec.inputs, *spec.outputs)}
  valid = {i for i, b in enumerate(spec.buffers) if b.kind in ("input", "weights", "image")}  # hold their data
  clobbered, written, read = {}, set(), set()
  last_blob, last_arena = (-1, -1), -1  # the compiler numbers weights by first read (and places them in that order),
  # arena buffers by first write
  for n, k in enumerate(spec.kernels):
    what = f"kernel {n} ({k.name!r})"
    decl = declared.get(k.name)
    if decl is None: fail(f"kernel {k.name!r} is not in the program source")
    if len(decl.params) != len(k.args):
      fail(f"kernel {k.name!r} takes {len(decl.params)} arguments, the artifact gives {len(k.args)}")
    if decl.output is None: fail(f"{what} must write exactly one __global pointer (the others const)")
    reads, out = [], None
    for j, ((kind, value), p) in enumerate(zip(k.args, decl.params)):
      if kind not in ARG_KINDS: fail(f"{what} argument {j} has unknown kind {kind!r}")
      if kind == "buffer":
        if not (_is_int(value) and 0 <= value < len(spec.buffers)): fail(f"{what} argument {j} refers to missing buffer {value}")
        b = spec.buffers[value]
        if p.kind not in ("buffer", "image") or (b.kind == "image") != (p.kind == "image"):
          fail(f"{what} argument {j} is buffer {value} ({b.kind}), but parameter {p.name!r} is "
               f"{'an image2d_t' if p.kind == 'image' else 'a buffer' if p.kind == 'buffer' else 'a ' + p.kind}")
        if p.kind == "buffer":
          if ctype_of_buffer.setdefault(value, p.ctype) != p.ctype:
            fail(f"{what} argument {j} reads or writes buffer {value} as {p.ctype}, elsewhere it is "
                 f"{ctype_of_buffer[value]}")
          if b.nbytes % ELEMENT_BYTES[p.ctype]:
            fail(f"{what} argument {j}: buffer {value} has {b.nbytes} bytes, not a whole number of {p.ctype}")
        if p.writes:
          if b.kind not in ("arena", "output"):
            fail(f"{what} argument {j} writes buffer {value} ({b.kind}); only arena and output buffers are written")
          out = value
        else: reads.append((j, value))
      else:
        if p.kind != kind: fail(f"{what} argument {j} is {kind}, but parameter {p.name!r} is {p.kind}")
        if kind == "int32" and not (_is_int(value) and -2**31 <= value < 2**31): fail(f"{what} argument {j} is not an int32")
        if kind == "float32" and not isinstance(value, (int, float)): fail(f"{what} argument {j} is not a float32")
    _validate_launch(spec, k, decl, out, what, fail)
    if not isinstance(k.with_previous, bool): fail(f"{what} with_previous is not a bool")
    for j, r in reads:
      if r == out or _overlap(spec.buffers[r], spec.buffers[out]):
        fail(f"{what} argument {j} reads buffer {r}, which overlaps buffer {out} it writes")
      b = spec.buffers[r]
      if b.kind in ("weights", "image") and r not in read:
        if r <= last_blob[0] or b.offset < last_blob[1]:
          fail(f"{what} argument {j} reads buffer {r} ({b.kind} at {b.offset}) first, after buffer {last_blob[0]} "
               f"(at {last_blob[1]}): weights are numbered and placed in the order kernels first read them")
        last_blob = (r, b.offset)
      if r not in valid:
        fail(f"{what} argument {j} reads buffer {r} ({spec.buffers[r].kind}) "
             + (f"after kernel {clobbered[r]} overwrote its bytes" if r in clobbered else "before any kernel writes it"))
      read.add(r)
    if spec.buffers[out].kind == "output" and out in written: fail(f"{what} writes output buffer {out} a second time")
    if spec.buffers[out].kind == "arena" and out not in written:
      if out < last_arena: fail(f"{what} writes buffer {out} (arena) first, after buffer {last_arena}: arena buffers "
                                f"are numbered in the order kernels first write them")
      last_arena = out
    written.add(out)
    for i, b in enumerate(spec.buffers):
      if i != out and i in valid and _overlap(b, spec.buffers[out]): valid.discard(i); clobbered[i] = n
    valid.add(out)
  if (problem := chain_problem(spec.kernels, declared)): fail(problem)
  for i, b in enumerate(spec.buffers):
    if b.kind == "output" and i not in written: fail(f"buffer {i} (output) is written by no kernel")
    if b.kind in ("weights", "image") and i not in read: fail(f"buffer {i} ({b.kind}) is read by no kernel")
    if b.kind == "arena" and not (i in written and i in read): fail(f"buffer {i} (arena) is not written and then read")
  for n, k in enumerate(spec.kernels):
    _validate_reads(spec, k, declared[k.name], f"kernel {n} ({k.name!r})", fail)
    _validate_bytes(spec, k, f"kernel {n} ({k.name!r})", fail)
    _validate_candidates(spec, k, declared[k.name], f"kernel {n} ({k.name!r})", fail)
  _validate_choices(spec, fail)


def _validate_candidates(spec: ProgramSpec, k: KernelSpec, decl, what: str, fail) -> None:
  """Each candidate is one `__kernel` function of the kernel's name and parameters (nothing around it that could
  change the rest of the program once spliced in: no comment, no preprocessor line), whose launch and reads pass the
  checks the kernel itself passes."""
  if not isinstance(k.candidates, list) or len(k.candidates) > MAX_CANDIDATES:
    fail(f"{what} has more than {MAX_CANDIDATES} candidates")
  out = next(v for (kind, v), p in zip(k.args, decl.params) if kind == "buffer" and p.writes)
  for j, c in enumerate(k.candidates):
    at = f"{what} candidate {j + 1}"
    if not isinstance(c.source, str) or any(bad in c.source for bad in ("/*", "//", "#")):
      fail(f"{at}: the source is not text of one kernel function (no comments, no preprocessor lines)")
    try: found = kernels_of(c.source)
    except SourceError as e: fail(f"{at}: {e}")
    span = function_span(c.source, k.name)
    if list(found) != [k.name] or span is None or c.source[:span[0]].strip() or c.source[span[1]:].strip():
      fail(f"{at}: the source must be exactly the function of kernel {k.name!r}, found {sorted(found)}")
    cdecl = found[k.name]
    if [(p.kind, p.writes, p.ctype) for p in cdecl.params] != [(p.kind, p.writes, p.ctype) for p in decl.params]:
      fail(f"{at}: its parameters differ from the kernel's")
    variant = KernelSpec(k.name, c.global_size, c.local_size, k.args, k.flops, k.bytes)
    _validate_launch(spec, variant, cdecl, out, at, fail)
    _validate_reads(spec, variant, cdecl, at, fail)


def _validate_choices(spec: ProgramSpec, fail) -> None:
  """One pick per kernel, each naming the kernel or one of its candidates; (device, driver) unique."""
  seen = set()
  for i, c in enumerate(spec.choices):
    at = f"choice {i}"
    if not (isinstance(c.device, str) and isinstance(c.driver, str) and c.device): fail(f"{at} has no device name")
    if (c.device, c.driver) in seen: fail(f"{at}: a second choice for {c.device!r} driver {c.driver!r}")
    seen.add((c.device, c.driver))
    if len(c.picks) != len(spec.kernels):
      fail(f"{at} ({c.device!r}) has {len(c.picks)} picks for {len(spec.kernels)} kernels")
    for n, (pick, k) in enumerate(zip(c.picks, spec.kernels)):
      if not (_is_int(pick) and 0 <= pick <= len(k.candidates)):
        fail(f"{at} ({c.device!r}) picks candidate {pick} for kernel {n} ({k.name!r}), which has "
             f"{len(k.candidates)} candidates besides itself")


def _validate_reads(spec: ProgramSpec, k: KernelSpec, decl, what: str, fail) -> None:
  """Every buffer a kernel reads holds at least the elements its unconditional reads reach (compiled/kernelsig.py)."""
  scalars = {p.name: v for (kind, v), p in zip(k.args, decl.params) if kind == "int32"}
  for j, ((kind, value), p) in enumerate(zip(k.args, decl.params)):
    if kind != "buffer" or p.kind != "buffer" or p.writes: continue
    extent = decl.read_extent(j, tuple(k.global_size), scalars, tuple(k.local_size or ()) or decl.reqd_local)
    elements = spec.buffers[value].nbytes // ELEMENT_BYTES[p.ctype]
    if extent is not None and extent > elements:
      fail(f"{what} argument {j} ({p.name!r}) reads {p.ctype} element {extent - 1} of buffer {value}, which holds "
           f"{elements}")


def _covers(stored: np.ndarray, elements: int) -> bool:
  """Whether `stored` (as many indices as elements, all in range) names every element: then each exactly once."""
  seen = np.zeros(elements, bool)
  seen[stored] = True
  return bool(seen.all())


def _validate_bytes(spec: ProgramSpec, k: KernelSpec, what: str, fail) -> None:
  """A kernel's `bytes` is the bytes of its buffer arguments (an image: its data without the row padding), as the
  compiler counts them: an argument pointed at a buffer of another size no longer adds up."""
  if not _is_int(k.bytes): fail(f"{what} bytes {k.bytes!r} is not a byte count")
  low = high = 0
  for kind, value in k.args:
    if kind != "buffer": continue
    b = spec.buffers[value]
    if b.kind == "image":   # the data fill more than all rows but the last, and at most every row
      row = b.image_width * IMAGE_FORMATS[b.image_format]
      low, high = low + (b.image_height - 1) * row + 1, high + b.image_height * row
    else: low, high = low + b.nbytes, high + b.nbytes
  if not low <= k.bytes <= high:
    fail(f"{what} bytes {k.bytes} is not the bytes of its buffer arguments ({low if low == high else f'{low}..{high}'}); "
         f"an argument refers to another buffer than the compiler's")


def _overlap(a: BufferSpec, b: BufferSpec) -> bool:
  """Whether two buffers share bytes (arena buffers may; the others each have memory of their own)."""
  return a.kind == b.kind == "arena" and a.nbytes > 0 and b.nbytes > 0 and \
      a.offset < b.offset + b.nbytes and b.offset < a.offset + a.nbytes


def _validate_launch(spec: ProgramSpec, k: KernelSpec, decl, out: int, what: str, fail) -> None:
  """Sizes positive, local dividing global, the declared work-group size, and exactly the output's elements stored
  (counted; and, where the store indices are plain arithmetic of the global ids, each element once)."""
  g, loc = tuple(k.global_size), k.local_size
  if not 1 <= len(g) <= 3 or not all(_is_int(v) and v >= 1 for v in g):
    fail(f"{what} global size {list(g)} is not 1 to 3 positive sizes")
  if loc is not None:
    loc = tuple(loc)
    if len(loc) != len(g) or not all(_is_int(v) and v >= 1 for v in loc):
      fail(f"{what} local size {list(loc)} is not {len(g)} positive sizes like its global size {list(g)}")
    if any(gs % ls for gs, ls in zip(g, loc)): fail(f"{what} local size {list(loc)} does not divide global size {list(g)}")
  if decl.reqd_local is not None and (loc or ()) + (1,) * (3 - len(loc or ())) != decl.reqd_local:
    fail(f"{what} local size {list(loc or [])} is not the work-group size {list(decl.reqd_local)} the source requires")
  p, b = decl.params[decl.output], spec.buffers[out]
  elements, size = b.elements(ELEMENT_BYTES[p.ctype]), b.nbytes // ELEMENT_BYTES[p.ctype]
  if b.plane_pitch and (b.plane_bytes % ELEMENT_BYTES[p.ctype] or b.plane_pitch % ELEMENT_BYTES[p.ctype]):
    fail(f"{what} stores {p.ctype} elements in buffer {out}, whose planes are not whole elements")
  stores = decl.stores_per_item()
  guard = decl.guard_x()
  items = min(g[0], guard if guard is not None else g[0]) * math.prod(g[1:])
  if decl.stores_once_per_group() and loc: items //= loc[0]
  if items * stores != elements:
    fail(f"{what} global size {list(g)} stores {items} x {stores} elements of {p.name!r}, but buffer {out} holds "
         f"{elements} {p.ctype}")
  at = decl.stored_elements(g, loc or decl.reqd_local)   # None where the store indices are not plain arithmetic
  if at is None: return
  stored = b.stored(at, ELEMENT_BYTES[p.ctype]) if at.min() >= 0 and at.max() < size else None
  if stored is None or not _covers(stored, elements):
    fail(f"{what} global size {list(g)} does not store each of the {elements} elements of {p.name!r} (buffer {out}) "
         f"exactly once{' outside the padding between its planes' if b.plane_pitch else ''}: its store indices run "
         f"from {at.min()} to {at.max()}")


# ---- write -------------------------------------------------------------------------------------------------------

def _header(spec: ProgramSpec) -> bytes:
  msg = schema.Program.new_message(compilerVersion=spec.compiler_version, target=spec.target, source=spec.source,
                                   buildOptions=spec.build_options, arenaSize=spec.arena_size, align=spec.align)
  for field, tensors in (("inputs", spec.inputs), ("outputs", spec.outputs)):
    for t, out in zip(tensors, msg.init(field, len(tensors))):
      out.name, out.shape, out.dtype, out.buffer = t.name, list(t.shape), t.dtype, t.buffer
  for b, out in zip(spec.buffers, msg.init("buffers", len(spec.buffers))):
    out.kind, out.offset, out.nbytes = b.kind, b.offset, b.nbytes
    if b.kind == "image": out.imageFormat, out.imageWidth, out.imageHeight = b.image_format, b.image_width, b.image_height
    out.planeBytes, out.planePitch = b.plane_bytes, b.plane_pitch
  for k, out in zip(spec.kernels, msg.init("kernels", len(spec.kernels))):
    out.name, out.globalSize, out.localSize = k.name, list(k.global_size), list(k.local_size or ())
    out.flops, out.bytes = k.flops, k.bytes
    for (kind, value), arg in zip(k.args, out.init("args", len(k.args))):
      setattr(arg, kind, value)
    out.withPrevious = k.with_previous
    if k.candidates:
      for c, cand in zip(k.candidates, out.init("candidates", len(k.candidates))):
        cand.source, cand.globalSize, cand.localSize = c.source, list(c.global_size), list(c.local_size or ())
  if spec.choices:
    for c, choice in zip(spec.choices, msg.init("choices", len(spec.choices))):
      choice.device, choice.driver, choice.picks = c.device, c.driver, list(c.picks)
  return msg.to_bytes()


def write_artifact(spec: ProgramSpec, path: str | os.PathLike, sign_key=None) -> None:
  """Write `spec` to `path` atomically: a temporary file beside it, flushed, then renamed over it. `sign_key` (an
  Ed25519 private key: a PEM file path, PEM bytes or a key object) appends a signature (compiled/signing.py)."""
  path = os.fspath(path)
  validate(spec, path)
  header, weights = _header(spec), memoryview(spec.weights).cast("B")
  head = PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), len(weights)) + header
  head += bytes(_padded(len(head)) - len(head))
  digest = hashlib.sha256(head)
  digest.update(weights)
  parts = [head, weights, digest.digest()]
  if sign_key is not None:
    from compiled.signing import trailer
    parts.append(trailer(digest.digest(), sign_key))
  write_atomic(path, *parts)


# ---- read --------------------------------------------------------------------------------------------------------

def _verified(path: str, trusted_keys=None, require_signature: bool = False) -> tuple[memoryview, ArtifactFacts]:
  """Read the file once and check magic, version, lengths, checksum and signature; nothing of the header is parsed."""
  try:
    with open(path, "rb") as f: data = memoryview(f.read())
  except OSError as e: raise ArtifactError(f"{path}: cannot read: {e.strerror or e}") from None
  size = len(data)
  if size < PREFIX.size + DIGEST:
    raise ArtifactError(f"{path}: truncated: {size} bytes, less than the {PREFIX.size + DIGEST} of an empty artifact")
  magic, version, header_nbytes, weights_nbytes = PREFIX.unpack(data[:PREFIX.size])
  if magic != MAGIC: raise ArtifactError(f"{path}: not an edgeml artifact: magic {magic!r} at offset 0, expected {MAGIC!r}")
  if version > FORMAT_VERSION:
    raise ArtifactError(f"{path}: built by a newer edgeml: format {version}, this runtime reads up to {FORMAT_VERSION}")
  if version < 1: raise ArtifactError(f"{path}: invalid format version {version} at offset 8")
  weights_offset = _padded(PREFIX.size + header_nbytes)
  expected = weights_offset + weights_nbytes + DIGEST
  from compiled import signing  # the module only; `cryptography` is imported when a signature is checked
  signed = size == expected + signing.TRAILER and bytes(data[expected:expected + len(signing.SIG_MAGIC)]) == signing.SIG_MAGIC
  if size != expected and not signed:
    raise ArtifactError(f"{path}: {'truncated' if size < expected else 'trailing data'}: the file has {size} bytes but "
                        f"its length fields (header {header_nbytes} bytes at offset {PREFIX.size}, weights "
                        f"{weights_nbytes} bytes at offset {weights_offset}) make {expected}"
                        + (f" (or {expected + signing.TRAILER} signed)" if size > expected else ""))
  end = expected - DIGEST
  stored, actual = bytes(data[end:expected]), hashlib.sha256(data[:end]).digest()
  if stored != actual:
    raise ArtifactError(f"{path}: checksum mismatch (the file is corrupt): sha256 of bytes 0..{end} is "
                        f"{actual.hex()}, the file stores {stored.hex()} at offset {end}")
  trusted = signing.trusted_keys_from(trusted_keys) if trusted_keys or os.environ.get(signing.TRUSTED_KEYS_ENV) else []
  signer = signing.check(path, actual, bytes(data[expected:]) if signed else None, trusted, require_signature)
  return data[:expected], ArtifactFacts(version, header_nbytes, weights_offset, weights_nbytes, size, stored.hex(), signer)


def artifact_facts(path: str | os.PathLike) -> ArtifactFacts:
  """The verified fixed-size facts of an artifact (format version, sizes, sha256, signer)."""
  return _verified(os.fspath(path))[1]


def _field(name: str, read):
  """read() of header field `name`, any failure of the reader (a null pointer, bad UTF-8, a list past the traversal
  limit, an unknown union member) an ArtifactError naming the field."""
  try: return read()
  except ArtifactError: raise
  except (capnp.KjException, RuntimeError, UnicodeDecodeError, ValueError, TypeError, AttributeError, IndexError,
          OverflowError, KeyError) as e:
    raise _HeaderError(f"field {name}: {getattr(e, 'description', None) or e}") from None


class _HeaderError(Exception):
  pass


def _enum(name: str, read, names: tuple[str, ...]) -> str:
  value = _field(name, lambda: str(read()))
  if value not in names: raise _HeaderError(f"field {name}: {value!r} is not one of {', '.join(names)}")
  return value


def _spec_from(msg, weights: memoryview) -> ProgramSpec:
  def tensors(field: str) -> list[TensorSpec]:
    out = []
    for i, t in enumerate(_field(field, lambda: list(getattr(msg, field)))):
      at = f"{field}[{i}]"
      out.append(TensorSpec(_field(f"{at}.name", lambda: str(t.name)), _field(f"{at}.shape", lambda: tuple(t.shape)),
                            _field(f"{at}.dtype", lambda: str(t.dtype)), _field(f"{at}.buffer", lambda: int(t.buffer))))
    return out

  buffers = []
  for i, b in enumerate(_field("buffers", lambda: list(msg.buffers))):
    at = f"buffers[{i}]"
    kind = _enum(f"{at}.kind", lambda: b.kind, BUFFER_KINDS)
    image = (_enum(f"{at}.imageFormat", lambda: b.imageFormat, ("none", *IMAGE_FORMATS)),
             _field(f"{at}.imageWidth", lambda: int(b.imageWidth)), _field(f"{at}.imageHeight", lambda: int(b.imageHeight)))
    if kind != "image" and image != ("none", 0, 0): raise _HeaderError(f"field {at}: a {kind} buffer with image fields")
    buffers.append(BufferSpec(kind, _field(f"{at}.offset", lambda: int(b.offset)), _field(f"{at}.nbytes", lambda: int(b.nbytes)),
                              *(image if kind == "image" else ("", 0, 0)),
                              _field(f"{at}.planeBytes", lambda: int(b.planeBytes)),
                              _field(f"{at}.planePitch", lambda: int(b.planePitch))))
  kernels = []
  for n, k in enumerate(_field("kernels", lambda: list(msg.kernels))):
    at = f"kernels[{n}]"
    args = []
    for j, a in enumerate(_field(f"{at}.args", lambda: list(k.args))):
      kind = _enum(f"{at}.args[{j}]", lambda: a.which(), ARG_KINDS)
      args.append((kind, _field(f"{at}.args[{j}].{kind}", lambda: getattr(a, kind))))
    candidates = []
    for j, c in enumerate(_field(f"{at}.candidates", lambda: list(k.candidates))):
      cat = f"{at}.candidates[{j}]"
      candidates.append(CandidateSpec(_field(f"{cat}.source", lambda: str(c.source)),
                                      _field(f"{cat}.globalSize", lambda: tuple(c.globalSize)),
                                      _field(f"{cat}.localSize", lambda: tuple(c.localSize)) or None))
    kernels.append(KernelSpec(_field(f"{at}.name", lambda: str(k.name)), _field(f"{at}.globalSize", lambda: tuple(k.globalSize)),
                              _field(f"{at}.localSize", lambda: tuple(k.localSize)) or None, args,
                              _field(f"{at}.flops", lambda: int(k.flops)), _field(f"{at}.bytes", lambda: int(k.bytes)),
                              candidates, _field(f"{at}.withPrevious", lambda: bool(k.withPrevious))))
  choices = [ChoiceSpec(_field(f"choices[{i}].device", lambda: str(c.device)),
                        _field(f"choices[{i}].driver", lambda: str(c.driver)),
                        _field(f"choices[{i}].picks", lambda: [int(p) for p in c.picks]))
             for i, c in enumerate(_field("choices", lambda: list(msg.choices)))]
  return ProgramSpec(
    target=_field("target", lambda: str(msg.target)), compiler_version=_field("compilerVersion", lambda: str(msg.compilerVersion)),
    source=_field("source", lambda: str(msg.source)), build_options=_field("buildOptions", lambda: str(msg.buildOptions)),
    inputs=tensors("inputs"), outputs=tensors("outputs"), buffers=buffers, kernels=kernels,
    arena_size=_field("arenaSize", lambda: int(msg.arenaSize)), align=_field("align", lambda: int(msg.align)), weights=weights,
    choices=choices)


def read_artifact(path: str | os.PathLike, trusted_keys=None, require_signature: bool = False,
                  max_tensor_bytes: int | None = None) -> ProgramSpec:
  """Verify, parse and validate an artifact. The weights are a read-only memoryview of the bytes read (a private copy
  of the file: nothing maps it). `trusted_keys` (Ed25519 public keys: PEM files, PEM bytes or raw 32 bytes; with those
  named in EDGEML_TRUSTED_KEYS) are the signers accepted; with `require_signature` an unsigned artifact is refused.
  `max_tensor_bytes` caps each input and output (default EDGEML_MAX_TENSOR_BYTES, else 256 MiB)."""
  path = os.fspath(path)
  data, facts = _verified(path, trusted_keys, require_signature)
  header = bytes(data[PREFIX.size:PREFIX.size + facts.header_nbytes])
  weights = data[facts.weights_offset:facts.weights_offset + facts.weights_nbytes]
  try:
    # each header word is read about once; the margin covers lists read twice
    with schema.Program.from_bytes(header, traversal_limit_in_words=4 * (len(header) // 8) + 64) as msg:
      spec = _spec_from(msg, weights)
  except _HeaderError as e: raise ArtifactError(f"{path}: corrupt header at offset {PREFIX.size}: {e}") from None
  except (capnp.KjException, RuntimeError, ValueError, TypeError) as e:
    raise ArtifactError(f"{path}: corrupt header at offset {PREFIX.size}: {getattr(e, 'description', None) or e}") from None
  validate(spec, path, max_tensor_bytes)
  return spec
