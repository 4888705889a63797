"""Compile-time search: time the rendered variants of a kernel on the device and keep the fastest.

Only kernels doing real work are timed (the rest keep the code generator's first choice); each kernel's variants are
built as one program and timed from OpenCL events by compiled.tune.fastest (rounds taking turns over the variants).
Choices are cached on disk by device and sources, so compiling the same model again costs nothing extra.
"""
import hashlib
import json
import os
from dataclasses import replace
import pyopencl as cl
from compiled.atomic import write_atomic
from compiled.device import Device, cache_dir, cache_writable
from compiled.tune import fastest
from edgeml.candidates import MIN_FLOPS
from edgeml.codegen import Kernel, program_source
from edgeml.host_eval import device_buffer

TRIES = 6               # variants timed, in the code generator's order of preference
METHOD = "rounds"       # part of the cache key: choices timed another way are timed again


class Tuner:
  def __init__(self, device: Device, log=None):
    self.device, self.log = device, log
    self.path = os.path.join(cache_dir(), "tune.json")
    try:
      with open(self.path) as f: self.cache = json.load(f)
    except (OSError, ValueError): self.cache = {}
    self.scratch: dict[tuple[int, int], cl.Buffer] = {}

  def __call__(self, kernels: list[Kernel]) -> int:
    if kernels[0].flops < MIN_FLOPS or kernels[0].uses_images: return 0   # image weights: not timed here
    kernels = kernels[:TRIES]
    ident = [METHOD, self.device.name, self.device.dev.driver_version, self.device.dev.platform.version]
    key = hashlib.sha256("\0".join(ident + [k.source for k in kernels]).encode()).hexdigest()
    if key not in self.cache:
      times = self._time(kernels)
      self.cache[key] = min(range(len(kernels)), key=times.__getitem__)
      if self.log: self.log(f"  tuned {kernels[0].name}: " + ", ".join(f"{t * 1e6:.0f}" for t in times) + " us")
      self._save()
    return self.cache[key]

  def _buffer(self, nbytes: int, role: int) -> cl.Buffer:
    """Zero-filled scratch for arguments that have no data at compile time (inputs, intermediates)."""
    if (role, nbytes) not in self.scratch:
      buf = self.device.alloc(nbytes)
      cl.enqueue_fill_buffer(self.device.queue, buf, b"\0\0\0\0", 0, max(nbytes, 4) // 4 * 4)
      self.scratch[(role, nbytes)] = buf
    return self.scratch[(role, nbytes)]

  def _time(self, kernels: list[Kernel]) -> list[float]:
    renamed = [replace(k, name=f"{k.name}_v{i}", source=k.source.replace(f"void {k.name}(", f"void {k.name}_v{i}(", 1))
               for i, k in enumerate(kernels)]
    program = self.device.build(program_source(renamed))
    sizes = kernels[0].arg_bytes
    args = [self._buffer(sizes[0], 0)] + [device_buffer(n) if n.buffer is not None else self._buffer(sizes[i + 1], i + 1)
                                          for i, n in enumerate(kernels[0].loads)]
    launches = []
    for k in renamed:
      kernel = cl.Kernel(program, k.name)
      kernel.set_args(*args)
      launches.append((kernel, k.global_size, k.local_size))
    return fastest(self.device.queue, launches)

  def _save(self):
    if cache_writable(): write_atomic(self.path, json.dumps(self.cache).encode())
