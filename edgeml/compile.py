"""Ahead-of-time compile: a graph of Tensors with placeholder inputs becomes a ProgramSpec (compiled/artifact.py):
one OpenCL program, the fixed kernel list, the buffer plan and the weights.

Kernels that read only weights are evaluated here, once, on the host in numpy (edgeml/host_eval.py), and their
results stored as weights (constant folding). Nothing here needs an OpenCL device unless asked to tune or to find the
target of the device (target 'auto'): an artifact compiled anywhere is the same bytes.

`compile_model` is the whole pipeline behind edgeml-compile (ONNX file to artifact file), timed per stage."""
from __future__ import annotations
import os
import time
from dataclasses import replace
import numpy as np
import edgeml
from compiled.artifact import IMAGE_FORMATS, IMAGE_PITCH_ALIGN, BufferSpec, KernelSpec, ProgramSpec, TensorSpec
from compiled.chain import launch_count, member_problem
from compiled.kernelsig import kernels_of
from compiled.targets import TARGETS, Target
from edgeml.candidates import Recorder
from edgeml.codegen import kernel_name, program_source, render
from edgeml.host_eval import fold, host_data
from edgeml.lazy import Node, contiguous_strides
from edgeml.memplan import Interval, plan_arena, liveness_lower_bound
from edgeml.ops import Op
from edgeml.schedule import plane_pitch, schedule, stored_bytes
from edgeml.tensor import Tensor

CHAIN_MEMBER_FLOPS = 500_000    # a kernel this small (and CHAIN_MEMBER_BYTES) may run in a chain, on one compute unit
CHAIN_MEMBER_BYTES = 512 << 10
CHAIN_FLOPS = 1_000_000         # a chain's work at most (it runs on one compute unit)
IMAGE_WIDTH = 4096            # texels per image row at most (Adreno and PoCL allow 16384)
IMAGE_MAX_HEIGHT = 16384      # rows; weights that need more stay a plain buffer


def placeholder(name: str, shape, dtype=np.float32) -> Tensor:
  """A graph input: shape and dtype known, data given at run time."""
  return Tensor(Node(Op.BUFFER, (), name, tuple(shape), np.dtype(dtype)))


def _is_placeholder(n: Node) -> bool:
  return n.op is Op.BUFFER and n.buffer is None


def _output_nodes(outputs: dict) -> list[Node]:
  """Each output computed by a kernel into a buffer of its own. An output that reshapes a CONTIGUOUS (a recurrent
  state) is that node: the kernel computing it writes the output buffer (same elements in the same order), and
  nothing copies it there."""
  nodes = []
  for t in outputs.values():
    n = t.node
    while n.op is Op.VIEW and n.size == n.src[0].size and n.arg == (contiguous_strides(n.shape), 0): n = n.src[0]
    if n.op is not Op.CONTIGUOUS or n.src[0].op is Op.BUFFER: n = t.node
    if n.op is Op.BUFFER or any(n is m for m in nodes): n = Node(Op.CONTIGUOUS, (n,), None, n.shape, n.dtype)
    nodes.append(n)
  return nodes


def fold_constants(outputs: list[Node], watch: Stopwatch | None = None) -> int:
  """Evaluate every kernel that depends on no input now, on the host; returns how many there were."""
  dynamic, constant = set(), []
  for it in schedule(outputs):
    if any(_is_placeholder(n) or id(n) in dynamic for n in it.loads): dynamic.add(id(it.out))
    else: constant.append(it)
  if watch: watch.lap("schedule")
  fold(constant)
  if watch: watch.lap("fold")
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
  """What compile_graph made, with the numbers the compile prints; `stages`: stage name -> (wall s, CPU s)."""
  def __init__(self, spec: ProgramSpec, folded: int, planned: int, unplanned: int, lower_bound: int, stages=None):
    self.spec, self.folded, self.planned, self.unplanned, self.lower_bound = spec, folded, planned, unplanned, lower_bound
    self.stages: dict[str, tuple[float, float]] = stages if stages is not None else {}


class Stopwatch:
  """Wall and CPU (time.process_time: what a loaded machine does not inflate) seconds per named stage."""
  def __init__(self, stages: dict):
    self.stages, self.wall, self.cpu = stages, time.perf_counter(), time.process_time()

  def lap(self, name: str) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    w, c = self.stages.get(name, (0.0, 0.0))
    self.stages[name] = (w + wall - self.wall, c + cpu - self.cpu)
    self.wall, self.cpu = wall, cpu


