"""The artifact: a compiled program as one file, and the dataclasses that describe it.

File layout (integers little-endian):

    magic (8 bytes) | u32 format version | u64 header length | u64 weights length
    | header (Cap'n Proto, compiled/artifact.capnp) | zero padding to a multiple of 64
    | weights blob | sha256 of every byte before it (32 bytes)

Reading checks the magic, the version, the length fields and the checksum before it parses a byte of the header, then
checks the spec's own invariants (`validate`). Writing goes to a temporary file that is renamed into place, so a failed
write never leaves a half-written artifact. The same spec always gives the same bytes. No pickle anywhere.
"""
import hashlib
import mmap
import os
import struct
from dataclasses import dataclass
from compiled.atomic import write_atomic
from compiled.targets import TARGETS

import capnp
import numpy as np

MAGIC = b"EDGEML\0\1"  # fixed forever; the format version is the field after it
FORMAT_VERSION = 1
PREFIX = struct.Struct("<8sIQQ")  # magic, format version, header length, weights length
BLOB_ALIGN = 64
DIGEST = 32
ARG_KINDS = ("buffer", "int32", "float32")
BUFFER_KINDS = ("arena", "weights", "input", "output", "image")
IMAGE_FORMATS = {"float32": 16, "float16": 8}  # image_format -> bytes per RGBA texel
IMAGE_PITCH_ALIGN = 64  # bytes; image rows start at multiples of this
IMAGE_MAX_SIDE = 65535  # imageWidth and imageHeight are UInt16 in the header

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

  @property
  def pitch(self) -> int:
    """Bytes per image row (0 for other kinds)."""
    return self.nbytes // self.image_height if self.kind == "image" and self.image_height else 0


@dataclass
class KernelSpec:
  name: str  # entry point in ProgramSpec.source, unique
  global_size: tuple[int, ...]
  local_size: tuple[int, ...] | None
  args: list[tuple[str, int | float]]  # ('buffer', buffer id) | ('int32', v) | ('float32', v)
  flops: int
  bytes: int


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


@dataclass
class ArtifactFacts:
  """What the fixed-size parts of a file say: for inspect."""
  format_version: int
  header_nbytes: int
  weights_offset: int
  weights_nbytes: int
  file_nbytes: int
  sha256: str


def _padded(n: int) -> int:
  return -(-n // BLOB_ALIGN) * BLOB_ALIGN


# ---- invariants --------------------------------------------------------------------------------------------------

def validate(spec: ProgramSpec, where: str = "spec") -> None:
  """Raise ArtifactError (naming `where`) unless every index, offset and size in `spec` is consistent."""
  def fail(problem: str): raise ArtifactError(f"{where}: {problem}")
  if spec.target not in TARGETS: fail(f"unknown target {spec.target!r} (known: {', '.join(TARGETS)})")
  if spec.align < 1: fail(f"align must be positive, got {spec.align}")
  limits = {"arena": spec.arena_size, "weights": len(spec.weights), "image": len(spec.weights)}
  for i, b in enumerate(spec.buffers):
    if b.kind not in BUFFER_KINDS: fail(f"buffer {i} has unknown kind {b.kind!r}")
    if b.kind in limits:
      if b.offset % spec.align: fail(f"buffer {i} ({b.kind}) offset {b.offset} is not a multiple of align {spec.align}")
      if b.offset < 0 or b.nbytes < 0 or b.offset + b.nbytes > limits[b.kind]:
        fail(f"buffer {i} ({b.kind}) bytes {b.offset}..{b.offset + b.nbytes} lie outside the "
             f"{'weights' if b.kind == 'image' else b.kind} ({limits[b.kind]} bytes)")
    elif b.offset: fail(f"buffer {i} ({b.kind}) must have offset 0, got {b.offset}")
    if b.kind == "image":
      if b.image_format not in IMAGE_FORMATS: fail(f"image buffer {i} has unknown format {b.image_format!r}")
      if not (0 < b.image_width <= IMAGE_MAX_SIDE and 0 < b.image_height <= IMAGE_MAX_SIDE):
        fail(f"image buffer {i} has size {b.image_width}x{b.image_height}")
      if b.nbytes % b.image_height or b.pitch % IMAGE_PITCH_ALIGN or b.pitch < b.image_width * IMAGE_FORMATS[b.image_format]:
        fail(f"image buffer {i}: {b.nbytes} bytes in {b.image_height} rows of {b.image_width} {b.image_format} texels "
             f"is not a row pitch that is a multiple of {IMAGE_PITCH_ALIGN} bytes and holds a row")
    elif b.image_format or b.image_width or b.image_height: fail(f"buffer {i} ({b.kind}) has image fields")
  for role, tensors in (("input", spec.inputs), ("output", spec.outputs)):
    if len({t.name for t in tensors}) != len(tensors): fail(f"{role} names are not unique")
    for t in tensors:
      try: dtype = np.dtype(t.dtype)
      except TypeError: dtype = None
      if dtype is None or dtype.name != t.dtype: fail(f"{role} {t.name!r} has dtype {t.dtype!r}, not a numpy dtype name")
      if not 0 <= t.buffer < len(spec.buffers): fail(f"{role} {t.name!r} refers to missing buffer {t.buffer}")
      b = spec.buffers[t.buffer]
      if role == "input" and b.kind != "input": fail(f"input {t.name!r} must live in an input buffer, not {b.kind}")
      if (need := int(np.prod(t.shape, dtype=np.int64)) * dtype.itemsize) != b.nbytes:
        fail(f"{role} {t.name!r} {t.dtype}{list(t.shape)} needs {need} bytes but buffer {t.buffer} has {b.nbytes}")
  if len({k.name for k in spec.kernels}) != len(spec.kernels): fail("kernel names are not unique")
  for k in spec.kernels:
    if not 1 <= len(k.global_size) <= 3: fail(f"kernel {k.name!r} needs 1 to 3 global dimensions")
    if k.local_size is not None and len(k.local_size) != len(k.global_size):
      fail(f"kernel {k.name!r} local size {k.local_size} does not match global size {k.global_size}")
    for kind, value in k.args:
      if kind not in ARG_KINDS: fail(f"kernel {k.name!r} has an argument of unknown kind {kind!r}")
      if kind == "buffer" and not 0 <= value < len(spec.buffers):
        fail(f"kernel {k.name!r} refers to missing buffer {value}")


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
  for k, out in zip(spec.kernels, msg.init("kernels", len(spec.kernels))):
    out.name, out.globalSize, out.localSize = k.name, list(k.global_size), list(k.local_size or ())
    out.flops, out.bytes = k.flops, k.bytes
    for (kind, value), arg in zip(k.args, out.init("args", len(k.args))):
      setattr(arg, kind, value)
  return msg.to_bytes()


def write_artifact(spec: ProgramSpec, path: str | os.PathLike) -> None:
  """Write `spec` to `path` atomically: a temporary file beside it, flushed, then renamed over it."""
  path = os.fspath(path)
  validate(spec, path)
  header, weights = _header(spec), memoryview(spec.weights).cast("B")
  head = PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), len(weights)) + header
  head += bytes(_padded(len(head)) - len(head))
  digest = hashlib.sha256(head)
  digest.update(weights)
  write_atomic(path, head, weights, digest.digest())


