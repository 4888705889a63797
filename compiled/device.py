"""OpenCL device selection, one shared context and queue, and a per-process program cache.

The choice is deterministic: all (platform, device) pairs are ordered GPU first, then by platform and device name.
`EDGEML_DEVICE` overrides it with a name substring (`pocl`, `nvidia`) or an index into that order.

Built programs are cached on disk under EDGEML_CACHE_DIR (default ~/.cache/edgeml): driver binaries in `kernels/` where
they are machine code (every driver but PoCL), and PoCL's own kernel cache in `pocl/` (POCL_CACHE_DIR, unless set),
because PoCL's program binaries hold only bitcode and would be compiled again at the first enqueue.
A program may also look in a folder of its own first (`beside`: the artifact's `NAME.cache/`, where edgeml-tune leaves
the binary for its device), used when the driver accepts the binary and ignored when it does not.
"""
import atexit
import functools
import hashlib
import os
import shutil
import sys
import tempfile
import numpy as np
import pyopencl as cl
from compiled.atomic import write_atomic
from compiled.targets import target_of

INSTALL_HINT = ("no OpenCL platform found. Install one: on Debian `apt-get install pocl-opencl-icd ocl-icd-libopencl1 "
                "binutils` (PoCL runs OpenCL on the CPU), or your GPU vendor's OpenCL driver; `bash scripts/setup.sh` "
                "does the PoCL install for you.")