def store_weights_as_half(outputs: list[Node]) -> int:
  """Every float32 weight the graph reads becomes float16 in memory, read back as float32 by the kernels (half the
  bytes; the math stays float32), cast on the host. Returns how many weights changed."""
  seen, stack, count = set(), list(outputs), 0
  while stack:
    n = stack.pop()
    if id(n) in seen: continue
    seen.add(id(n))
    if n.op is Op.BUFFER and n.buffer is not None and n.dtype == np.float32:
      half = Node(Op.BUFFER, (), None, n.shape, np.float16)
      half.set_buffer(host_data(n).astype(np.float16))
      n.op, n.src, n.buffer, n.host = Op.CAST, (half,), None, None   # every reader now sees float16 storage cast up
      count += 1
    stack.extend(n.src)
  return count


def resolve_target(name: str | Target) -> Target:
  """The entry of compiled.targets.TARGETS named `name`; 'auto' is the target of the default device; a Target is
  taken as it is (a variant of an entry, e.g. in tests)."""
  if isinstance(name, Target): return name
  if name == "auto":
    from compiled.device import DeviceError, default_device
    try: return default_device().target
    except DeviceError as e:
      raise ValueError(f"target 'auto' is the target of the OpenCL device, and there is none to use ({e.args[0].splitlines()[0]}); "
                       f"give the target: --target {'|'.join(TARGETS)}") from None
  if name not in TARGETS: raise ValueError(f"unknown target {name!r}; choose auto or one of {', '.join(TARGETS)}")
  return TARGETS[name]


def compile_graph(inputs: dict[str, Tensor], outputs: dict[str, Tensor], target: str = "auto", tune: bool = False,
                  fp16: bool = False, log=None, progress: bool | None = None) -> Compiled:
  """Compile for `target` (a name in compiled.targets.TARGETS, or 'auto': the default device's). With `tune`, each
  sizeable kernel's variants are timed on the default device and the fastest kept; with `fp16`, weights are stored
  as float16. `progress`: a progress bar over the kernels (None: when stderr is a terminal)."""
  stages: dict = {}
  watch = Stopwatch(stages)
  target = resolve_target(target)
  for name, t in inputs.items():
    if not _is_placeholder(t.node): raise ValueError(f"input {name!r} is not a placeholder (use edgeml.compile.placeholder)")
  out_nodes = _output_nodes(outputs)
  folded = fold_constants(out_nodes, watch)
  out_nodes = _output_nodes({k: Tensor(n) for k, n in zip(outputs, out_nodes)})
  if fp16: store_weights_as_half(out_nodes)
  items = schedule(out_nodes)
  outs = {id(n) for n in out_nodes}
  pitches = {id(it.out): p for it in items if id(it.out) not in outs and (p := plane_pitch(it.out))}
  for it in items: it.pitches = pitches   # activations only: inputs, outputs and weights stay row-major
  watch.lap("schedule")

  buffers: list[BufferSpec] = []
  buffer_of: dict[int, int] = {}

  def add(node: Node, kind: str, offset: int = 0) -> int:
    buffer_of[id(node)] = len(buffers)
    if id(node) not in pitches: buffers.append(BufferSpec(kind, offset, node.nbytes))
    else:
      plane, pitch = node.shape[-1] * node.shape[-2] * node.dtype.itemsize, pitches[id(node)] * node.dtype.itemsize
      buffers.append(BufferSpec(kind, offset, stored_bytes(node, pitches[id(node)]), plane_bytes=plane, plane_pitch=pitch))
    return buffer_of[id(node)]

  in_specs = [TensorSpec(name, t.shape, t.dtype.name, add(t.node, "input")) for name, t in inputs.items()]
  out_specs = [TensorSpec(name, outputs[name].shape, n.dtype.name, add(n, "output")) for name, n in zip(outputs, out_nodes)]

  blob, images = bytearray(), {}   # images: id(weights node) -> width in texels
  for it in items:
    for n in it.loads:
      if n.op is Op.BUFFER and id(n) not in buffer_of:
        if n.buffer is None: raise ValueError(f"graph reads placeholder {n.arg!r} that is not among the inputs {list(inputs)}")
        data = np.ascontiguousarray(host_data(n)).tobytes()
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
  intervals = [Interval(items[producer[id(n)]].stored_bytes(n), producer[id(n)], last_use.get(id(n), producer[id(n)]))
               for n in arena_nodes]
  offsets, arena_size = plan_arena(intervals, target.align)
  for n, off in zip(arena_nodes, offsets): add(n, "arena", off)

  watch.lap("plan")
  choose = None
  if tune:
    from compiled.device import DeviceError, default_device
    from edgeml.tune import Tuner
    try: choose = Tuner(default_device(), log)
    except DeviceError as e: raise ValueError(f"tuning times kernels on an OpenCL device, and there is none: {e}") from None
  record = Recorder(choose)   # keeps each kernel's other variants for on-device tuning (edgeml/candidates.py)
  from tqdm import tqdm
  bar = tqdm(items, desc="tuning" if tune else "rendering", unit="kernel", leave=False, dynamic_ncols=True,
             disable=None if progress is None else not progress)   # None: only on a terminal
  kernels = [render(it, name=f"k{i}_{kernel_name(it)}", choose=record, images=images, target=target)
             for i, it in enumerate(bar)]
  bar.close()
  watch.lap("tune+render" if tune else "render")
  source = program_source(kernels)
  specs = [KernelSpec(k.name, k.global_size, k.local_size,
                      [("buffer", buffer_of[id(k.out)])] + [("buffer", buffer_of[id(n)]) for n in k.loads], k.flops, k.bytes,
                      record.candidates(k, source))
           for k in kernels]
  spec = ProgramSpec(target=target.name, compiler_version=edgeml.__version__, source=source,
                     build_options=target.build_options, inputs=in_specs, outputs=out_specs, buffers=buffers,
                     kernels=chain_small_kernels(specs, source, target), arena_size=arena_size, align=target.align,
                     weights=bytes(blob))
  result = Compiled(spec, folded, arena_size, sum(iv.nbytes for iv in intervals),
                    liveness_lower_bound(intervals, target.align), stages)
  watch.lap("plan")
  return result


