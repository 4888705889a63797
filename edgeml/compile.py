"""Ahead-of-time compile: a graph of Tensors with placeholder inputs becomes a ProgramSpec (compiled/artifact.py):
one OpenCL program, the fixed kernel list, the buffer plan and the weights.

Kernels that read only weights are run here, once, and their results stored as weights (constant folding)."""
from __future__ import annotations
import numpy as np
import edgeml
from compiled.artifact import IMAGE_FORMATS, IMAGE_PITCH_ALIGN, BufferSpec, KernelSpec, ProgramSpec, TensorSpec
from compiled.device import default_device
from compiled.targets import TARGETS, Target
from edgeml.candidates import Recorder
from edgeml.codegen import kernel_name, program_source, render
from edgeml.lazy import Node
from edgeml.memplan import Interval, plan_arena, liveness_lower_bound
from edgeml.ops import Op
from edgeml.realize import realize
from edgeml.schedule import schedule
from edgeml.tensor import Tensor
from edgeml.tune import Tuner

IMAGE_WIDTH = 4096            # texels per image row at most (Adreno and PoCL allow 16384)
IMAGE_MAX_HEIGHT = 16384      # rows; weights that need more stay a plain buffer


def placeholder(name: str, shape, dtype=np.float32) -> Tensor:
  """A graph input: shape and dtype known, data given at run time."""
  return Tensor(Node(Op.BUFFER, (), name, tuple(shape), np.dtype(dtype)))


def _is_placeholder(n: Node) -> bool:
  return n.op is Op.BUFFER and n.buffer is None


def _output_nodes(outputs: dict) -> list[Node]:
  """Each output computed by a kernel into a buffer of its own."""
  nodes = []
  for t in outputs.values():
    n = t.node
    if n.op is Op.BUFFER or any(n is m for m in nodes): n = Node(Op.CONTIGUOUS, (n,), None, n.shape, n.dtype)
    nodes.append(n)
  return nodes


def fold_constants(outputs: list[Node]) -> int:
  """Run every kernel that depends on no input now; returns how many ran."""
  dynamic, constant = set(), []
  for it in schedule(outputs):
    if any(_is_placeholder(n) or id(n) in dynamic for n in it.loads): dynamic.add(id(it.out))
    else: constant.append(it.out)
  if constant: realize(constant)
  return len(constant)


