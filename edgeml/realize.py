"""Runs a schedule on the default OpenCL device: render, build (cached per source), launch, and report. Data a node
holds on the host is uploaded the first time a kernel reads it; without an OpenCL device (or with `host=True`) the
schedule is evaluated on the host in numpy instead (edgeml/host_eval.py).

EDGEML_DEBUG=2 prints one line per kernel with its OpenCL-event time, =3 adds the schedule, =4 the source.
"""
import os
from compiled.debug import DEBUG, kernel_line, say
from edgeml.ops import Op
from edgeml.schedule import schedule
from edgeml.codegen import render, program_source


def realize(outputs: list, stats: list | None = None, host: bool = False) -> None:
  """Compute every node in `outputs` into a buffer: on the default device, or on the host with `host` or when this
  machine has no OpenCL device (then `stats` stays empty). With `stats`, append (Kernel, seconds) per kernel."""
  items = schedule(outputs)
  for it in items:
    for n in it.loads:
      if n.op is Op.BUFFER and n.buffer is None:
        raise ValueError(f"input {n.arg!r} {n.shape} is a placeholder without data: compile the graph (edgeml.compile) "
                         f"or build the input from an array")
  if DEBUG >= 3:
    for i, it in enumerate(items): say(f"schedule {i}: {it.out} <- {[n.shape for n in it.loads]}")
  if not host and not items: return
  if not host:
    from compiled.device import DeviceError, default_device, list_devices
    try: dev = default_device()
    except DeviceError:   # on the host only where there is no device at all, never instead of the one asked for
      if os.environ.get("EDGEML_DEVICE") or list_devices(): raise
      host = True
  if host:
    from edgeml.host_eval import fold
    fold(items)
    return
  import pyopencl as cl
  from edgeml.host_eval import device_buffer
  for it in items:
    k = render(it)
    source = program_source([k])
    if DEBUG >= 4: say(source)
    buf = dev.alloc(k.out.nbytes)
    kernel = dev.kernel(source, k.name)
    kernel.set_args(buf, *[device_buffer(n) for n in k.loads])
    event = cl.enqueue_nd_range_kernel(dev.queue, kernel, k.global_size, k.local_size)
    if DEBUG >= 2 or stats is not None:
      event.wait()
      seconds = (event.profile.end - event.profile.start) * 1e-9
      if stats is not None: stats.append((k, seconds))
      if DEBUG >= 2: say(kernel_line(k.name, k.global_size, k.local_size, seconds, k.flops, k.bytes))
    it.out.set_buffer(buf)
