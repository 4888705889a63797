"""The targets an artifact is compiled for, one entry each: how a device is recognized, and what the compiler and the
loader must know about it. Adding a target is adding one entry to TARGETS.

A device belongs to the first target whose marks appear in its platform, vendor or device name; a device that no
mark names (Oclgrind, Intel, AMD, Mali, ...) belongs to `generic`, which assumes nothing beyond OpenCL C 1.2.
Half precision is a storage type on every target (vload_half/vstore_half are core OpenCL; the math is float32).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
  name: str
  marks: tuple[str, ...]  # lower-case words of the platform, vendor or device name that identify its devices
  image_weights: bool     # float weights are read through image2d_t (RGBA texels; the texture cache of mobile GPUs)
  align: int              # bytes; arena and weight offsets, at least every such device's CL_DEVICE_MEM_BASE_ADDR_ALIGN
  cache_binaries: bool    # the driver's program binaries are machine code worth caching on disk (PoCL's are bitcode)
  build_options: str = ""
  gpu: bool = False       # GPU-like: wants many work items in groups of `work_group` (edgeml/opt.py heuristics)
  work_group: int = 64    # preferred work-group size of flat and grouped-reduce launches on a GPU-like device


TARGETS = {t.name: t for t in (
  Target("pocl", ("portable computing language",), image_weights=False, align=512, cache_binaries=False),
  Target("nvidia", ("nvidia",), image_weights=False, align=512, cache_binaries=True, gpu=True, work_group=128),
  Target("adreno", ("qualcomm", "adreno"), image_weights=True, align=512, cache_binaries=True, gpu=True,
         work_group=128),
  Target("generic", (), image_weights=False, align=512, cache_binaries=True),
)}


def device_words(dev) -> str:
  """The names a device is recognized by (platform, vendor, device), lower case."""
  return f"{dev.platform.name} {dev.platform.vendor} {dev.vendor} {dev.name}".lower()


def target_of(dev) -> Target:
  """The target whose code runs on the pyopencl device `dev`."""
  words = device_words(dev)
  return next((t for t in TARGETS.values() if any(m in words for m in t.marks)), TARGETS["generic"])