def image_layout(data: bytes, dtype: np.dtype) -> tuple[int, int, int, bytes]:
  """(width, height, pitch, bytes) of `data` as an RGBA image of 4 consecutive elements per texel: rows of `width`
  texels, each padded with zeros to `pitch` bytes (a multiple of IMAGE_PITCH_ALIGN)."""
  texel = 4 * dtype.itemsize
  texels = max(-(-len(data) // texel), 1)
  width = min(IMAGE_WIDTH, texels)
  height = -(-texels // width)
  row = width * texel
  pitch = -(-row // IMAGE_PITCH_ALIGN) * IMAGE_PITCH_ALIGN
  out = bytearray(height * pitch)
  for y in range(height):
    chunk = data[y * row:(y + 1) * row]
    out[y * pitch:y * pitch + len(chunk)] = chunk
  return width, height, pitch, bytes(out)


class Compiled:
  """What compile_graph made, with the numbers the compile prints."""
  def __init__(self, spec: ProgramSpec, folded: int, planned: int, unplanned: int, lower_bound: int):
    self.spec, self.folded, self.planned, self.unplanned, self.lower_bound = spec, folded, planned, unplanned, lower_bound


def store_weights_as_half(outputs: list[Node]) -> int:
  """Every float32 weight the graph reads becomes float16 in memory, read back as float32 by the kernels (half the
  bytes; the math stays float32). Returns how many weights changed."""
  dev, seen, stack, count = default_device(), set(), list(outputs), 0
  while stack:
    n = stack.pop()
    if id(n) in seen: continue
    seen.add(id(n))
    if n.op is Op.BUFFER and n.buffer is not None and n.dtype == np.float32:
      half = Node(Op.BUFFER, (), None, n.shape, np.float16)
      half.set_buffer(dev.upload(dev.download(n.buffer, n.shape, n.dtype).astype(np.float16)))
      n.op, n.src, n.buffer = Op.CAST, (half,), None      # every reader now sees float16 storage cast up
      count += 1
    stack.extend(n.src)
  return count


def resolve_target(name: str) -> Target:
  """The entry of compiled.targets.TARGETS named `name`; 'auto' is the target of the default device."""
  if name == "auto": return default_device().target
  if name not in TARGETS: raise ValueError(f"unknown target {name!r}; choose auto or one of {', '.join(TARGETS)}")
  return TARGETS[name]


def compile_graph(inputs: dict[str, Tensor], outputs: dict[str, Tensor], target: str = "auto", tune: bool = False,
                  fp16: bool = False, log=None) -> Compiled:
  """Compile for `target` (a name in compiled.targets.TARGETS, or 'auto': the default device's). With `tune`, each
  sizeable kernel's variants are timed on the default device and the fastest kept; with `fp16`, weights are stored
  as float16."""
  target = resolve_target(target)
  for name, t in inputs.items():
    if not _is_placeholder(t.node): raise ValueError(f"input {name!r} is not a placeholder (use edgeml.compile.placeholder)")
  out_nodes = _output_nodes(outputs)
  folded = fold_constants(out_nodes)
  out_nodes = _output_nodes({k: Tensor(n) for k, n in zip(outputs, out_nodes)})
  if fp16: store_weights_as_half(out_nodes)
  items = schedule(out_nodes)

  buffers: list[BufferSpec] = []
  buffer_of: dict[int, int] = {}

  def add(node: Node, kind: str, offset: int = 0) -> int:
    buffer_of[id(node)] = len(buffers)
    buffers.append(BufferSpec(kind, offset, node.nbytes))
    return buffer_of[id(node)]

  in_specs = [TensorSpec(name, t.shape, t.dtype.name, add(t.node, "input")) for name, t in inputs.items()]
  out_specs = [TensorSpec(name, n.shape, n.dtype.name, add(n, "output")) for name, n in zip(outputs, out_nodes)]

  blob, dev, images = bytearray(), default_device(), {}   # images: id(weights node) -> width in texels
  for it in items:
    for n in it.loads:
      if n.op is Op.BUFFER and id(n) not in buffer_of:
        if n.buffer is None: raise ValueError(f"graph reads placeholder {n.arg!r} that is not among the inputs {list(inputs)}")
        data = dev.download(n.buffer, n.shape, np.uint8 if n.dtype.kind == "b" else n.dtype).tobytes()
        blob += bytes(-len(blob) % target.align)
        if target.image_weights and n.dtype.name in IMAGE_FORMATS:
          width, height, pitch, rows = image_layout(data, n.dtype)
          if height <= IMAGE_MAX_HEIGHT:
            buffer_of[id(n)], images[id(n)] = len(buffers), width
            buffers.append(BufferSpec("image", len(blob), len(rows), n.dtype.name, width, height))
            blob += rows
            continue
        add(n, "weights", len(blob))
        blob += data

  producer = {id(it.out): i for i, it in enumerate(items)}
  last_use = {}
  for i, it in enumerate(items):
    for n in it.loads: last_use[id(n)] = i
  arena_nodes = [it.out for it in items if id(it.out) not in buffer_of]
  intervals = [Interval(n.nbytes, producer[id(n)], last_use.get(id(n), producer[id(n)])) for n in arena_nodes]
  offsets, arena_size = plan_arena(intervals, target.align)
  for n, off in zip(arena_nodes, offsets): add(n, "arena", off)

  choose = Tuner(dev, log) if tune else None
  record = Recorder(choose)   # keeps each kernel's other variants for on-device tuning (edgeml/candidates.py)
  kernels = [render(it, name=f"k{i}_{kernel_name(it)}", choose=record, images=images, target=target)
             for i, it in enumerate(items)]
  source = program_source(kernels)
  specs = [KernelSpec(k.name, k.global_size, k.local_size,
                      [("buffer", buffer_of[id(k.out)])] + [("buffer", buffer_of[id(n)]) for n in k.loads], k.flops, k.bytes,
                      record.candidates(k, source))
           for k in kernels]
  spec = ProgramSpec(target=target.name, compiler_version=edgeml.__version__, source=source,
                     build_options=target.build_options, inputs=in_specs, outputs=out_specs, buffers=buffers,
                     kernels=specs, arena_size=arena_size, align=target.align, weights=bytes(blob))
  return Compiled(spec, folded, arena_size, sum(iv.nbytes for iv in intervals),
                  liveness_lower_bound(intervals, target.align))
