"""The device's roofline: its peak FLOP/s and memory bandwidth, measured by small OpenCL kernels, and how close a
kernel with known FLOPs and bytes comes to it.

`peaks(device)` measures once per device and driver and caches the result as JSON under compiled.device.cache_dir()
(`roofline/`), keyed by platform, device name, driver version and the benchmark's source; where the cache folder is
not writable it measures every time. The FLOP peak is a chain of float8 multiply-adds (eight independent chains per
work item, so latency is hidden; built with -cl-mad-enable, so each is one FMA where the device has them); the
bandwidth is the better of a float4 copy between two buffers larger than a CPU's caches and a read of one. Each is
the best of several short launches (a shared machine loses cores now and then, and the peak is what the device can
do, not what it did once). A cached entry keeps the best figures ever measured: remeasure=True measures again and
keeps the better of old and new.

A kernel's roofline time is max(flops / peak FLOP/s, bytes / peak bandwidth); `fraction` is that time over the time
it took (1.0 = at the limit). A kernel whose data stays in cache can exceed 1.0 against DRAM bandwidth.
"""
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import pyopencl as cl

from compiled.atomic import write_atomic
from compiled.device import Device, cache_dir, cache_writable

WIDTH, CHAINS = 8, 8  # float8 x 8 independent chains: 128 FLOP per work item per loop iteration
VERSION = 2  # of the measurement: a new benchmark or procedure makes new cache entries
OPTIONS = "-cl-mad-enable"  # a * b + c may become one fused multiply-add where the device has one (mad() need not)

SOURCE = f"""
__kernel void fma_peak(__global float *out, float b, float c, int iters) {{
  float{WIDTH} x = (float{WIDTH})((float)get_global_id(0) * 1e-6f);
  {" ".join(f"float{WIDTH} a{i} = x + (float{WIDTH})({i}.0f);" for i in range(CHAINS))}
  for (int i = 0; i < iters; i++) {{
    {" ".join(f"a{i} = a{i} * b + c;" for i in range(CHAINS))}
  }}
  float{WIDTH} t = {" + ".join(f"a{i}" for i in range(CHAINS))};
  out[get_global_id(0)] = t.s0 + t.s1 + t.s2 + t.s3 + t.s4 + t.s5 + t.s6 + t.s7;
}}

__kernel void copy_peak(__global float4 *restrict dst, __global const float4 *restrict src) {{
  size_t i = get_global_id(0);
  dst[i] = src[i];
}}

__kernel void read_peak(__global float *restrict out, __global const float4 *restrict src) {{
  float4 v = src[get_global_id(0)];
  if (v.x + v.y + v.z + v.w == -1.0f) out[0] = v.x;  /* never true for the ones measured; keeps the read */
}}
"""


@dataclass(frozen=True)
class Peaks:
  """Peak FLOP/s and bytes/s of one device."""
  flops: float
  bandwidth: float

  def __post_init__(self):
    for what, v in (("flops", self.flops), ("bandwidth", self.bandwidth)):
      if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise ValueError(f"roofline peak {what} must be a positive finite number, not {v!r}")


def bound_seconds(flops: float, nbytes: float, peaks: Peaks) -> float:
  """The least time a kernel doing `flops` and moving `nbytes` can take on this device."""
  return max(flops / peaks.flops, nbytes / peaks.bandwidth)


def limit(flops: float, nbytes: float, peaks: Peaks) -> str:
  """Which peak bounds such a kernel: "flop" (compute) or "mem" (bandwidth)."""
  return "flop" if flops / peaks.flops >= nbytes / peaks.bandwidth else "mem"


def fraction(seconds: float, flops: float, nbytes: float, peaks: Peaks) -> float:
  """How close a kernel that took `seconds` came to its roofline time (1.0 = at the limit; 0 for no work)."""
  return bound_seconds(flops, nbytes, peaks) / seconds if seconds > 0 else 0.0