def cache_dir() -> str:
  return os.environ.get("EDGEML_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "edgeml")


@functools.cache
def cache_writable() -> bool:
  """Whether cache_dir() can be created and written; warns once when not (a read-only root filesystem): then
  nothing is cached and every process builds its kernels again."""
  try:
    os.makedirs(cache_dir(), exist_ok=True)
    with tempfile.TemporaryFile(dir=cache_dir()): return True
  except OSError as e:
    print(f"edgeml: warning: cache folder {cache_dir()} is not writable ({e.strerror}); running without a kernel cache "
          f"(slower starts). Set EDGEML_CACHE_DIR to a writable folder.", file=sys.stderr)
    return False


def _pocl_cache() -> str:
  """PoCL finds no device without a writable cache folder: ours, else a private temporary one."""
  if cache_writable(): return os.path.join(cache_dir(), "pocl")
  scratch = tempfile.mkdtemp(prefix="edgeml-pocl-")
  atexit.register(shutil.rmtree, scratch, ignore_errors=True)
  return scratch


if "POCL_CACHE_DIR" not in os.environ: os.environ["POCL_CACHE_DIR"] = _pocl_cache()  # before the first platform query


class DeviceError(RuntimeError):
  pass


def _type_rank(dev) -> int:
  return 0 if dev.type & cl.device_type.GPU else 1 if dev.type & cl.device_type.ACCELERATOR else 2


def list_devices() -> list:
  """Every OpenCL device on this machine, in the deterministic order used for selection."""
  try: platforms = cl.get_platforms()
  except cl.Error: platforms = []
  devs = []
  for p in platforms:
    try: devs += p.get_devices()
    except cl.Error: pass
  return sorted(devs, key=lambda d: (_type_rank(d), d.platform.name, d.name, d.platform.version))


def describe(dev) -> str:
  return f"{dev.platform.name} / {dev.name} ({cl.device_type.to_string(dev.type)})"


def select_device(spec: str | None = None):
  """The device named by `spec` (or EDGEML_DEVICE): a name substring or an index; default the first GPU, else CPU."""
  devs = list_devices()
  if not devs: raise DeviceError(INSTALL_HINT)
  spec = os.environ.get("EDGEML_DEVICE", "") if spec is None else spec
  if not spec: return devs[0]
  if spec.isdigit():
    if int(spec) < len(devs): return devs[int(spec)]
  else:
    for d in devs:
      if spec.lower() in f"{d.platform.name} {d.platform.vendor} {d.name}".lower(): return d
  choices = "; ".join(f"{i}: {describe(d)}" for i, d in enumerate(devs))
  raise DeviceError(f"EDGEML_DEVICE={spec!r} matches no OpenCL device; available: {choices}")


class Device:
  """A context and an in-order profiling queue on one OpenCL device."""
  def __init__(self, dev):
    self.dev = dev
    self.name = describe(dev)
    self.ctx = cl.Context([dev])
    self.queue = cl.CommandQueue(self.ctx, properties=cl.command_queue_properties.PROFILING_ENABLE)
    self.target = target_of(dev)
    self._programs: dict[tuple[str, str], cl.Program] = {}
    self._kernels: dict[tuple[str, str], cl.Kernel] = {}

  def build(self, source: str, options: str = "", beside: str | None = None, save_beside: bool = False) -> cl.Program:
    """Build `source` once per process; later calls return the same program. Off PoCL the driver's binary is cached on
    disk, keyed by device, driver, options and source, so a later process skips the compiler. `beside`: a folder
    searched first for that binary (named by the same key); `save_beside` writes it there."""
    if (prg := self._programs.get((source, options))) is None:
      binary_path = self._binary_path(source, options) if self.target.cache_binaries and cache_writable() else None
      own = os.path.join(beside, self.binary_name(source, options)) if beside else None
      prg = self._from_binary(own, options)
      if prg is None and (prg := self._from_binary(binary_path, options)) is None:
        try: prg = cl.Program(self.ctx, source).build(options)
        except cl.RuntimeError:  # once more: PoCL's kernel cache can trip over another process's build (pocl#430)
          try: prg = cl.Program(self.ctx, source).build(options)
          except cl.RuntimeError as e: raise DeviceError(f"OpenCL build failed on {self.name}:\n{e}\n--- source ---\n{source}") from e
        if binary_path: write_atomic(binary_path, prg.binaries[0])
      self._programs[(source, options)] = prg
    if beside and save_beside: write_atomic(os.path.join(beside, self.binary_name(source, options)), prg.binaries[0])
    return prg

  def kernel(self, source: str, name: str) -> cl.Kernel:
    """The kernel `name` of the (cached) program built from `source`."""
    if (k := self._kernels.get((source, name))) is None: k = self._kernels[(source, name)] = cl.Kernel(self.build(source), name)
    return k

  def binary_name(self, source: str, options: str) -> str:
    """The file name of the program binary: a hash of platform, device, driver, options and source."""
    key = "\0".join((self.dev.platform.version, self.dev.name, self.dev.driver_version, options, source))
    return hashlib.sha256(key.encode()).hexdigest() + ".bin"

  def _binary_path(self, source: str, options: str) -> str:
    return os.path.join(cache_dir(), "kernels", self.binary_name(source, options))

  def _from_binary(self, path: str | None, options: str) -> cl.Program | None:
    """The program from a cached binary, or None when there is none or the driver rejects it (it is then rebuilt)."""
    if path is None or not os.path.exists(path): return None
    try:
      with open(path, "rb") as f: binary = f.read()
      return cl.Program(self.ctx, [self.dev], [binary]).build(options)
    except (OSError, cl.Error): return None

  def alloc(self, nbytes: int) -> cl.Buffer:
    return cl.Buffer(self.ctx, cl.mem_flags.READ_WRITE, max(nbytes, 4))

  def upload(self, array: np.ndarray) -> cl.Buffer:
    buf = self.alloc(array.nbytes)
    if array.nbytes: cl.enqueue_copy(self.queue, buf, np.ascontiguousarray(array), is_blocking=False)
    return buf

  def download(self, buf: cl.Buffer, shape, dtype) -> np.ndarray:
    out = np.empty(shape, dtype)
    if out.nbytes: cl.enqueue_copy(self.queue, out, buf)
    return out


@functools.cache
def default_device() -> Device:
  return Device(select_device())
