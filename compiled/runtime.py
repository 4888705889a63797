"""Runs a compiled artifact: open, verify, allocate, build, run, time.

`load` reads and verifies the artifact and picks a device of its target. `Program` then allocates everything once
(the arena and the weights as one device buffer each, the buffers of the plan as sub-buffers of them, one buffer and
one host array per input and output), builds the single OpenCL program (cached, see compiled/device.py), binds every
kernel's arguments, and runs the kernel list once so the driver generates its machine code now, not in the first frame.
Where the artifact records a choice for this device (edgeml-tune, compiled/variants.py) the program is built with the
chosen candidates spliced in; elsewhere with the artifact's own source. `load` also looks for the program binary in
the folder `PATH.cache/` beside the artifact (where edgeml-tune leaves it) before the user's cache.
A frame copies inputs in, enqueues the fixed kernel list, copies outputs out and finishes the queue once; each run of
small kernels the compiler marked is one launch (compiled/chain.py), and `kernels` lists the launches. On a
device that shares the host's memory (a CPU, an integrated GPU: CL_DEVICE_HOST_UNIFIED_MEMORY) the kernels read each
input where it lies instead, through a buffer over the caller's array (CL_MEM_USE_HOST_PTR): no copy.
"""
import os
import time
from dataclasses import replace

import numpy as np
import pyopencl as cl

from compiled.artifact import ArtifactError, BufferSpec, KernelSpec, ProgramSpec, read_artifact, validate
from compiled.chain import launches
from compiled.debug import DEBUG, kernel_line, say
from compiled.device import Device, DeviceError, default_device, list_devices
from compiled.targets import target_of
from compiled.variants import choice_for, device_key, variant

SCALARS = {"int32": np.int32, "float32": np.float32}
IMAGE_CHANNEL_TYPES = {"float32": cl.channel_type.FLOAT, "float16": cl.channel_type.HALF_FLOAT}


class InputError(ValueError):
  """Feeds or names that do not match the program's inputs and outputs."""


def _device_for(spec: ProgramSpec, path: str, device: Device | None, allow_target_mismatch: bool) -> Device:
  """The given device, else the default one, else (EDGEML_DEVICE unset) the first device of the artifact's target."""
  if device is None:
    device = default_device()
    if device.target.name != spec.target and not os.environ.get("EDGEML_DEVICE"):
      device = next((Device(d) for d in list_devices() if target_of(d).name == spec.target), device)
  if device.target.name != spec.target and not allow_target_mismatch:
    raise ArtifactError(f"{path}: compiled for target {spec.target!r}, but the device is {device.name} (target "
                        f"{device.target.name!r}); compile for this target, choose another device with EDGEML_DEVICE, "
                        f"or pass allow_target_mismatch=True to run it anyway")
  return device


def load(path: str | os.PathLike, device: Device | None = None, allow_target_mismatch: bool = False,
         trusted_keys=None, require_signature: bool = False, max_tensor_bytes: int | None = None) -> "Program":
  """Open and verify the artifact at `path` and make it ready to run on `device` (default: one of its target).
  `trusted_keys` (Ed25519 public keys: PEM files, PEM bytes or raw 32 bytes; with the files in EDGEML_TRUSTED_KEYS)
  are the signers accepted; `require_signature` refuses unsigned artifacts; `max_tensor_bytes` caps each input and
  output (default EDGEML_MAX_TENSOR_BYTES, else 256 MiB). Anything wrong with the file is an ArtifactError."""
  spec = read_artifact(path, trusted_keys, require_signature, max_tensor_bytes)
  beside = None if require_signature else cache_beside(path)   # a binary beside it is not covered by the signature
  return Program(spec, _device_for(spec, os.fspath(path), device, allow_target_mismatch), name=os.fspath(path),
                 max_tensor_bytes=max_tensor_bytes, validated=True, beside=beside)


def cache_beside(path: str | os.PathLike) -> str:
  """The folder beside an artifact where edgeml-tune leaves program binaries: PATH.cache"""
  return os.fspath(path) + ".cache"