def _seconds(event: cl.Event) -> float:
  event.wait()
  return (event.profile.end - event.profile.start) * 1e-9


def _is_cpu(device: Device) -> bool:
  return bool(device.dev.type & cl.device_type.CPU)


def measure(device: Device, budget: float = 0.2) -> Peaks:
  """Measure peak FLOP/s and bandwidth on `device` (about `budget` seconds of kernels, plus one program build)."""
  dev, queue = device.dev, device.queue
  program = device.build(SOURCE, OPTIONS)
  local = min(64, dev.max_work_group_size)
  items = dev.max_compute_units * local * (4 if _is_cpu(device) else 32)
  nbytes = min(dev.max_mem_alloc_size // 2, (64 if _is_cpu(device) else 512) << 20) // (16 * local) * 16 * local
  out = cl.Buffer(device.ctx, cl.mem_flags.WRITE_ONLY, items * 4)
  src, dst = (cl.Buffer(device.ctx, cl.mem_flags.READ_WRITE, nbytes) for _ in range(2))
  cl.enqueue_fill_buffer(queue, src, np.float32(1), 0, nbytes)
  fma, copy, read = (cl.Kernel(program, name) for name in ("fma_peak", "copy_peak", "read_peak"))
  fma.set_args(out, np.float32(0.999), np.float32(0.001), np.int32(1))
  copy.set_args(dst, src)
  read.set_args(out, src)
  for kernel in (fma, copy, read):  # untimed: some drivers (PoCL) generate machine code at the first launch
    cl.enqueue_nd_range_kernel(queue, kernel, (local,), (local,))
  queue.finish()

  iters, best_flops, runs, deadline = 64, 0.0, 0, time.perf_counter() + budget / 2
  while runs < 3 or time.perf_counter() < deadline:  # grow the loop until a launch takes 2 ms, then repeat it
    fma.set_arg(3, np.int32(iters))
    s = _seconds(cl.enqueue_nd_range_kernel(queue, fma, (items,), (local,)))
    best_flops = max(best_flops, items * iters * WIDTH * CHAINS * 2 / max(s, 1e-9))
    if s < 2e-3 and iters < 1 << 20: iters *= 2
    else: runs += 1

  best_bw, runs, deadline = 0.0, 0, time.perf_counter() + budget / 2
  while runs < 3 or time.perf_counter() < deadline:  # the better of a copy (read + write) and a read alone
    for kernel, traffic in ((copy, 2 * nbytes), (read, nbytes)):
      s = _seconds(cl.enqueue_nd_range_kernel(queue, kernel, (nbytes // 16,), (local,)))
      best_bw = max(best_bw, traffic / max(s, 1e-9))
    runs += 1
  return Peaks(best_flops, best_bw)


def cache_path(device: Device) -> str:
  dev = device.dev
  key = "\0".join((str(VERSION), dev.platform.version, dev.name, dev.driver_version, SOURCE, OPTIONS))
  return os.path.join(cache_dir(), "roofline", hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


def _cached(path: str) -> Peaks | None:
  try:
    with open(path) as f: data = json.load(f)
    return Peaks(float(data["flops"]), float(data["bandwidth"]))
  except (OSError, ValueError, KeyError, TypeError):
    return None  # none yet, or unreadable: measure again


def peaks(device: Device, remeasure: bool = False) -> Peaks:
  """The device's peaks: from the cache when there, else measured (and cached when the cache folder is writable)."""
  if not cache_writable(): return measure(device)
  path = cache_path(device)
  old = _cached(path)
  if old is not None and not remeasure: return old
  new = measure(device)
  if old is not None: new = Peaks(max(old.flops, new.flops), max(old.bandwidth, new.bandwidth))
  record = {"device": device.name, "driver": device.dev.driver_version, "flops": new.flops, "bandwidth": new.bandwidth}
  try: write_atomic(path, json.dumps(record, indent=1).encode())
  except OSError: pass  # a cache that cannot be written only costs a measurement next time
  return new