# ---- read --------------------------------------------------------------------------------------------------------

def _verified(path: str) -> tuple[memoryview, ArtifactFacts]:
  """Map the file and check magic, version, lengths and checksum; nothing of the header is parsed yet."""
  with open(path, "rb") as f:
    size = os.fstat(f.fileno()).st_size
    if size < PREFIX.size + DIGEST:
      raise ArtifactError(f"{path}: truncated: {size} bytes, less than the {PREFIX.size + DIGEST} of an empty artifact")
    data = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
  magic, version, header_nbytes, weights_nbytes = PREFIX.unpack(data[:PREFIX.size])
  if magic != MAGIC: raise ArtifactError(f"{path}: not an edgeml artifact: magic {magic!r} at offset 0, expected {MAGIC!r}")
  if version > FORMAT_VERSION:
    raise ArtifactError(f"{path}: built by a newer edgeml: format {version}, this runtime reads up to {FORMAT_VERSION}")
  if version < 1: raise ArtifactError(f"{path}: invalid format version {version} at offset 8")
  weights_offset = _padded(PREFIX.size + header_nbytes)
  expected = weights_offset + weights_nbytes + DIGEST
  if size != expected:
    raise ArtifactError(f"{path}: {'truncated' if size < expected else 'trailing data'}: the file has {size} bytes but "
                        f"its length fields (header {header_nbytes} bytes at offset {PREFIX.size}, weights "
                        f"{weights_nbytes} bytes at offset {weights_offset}) make {expected}")
  stored, actual = bytes(data[size - DIGEST:]), hashlib.sha256(data[:size - DIGEST]).digest()
  if stored != actual:
    raise ArtifactError(f"{path}: checksum mismatch (the file is corrupt): sha256 of bytes 0..{size - DIGEST} is "
                        f"{actual.hex()}, the file stores {stored.hex()} at offset {size - DIGEST}")
  return data, ArtifactFacts(version, header_nbytes, weights_offset, weights_nbytes, size, stored.hex())


def artifact_facts(path: str | os.PathLike) -> ArtifactFacts:
  """The verified fixed-size facts of an artifact (format version, sizes, sha256)."""
  return _verified(os.fspath(path))[1]


def _spec_from(msg, weights: memoryview) -> ProgramSpec:
  def tensors(lst): return [TensorSpec(t.name, tuple(t.shape), t.dtype, t.buffer) for t in lst]
  def arg(a):
    kind = str(a.which())
    return kind, getattr(a, kind)
  return ProgramSpec(
    target=msg.target, compiler_version=msg.compilerVersion, source=msg.source, build_options=msg.buildOptions,
    inputs=tensors(msg.inputs), outputs=tensors(msg.outputs),
    buffers=[BufferSpec(str(b.kind), b.offset, b.nbytes,
                        *((str(b.imageFormat), b.imageWidth, b.imageHeight) if str(b.kind) == "image" else ()))
             for b in msg.buffers],
    kernels=[KernelSpec(k.name, tuple(k.globalSize), tuple(k.localSize) or None, [arg(a) for a in k.args],
                        k.flops, k.bytes) for k in msg.kernels],
    arena_size=msg.arenaSize, align=msg.align, weights=weights)


def read_artifact(path: str | os.PathLike) -> ProgramSpec:
  """Verify and parse an artifact. The weights are a read-only memoryview over the mapped file (no copy)."""
  path = os.fspath(path)
  data, facts = _verified(path)
  header = bytes(data[PREFIX.size:PREFIX.size + facts.header_nbytes])
  weights = data[facts.weights_offset:facts.weights_offset + facts.weights_nbytes]
  try:
    # each header word is read about once; the margin covers lists read twice
    with schema.Program.from_bytes(header, traversal_limit_in_words=4 * (len(header) // 8) + 64) as msg:
      spec = _spec_from(msg, weights)
  except capnp.KjException as e:
    raise ArtifactError(f"{path}: corrupt header at offset {PREFIX.size}: {e.description}") from e
  validate(spec, path)
  return spec