class Program:
  """A compiled program on one device with everything allocated, built and bound.

  run(feeds) -> {name: array} and run(output_names | None, feeds) -> [array] copy in and out. The allocation-free path:
  fill input_buffer(name) in place, execute(), read output_buffer(name) (a view, overwritten by the next execute).
  """
  def __init__(self, spec: ProgramSpec, device: Device, name: str = "program", max_tensor_bytes: int | None = None,
               validated: bool = False, beside: str | None = None, save_beside: bool = False, picks: list[int] | None = None):
    """`beside`/`save_beside`: a folder for the program binary (Device.build); `picks`: the candidate of each kernel
    (default: the artifact's choice for this device, else the kernels themselves)."""
    self.name, self.device = name, device
    if not validated: validate(spec, name, max_tensor_bytes)  # the whole structure, before anything is allocated
    if picks is None:
      choice = choice_for(spec, device_key(device.dev))
      picks = choice.picks if choice is not None else [0] * len(spec.kernels)
    self.picks = list(picks)
    source, kernels = variant(spec, self.picks) if any(self.picks) else (spec.source, spec.kernels)
    group = min(device.target.work_group, device.dev.max_work_group_size)   # of a chain of small kernels
    self.source, kernels, self._chains = launches(source, kernels, group)
    self._beside, self._save_beside = beside, save_beside
    self._check_device_limits(spec, kernels)
    try: self._setup(spec, kernels)
    except cl.Error as e: raise ArtifactError(f"{name}: {device.name} refused the program: {e}") from None

  def _setup(self, spec: ProgramSpec, kernels: list[KernelSpec]) -> None:
    """Allocate, build, bind and warm up (pyopencl errors are turned into an ArtifactError by __init__)."""
    self.inputs, self.outputs = spec.inputs, spec.outputs
    self._buffers = self._allocate(spec)  # held: a kernel does not keep its argument buffers alive
    try: program = self.device.build(self.source, spec.build_options, self._beside, self._save_beside)
    except DeviceError as e:
      log = str(e).split("--- source ---")[0].strip()[-600:]
      raise ArtifactError(f"{self.name}: the program source does not build on {self.device.name}: {log}") from None
    bound = [self._bind(program, k) for k in kernels]
    self.kernels, self._launches = [k for k, _ in bound], [launch for _, launch in bound]
    self._events: list[cl.Event | None] = [None] * len(self._launches)
    self._host_inputs = {t.name: np.zeros(t.shape, t.dtype) for t in self.inputs}
    self._host_outputs = {t.name: np.zeros(t.shape, t.dtype) for t in self.outputs}
    self._uploads = [(t.name, self._buffers[t.buffer], self._host_inputs[t.name]) for t in self.inputs]
    self._readers = {t.name: [(launch[0], i) for launch, k in zip(self._launches, self.kernels)
                              for i, (kind, value) in enumerate(k.args) if kind == "buffer" and value == t.buffer]
                     for t in self.inputs}   # input name -> (kernel, argument index) of every read of it
    self._in_place = bool(self.device.dev.host_unified_memory)
    self._fed: list[cl.Buffer] = []   # buffers over the caller's arrays, held until no kernel is bound to them
    self._downloads = [(self._host_outputs[t.name], self._buffers[t.buffer]) for t in self.outputs]
    self.execute()  # warm-up: machine code is generated at each kernel's first enqueue

  def _check_device_limits(self, spec: ProgramSpec, kernels: list[KernelSpec]) -> None:
    """Every allocation and launch within what the device allows (CL_DEVICE_MAX_*), before anything is allocated."""
    dev = self.device.dev
    def refuse(problem: str): raise ArtifactError(f"{self.name}: {problem}, more than {self.device.name} allows")
    sizes = [("arena_size", spec.arena_size), ("the weights", len(spec.weights))]
    sizes += [(f"buffer {i} ({b.kind})", b.nbytes) for i, b in enumerate(spec.buffers) if b.kind in ("input", "output")]
    for what, n in sizes:
      if n > dev.max_mem_alloc_size: refuse(f"{what} is {n} bytes (CL_DEVICE_MAX_MEM_ALLOC_SIZE {dev.max_mem_alloc_size})")
    for n, k in enumerate(kernels):
      what = f"kernel {n} ({k.name!r})"
      if len(k.global_size) > dev.max_work_item_dimensions:
        refuse(f"{what} has {len(k.global_size)} dimensions (CL_DEVICE_MAX_WORK_ITEM_DIMENSIONS {dev.max_work_item_dimensions})")
      if any(g >= 1 << dev.address_bits for g in k.global_size): refuse(f"{what} global size {list(k.global_size)}")
      if k.local_size:
        if int(np.prod(k.local_size)) > dev.max_work_group_size:
          refuse(f"{what} local size {list(k.local_size)} (CL_DEVICE_MAX_WORK_GROUP_SIZE {dev.max_work_group_size})")
        if any(v > m for v, m in zip(k.local_size, dev.max_work_item_sizes)):
          refuse(f"{what} local size {list(k.local_size)} (CL_DEVICE_MAX_WORK_ITEM_SIZES {list(dev.max_work_item_sizes)})")

  def _allocate(self, spec: ProgramSpec) -> list[cl.Buffer]:
    """One device buffer per plan entry; arena and weights entries are sub-buffers of one arena, one weights buffer."""
    need = self.device.dev.mem_base_addr_align // 8
    if spec.align % need:
      raise ArtifactError(f"{self.name}: offsets are aligned to {spec.align} bytes, but {self.device.name} needs "
                          f"sub-buffers aligned to {need} bytes (CL_DEVICE_MEM_BASE_ADDR_ALIGN); "
                          f"compile with align={need}")
    # held for the program's life: PoCL 3.1 does not keep a parent buffer alive for its sub-buffers
    blob = np.frombuffer(spec.weights, np.uint8)
    self._parents = parents = {"arena": self.device.alloc(spec.arena_size)}
    if any(b.kind == "weights" for b in spec.buffers): parents["weights"] = self.device.upload(blob)
    return [self._image(b, blob) if b.kind == "image" else
            parents[b.kind].get_sub_region(b.offset, b.nbytes) if b.kind in parents and b.nbytes
            else self.device.alloc(b.nbytes) for b in spec.buffers]

  def _image(self, b: BufferSpec, blob: np.ndarray) -> cl.Image:
    """A read-only RGBA image2d of weights, copied from its blob region (image_height rows of `pitch` bytes)."""
    dev = self.device.dev
    if not dev.image_support or b.image_width > dev.image2d_max_width or b.image_height > dev.image2d_max_height:
      raise ArtifactError(f"{self.name}: {self.device.name} cannot hold a {b.image_width}x{b.image_height} image "
                          f"(image support {bool(dev.image_support)}, at most {dev.image2d_max_width}x"
                          f"{dev.image2d_max_height})")
    fmt = cl.ImageFormat(cl.channel_order.RGBA, IMAGE_CHANNEL_TYPES[b.image_format])
    return cl.create_image(self.device.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, fmt,
                           shape=(b.image_width, b.image_height), pitches=(b.pitch,),
                           hostbuf=blob[b.offset:b.offset + b.nbytes])

  def _bind(self, program: cl.Program, k: KernelSpec) -> tuple[KernelSpec, tuple]:
    """The launch, and a kernel object of its own (arguments are kernel state) with every argument set and its launch
    sizes. A chain's work-group shrinks to what the device allows for its kernel."""
    try: kernel = cl.Kernel(program, k.name)
    except cl.Error as e: raise ArtifactError(f"{self.name}: kernel {k.name!r} is not in the program source") from e
    if kernel.num_args != len(k.args):
      raise ArtifactError(f"{self.name}: kernel {k.name!r} takes {kernel.num_args} arguments, "
                          f"the artifact gives {len(k.args)}")
    group = kernel.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, self.device.dev)
    if k.name in self._chains and k.local_size[0] > group: k = replace(k, global_size=(group,), local_size=(group,))
    if k.local_size and int(np.prod(k.local_size)) > group:
      raise ArtifactError(f"{self.name}: kernel {k.name!r} local size {list(k.local_size)} is more than its "
                          f"CL_KERNEL_WORK_GROUP_SIZE {group} on {self.device.name}")
    for i, (kind, value) in enumerate(k.args):
      kernel.set_arg(i, self._buffers[value] if kind == "buffer" else SCALARS[kind](value))
    return k, (kernel, k.global_size, k.local_size)

  # ---- run ------------------------------------------------------------------------------------------------------

  def input_buffer(self, name: str) -> np.ndarray:
    """The host array `execute` copies to the device input `name`: fill it in place."""
    return self._lookup(self._host_inputs, name, "input")

  def output_buffer(self, name: str) -> np.ndarray:
    """The host array `execute` copies the device output `name` into."""
    return self._lookup(self._host_outputs, name, "output")

  def device_buffer(self, name: str) -> cl.Buffer:
    """The device buffer of input or output `name`, for the caller's own kernels and copies on the same queue."""
    t = self._lookup({t.name: t for t in (*self.inputs, *self.outputs)}, name, "input or output")
    return self._buffers[t.buffer]

  def feed_on_device(self, name: str) -> None:
    """From now on execute() leaves input `name` alone: the caller fills its device_buffer (a warp kernel, a copy of
    a recurrent output) before each execute, in the same queue."""
    self._lookup(self._host_inputs, name, "input")
    buf = self.device_buffer(name)
    self._uploads = [(n, b, host) for n, b, host in self._uploads if b is not buf]
    for kernel, i in self._readers[name]: kernel.set_arg(i, buf)

  def execute(self) -> None:
    """One frame on the preallocated buffers: inputs in, every kernel, outputs out, one finish. Allocates no arrays."""
    self._execute(None)

  def _execute(self, feeds: dict | None) -> None:
    """`feeds` (checked by run): arrays read or uploaded in place of the input host arrays (no copy in between)."""
    start = time.perf_counter() if DEBUG else 0.0
    queue, held = self.device.queue, len(self._fed)
    for name, buf, host in self._uploads:
      array = host if feeds is None else feeds[name]
      if self._in_place and array.nbytes: self._fed.append(self._read_in_place(name, array))
      else: cl.enqueue_copy(queue, buf, array, is_blocking=False)
    for i, (kernel, global_size, local_size) in enumerate(self._launches):
      self._events[i] = cl.enqueue_nd_range_kernel(queue, kernel, global_size, local_size)
    for host, buf in self._downloads: cl.enqueue_copy(queue, host, buf, is_blocking=False)
    queue.finish()
    del self._fed[:held]   # the last frame's buffers over the caller's arrays: no kernel reads them any more
    if DEBUG: self._say_frame(time.perf_counter() - start)

  def _read_in_place(self, name: str, array: np.ndarray) -> cl.Buffer:
    """Binds the kernels reading input `name` to a buffer over `array` itself (read where it lies, no copy; the
    array must stay unchanged until the frame finishes, as it does in execute and run)."""
    buf = cl.Buffer(self.device.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.USE_HOST_PTR, hostbuf=array)
    for kernel, i in self._readers[name]: kernel.set_arg(i, buf)
    return buf

  def _say_frame(self, wall: float) -> None:
    """EDGEML_DEBUG=2: a line per kernel of the frame just run; >= 1: the frame's line."""
    if DEBUG >= 2:
      for k, begin, end in self.last_kernel_times():
        say(kernel_line(k.name, k.global_size, k.local_size, (end - begin) * 1e-9, k.flops, k.bytes))
    say(f"{self.name}: {len(self.kernels)} kernels, {wall * 1e3:.3f} ms wall, {self.last_gpu_time * 1e3:.3f} ms on "
        f"the device")

  def run(self, *args):
    """run(feeds) -> {output name: array}, or onnxruntime's run(output_names or None, feeds) -> [array, ...]. A program
    with one input also takes the array itself as `feeds`."""
    if len(args) not in (1, 2): raise TypeError("use run(feeds) or run(output_names, feeds)")
    feeds = args[-1]
    if not isinstance(feeds, dict):
      if len(self.inputs) != 1: self._refuse(f"feeds must be a dict of {len(self.inputs)} inputs, not {type(feeds).__name__}")
      feeds = {self.inputs[0].name: feeds}
    self._execute(self._checked(feeds))
    if len(args) == 1: return {name: host.copy() for name, host in self._host_outputs.items()}
    return [self.output_buffer(name).copy() for name in (args[0] or self._host_outputs)]

  def _checked(self, feeds: dict) -> dict:
    """`feeds` as C-contiguous arrays, when they are exactly the program's input names, shapes and dtypes (no casts)."""
    missing = [t.name for t in self.inputs if t.name not in feeds]
    extra = [name for name in feeds if name not in self._host_inputs]
    if missing or extra:
      self._refuse(", ".join(f"{what} inputs {names}" for what, names in (("missing", missing), ("unknown", extra))
                             if names))
    checked = {}
    for t in self.inputs:
      value = checked[t.name] = np.asarray(feeds[t.name], order="C")   # keeps a 0-d array 0-d
      if value.shape != tuple(t.shape) or value.dtype != np.dtype(t.dtype):
        self._refuse(f"input {t.name!r} is {value.dtype}{list(value.shape)}")
    return checked

  # ---- time -----------------------------------------------------------------------------------------------------

  @property
  def last_gpu_time(self) -> float:
    """Seconds the kernels of the last execute spent on the device (profiling events; transfers not counted)."""
    return sum(e.profile.end - e.profile.start for e in self._events) * 1e-9

  def last_kernel_times(self) -> list[tuple[KernelSpec, int, int]]:
    """(kernel, start ns, end ns) of every kernel of the last execute, in launch order (device clock)."""
    return [(k, e.profile.start, e.profile.end) for k, e in zip(self.kernels, self._events)]

  def profile(self, n: int = 10) -> list[tuple[str, tuple[int, ...], float]]:
    """(kernel name, global size, median seconds over `n` executes) for every kernel, in launch order."""
    times = np.empty((n, len(self._events)))
    for row in times:
      self.execute()
      row[:] = [e.profile.end - e.profile.start for e in self._events]
    return [(k.name, k.global_size, float(s)) for k, s in zip(self.kernels, np.median(times, axis=0) * 1e-9)]

  # ---- messages -------------------------------------------------------------------------------------------------

  def _refuse(self, problem: str):
    signature = ", ".join(f"{t.name!r}: {t.dtype}{list(t.shape)}" for t in self.inputs)
    raise InputError(f"{self.name}: {problem}; the program takes {signature}")

  def _lookup(self, arrays: dict, name: str, role: str) -> np.ndarray:
    if name not in arrays: raise InputError(f"{self.name}: no {role} named {name!r}; the {role}s are {list(arrays)}")
    return arrays[name]