def chain_small_kernels(kernels: list[KernelSpec], source: str, target: Target) -> list[KernelSpec]:
  """The kernels with each run of small ones marked to launch as one chain (compiled/chain.py): on PoCL such a
  kernel costs the host and the driver as much as it computes, and its chain runs as fast as its kernels one by one
  (a CPU runs a few work-groups at a time anyway). A GPU target keeps every launch: there a chain would run on one
  compute unit what its kernels spread over all of them (grouped reduces group after group), which no GPU has
  measured yet."""
  if target.gpu: return kernels
  declared = kernels_of(source)
  small = [k.flops <= CHAIN_MEMBER_FLOPS and k.bytes <= CHAIN_MEMBER_BYTES and member_problem(k, declared[k.name]) is None
           for k in kernels]
  out, flops = [], 0
  for i, k in enumerate(kernels):
    joins = i > 0 and small[i - 1] and small[i] and flops + k.flops < CHAIN_FLOPS
    flops = flops + k.flops if joins else k.flops
    out.append(replace(k, with_previous=joins))
  return out


def compile_model(model_path: str, out_path: str, shapes: dict | None = None, target: str = "auto", tune: bool = False,
                  fp16: bool = False, log=print, consts: dict | None = None, sign_key=None, progress: bool | None = None):
  """Compile the ONNX file `model_path` and write the artifact to `out_path`; returns the Compiled result, whose
  `stages` hold the wall and CPU seconds of import, schedule, fold, plan, render (or tune+render) and write. Progress
  goes to `log`; `sign_key`: an Ed25519 PEM file (compiled/signing.py)."""
  from compiled.artifact import write_artifact
  from edgeml.onnx import OnnxModel
  resolve_target(target)   # before the import: a target that cannot be had fails first
  stages: dict = {}
  watch = Stopwatch(stages)
  t0 = time.perf_counter()
  model = OnnxModel(model_path, shapes=shapes or {}, consts=consts or {})
  inputs = {name: placeholder(name, shape, dtype) for name, shape, dtype in model.inputs}
  log(f"[1/3] imported {model_path}: inputs {', '.join(f'{n} {s} {d}' for n, s, d in model.inputs)}")
  outputs = model(inputs)
  watch.lap("import")
  if tune: log("      tuning: timing kernel variants on the device (cached for next time)")
  result = compile_graph(inputs, outputs, target=target, tune=tune, fp16=fp16, log=log, progress=progress)
  spec = result.spec
  log(f"[2/3] {len(spec.kernels)} kernels in {launch_count(spec.kernels)} launches ({result.folded} constant kernels folded), "
      f"arena {result.planned:,} B planned for {result.unplanned:,} B of intermediates "
      f"(liveness lower bound {result.lower_bound:,} B, ratio {result.planned / max(result.lower_bound, 1):.2f}), "
      f"weights {len(spec.weights):,} B")
  stages.update(result.stages)
  watch = Stopwatch(stages)
  write_artifact(spec, out_path, sign_key=sign_key)
  watch.lap("write")
  result.stages = stages
  log(f"[3/3] wrote {out_path} ({os.path.getsize(out_path):,} B, target {spec.target}{', fp16 weights' if fp16 else ''}) "
      f"in {time.perf_counter() - t0:.1f} s")
  return result
