"""Camera frames in shared memory: the pixels stay in a pool of buffers, only a small cameraFrame
notice (buffer index and sequence) travels on the bus.

Pool file /dev/shm/edgeml-<prefix>-<camera>-<16 random hex digits>, mapped by the server (read-write) and by clients
(read-only), found through a symbolic link named pool-<camera> in the private runtime directory (ipc/rundir.py):
    page 0:   header (magic, version, format, size, buffer count, pool id, owner pid),
              then one (start, end) pair of uint64 sequences per buffer
    page 1..: the buffers, each page-aligned
The server writes `start = seq` before the pixels and `end = seq` after them, then sends the notice.
A reader whose notice says seq still finds `start == seq` after reading only if the buffer was not
reused meanwhile (Frame.still_valid). This relies on x86 keeping stores in order; ARM needs fences.

A plain file in /dev/shm with mmap, not multiprocessing.shared_memory: on Python 3.11 a process that
only attaches unlinks the segment when it exits. /dev/shm is shared by every user, so no name there is predictable
(another user could create it first): the server creates a fresh random name (O_EXCL, mode 0600) and points to it
from the runtime directory that only we can write; clients open it without following links and check it is ours.
A server starting removes the pools of its camera left by servers of ours that are gone.

Notices are read keep-latest: FrameClient.recv drains what has arrived and returns the newest notice that passes
validation and names a buffer still holding its frame, so junk notices never displace a valid one.
"""
import glob
import mmap
import os
import re
import secrets
import stat
import struct
import time
import weakref
from dataclasses import dataclass

import numpy as np

from ipc.messaging import MessageError, PubMaster, drain, drain_limit, new_message, parse, recv_within, sub_socket
from ipc.rundir import UnsafePath, open_private, private_dir
from ipc.services import camera_service, prefix, runtime_dir
from ipc.validate import DropLog

SHM_DIR = "/dev/shm"
PAGE = 4096
MAGIC = b"EDGEPOOL"
VERSION = 1
FORMATS = {"nv12": 0}
HEADER = struct.Struct("<8sIIIIIIQQI")  # magic version format width height stride buffers buffer_bytes pool_id pid
SEQ_OFFSET = 64
MIN_BUFFERS = 4
MAX_BUFFERS = (PAGE - SEQ_OFFSET) // 16


def pool_name(camera: str) -> str:
  """The start of the camera's pool file names: the full name adds '-' and 16 random hex digits."""
  return f"edgeml-{prefix()}-{camera}"


def pointer_path(camera: str) -> str:
  """The symbolic link in the runtime directory naming the camera's current pool file."""
  return os.path.join(runtime_dir(), f"pool-{camera}")


def pool_path(camera: str) -> str:
  """The pool file the camera's server announced; FileNotFoundError if none, UnsafePath if the link names
  anything but a pool file of this camera in SHM_DIR."""
  pointer = pointer_path(camera)
  try:
    target = os.readlink(pointer)
  except OSError as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise UnsafePath(f"{pointer} is not a symbolic link to a frame pool: refusing to use it (remove it)") from None
  name = os.path.basename(target)
  if os.path.dirname(target) != SHM_DIR or not re.fullmatch(re.escape(pool_name(camera)) + "-[0-9a-f]{16}", name):
    raise UnsafePath(f"{pointer} points to {target!r}, not to a frame pool of camera {camera!r}: refusing it")
  return target


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


@dataclass(frozen=True)
class Layout:
  width: int
  height: int
  stride: int
  buffers: int

  @property
  def frame_bytes(self) -> int:
    return self.stride * self.height * 3 // 2  # NV12: Y plane, then UV plane at half height

  @property
  def buffer_bytes(self) -> int:
    return -(-self.frame_bytes // PAGE) * PAGE

  @property
  def file_bytes(self) -> int:
    return PAGE + self.buffers * self.buffer_bytes

  def offset(self, index: int) -> int:
    return PAGE + index * self.buffer_bytes


class Pool:
  """A mapped pool file: its header, the sequence pairs, and views of the buffers."""

  def __init__(self, path: str, writable: bool):
    fd = open_private(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
      size = os.fstat(fd).st_size
      if size < PAGE:
        raise ValueError(f"{path}: {size} bytes, too short for a frame pool")
      prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
      self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=prot)
      self.inode = os.fstat(fd).st_ino
    finally:
      os.close(fd)  # the mapping keeps the memory
    header = HEADER.unpack_from(self.mm, 0)
    magic, version, fmt, width, height, stride, buffers, buffer_bytes, self.pool_id, self.pid = header
    if magic != MAGIC or version != VERSION or fmt not in FORMATS.values():
      raise ValueError(f"{path}: not an edgeml frame pool of version {VERSION}")
    if not (MIN_BUFFERS <= buffers <= MAX_BUFFERS and 0 < width <= stride and height > 0):
      raise ValueError(f"{path}: the header's layout is impossible "
                       f"({width}x{height}, stride {stride}, {buffers} buffers)")
    self.layout = Layout(width, height, stride, buffers)
    if buffer_bytes != self.layout.buffer_bytes or size != self.layout.file_bytes:
      raise ValueError(f"{path}: header does not match the file size")
    self.seqs = memoryview(self.mm)[SEQ_OFFSET:SEQ_OFFSET + 16 * buffers].cast("Q")  # start, end, start, ...
    self.views = [self._planes(i) for i in range(buffers)]  # fixed: made once, shared by every frame

  def buffer(self, index: int) -> np.ndarray:
    return np.ndarray(self.layout.frame_bytes, np.uint8, buffer=self.mm, offset=self.layout.offset(index))

  def _planes(self, index: int):
    """Zero-copy (Y, UV) views: Y is (height, width), UV is (height/2, width) interleaved U,V."""
    lay, base = self.layout, self.layout.offset(index)
    y = np.ndarray((lay.height, lay.width), np.uint8, buffer=self.mm, offset=base, strides=(lay.stride, 1))
    uv = np.ndarray((lay.height // 2, lay.width), np.uint8, buffer=self.mm,
                    offset=base + lay.stride * lay.height, strides=(lay.stride, 1))
    return y, uv


def _create_pool(camera: str, layout: Layout) -> str:
  """A fresh pool file of a random name (created exclusively, mode 0600, header written), returned."""
  path = os.path.join(SHM_DIR, f"{pool_name(camera)}-{secrets.token_hex(8)}")
  fd = open_private(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
  try:
    os.ftruncate(fd, layout.file_bytes)
    header = HEADER.pack(MAGIC, VERSION, FORMATS["nv12"], layout.width, layout.height, layout.stride,
                         layout.buffers, layout.buffer_bytes, secrets.randbits(64), os.getpid())
    os.pwrite(fd, header, 0)
  except BaseException:
    os.unlink(path)
    raise
  finally:
    os.close(fd)
  return path


def _point_to(camera: str, path: str) -> None:
  """Make the camera's pointer name `path`, in one step (a client never sees a missing or half-made pool)."""
  pointer = pointer_path(camera)
  tmp = f"{pointer}.{os.getpid()}.tmp"
  if os.path.lexists(tmp):
    os.unlink(tmp)
  os.symlink(path, tmp)
  os.replace(tmp, pointer)


def _owner_pid(path: str) -> int | None:
  """The server pid in a pool file's header; None if it is not a readable pool of ours."""
  try:
    fd = open_private(path)
  except (OSError, UnsafePath):
    return None
  try:
    magic, *_, pid = HEADER.unpack(os.pread(fd, HEADER.size, 0).ljust(HEADER.size, b"\0"))
    return pid if magic == MAGIC else None
  finally:
    os.close(fd)


def remove_stale_pools(camera: str) -> list:
  """Remove the pool files of `camera` that are ours (owner uid) and whose server is gone; returns their paths.
  Files of other users are never touched."""
  removed = []
  for path in glob.glob(os.path.join(SHM_DIR, glob.escape(pool_name(camera)) + "-*")):
    try:
      st = os.lstat(path)
    except FileNotFoundError:
      continue
    if st.st_uid != os.geteuid() or not stat.S_ISREG(st.st_mode):
      continue
    pid = _owner_pid(path)
    if pid is not None and pid != os.getpid() and _pid_alive(pid):
      continue
    try:
      os.unlink(path)
      removed.append(path)
    except FileNotFoundError:
      pass
  return removed


def _remove_if_ours(camera: str, path: str, inode: int) -> None:
  """Remove our pool file, and the pointer if it still names it (not a successor's)."""
  try:
    if os.stat(path).st_ino == inode:
      os.unlink(path)
  except FileNotFoundError:
    pass
  try:
    if os.readlink(pointer_path(camera)) == path:
      os.unlink(pointer_path(camera))
  except OSError:
    pass


class FrameServer:
  """Owns the pool of one camera and publishes its cameraFrame service.

  Either send(pixels), which copies a frame in, or write in place: buf = next_buffer(), fill it,
  publish(). Buffers are reused round-robin; a client holding an old frame finds out by still_valid().
  """

  def __init__(self, camera: str, width: int, height: int, fmt: str = "nv12", buffers: int = 4,
               stride: int | None = None):
    if fmt not in FORMATS:
      raise ValueError(f"pixel format {fmt!r} is not supported; supported: {', '.join(FORMATS)}")
    if not MIN_BUFFERS <= buffers <= MAX_BUFFERS:
      raise ValueError(f"buffers={buffers}: a pool needs {MIN_BUFFERS} to {MAX_BUFFERS} buffers")
    if width <= 0 or height <= 0 or width % 2 or height % 2:
      raise ValueError(f"NV12 needs a positive, even width and height, got {width}x{height}")
    if stride is not None and stride < width:
      raise ValueError(f"stride {stride} is less than the width {width}")
    self.camera, self.service = camera, camera_service(camera).name
    private_dir(runtime_dir())
    self._refuse_live_owner()
    self.stale_removed = remove_stale_pools(camera)
    self.path = _create_pool(camera, Layout(width, height, stride or width, buffers))
    self.pool = Pool(self.path, writable=True)
    self._remove_pool = weakref.finalize(self, _remove_if_ours, camera, self.path, self.pool.inode)  # also at exit
    self.pm = PubMaster([self.service])
    _point_to(camera, self.path)
    lay = self.pool.layout
    self.notice = new_message(self.service, camera=camera, width=lay.width, height=lay.height, stride=lay.stride,
                              format=fmt, pool=os.path.basename(self.path), poolId=self.pool.pool_id)
    self.seq = 0           # sequence of the frame being written, over all buffers
    self.frame_id = 0
    self.index = -1        # buffer being written

  def _refuse_live_owner(self):
    try:
      path = pool_path(self.camera)
    except FileNotFoundError:
      return
    owner = _owner_pid(path)
    if owner is not None and owner != os.getpid() and _pid_alive(owner):
      raise RuntimeError(f"camera {self.camera!r} is already served by pid {owner} ({path})")

  def next_buffer(self) -> np.ndarray:
    """The next buffer as a flat, writable uint8 view, already marked as being overwritten."""
    self.index = (self.index + 1) % self.pool.layout.buffers
    self.seq += 1
    self.pool.seqs[2 * self.index] = self.seq  # start: readers of the old frame see it is gone
    return self.pool.buffer(self.index)

  def publish(self, frame_id: int | None = None, timestamp_sof: int | None = None,
              timestamp_eof: int | None = None) -> int:
    """Mark the buffer from next_buffer() complete and announce it. Returns the frame id."""
    if self.index < 0 or self.pool.seqs[2 * self.index + 1] == self.seq:
      raise RuntimeError("publish() needs a buffer from next_buffer() first")
    self.pool.seqs[2 * self.index + 1] = self.seq  # end: the pixels before it are complete
    self.frame_id = self.frame_id + 1 if frame_id is None else frame_id
    notice = self.notice  # one message reused: only its numbers change, so nothing piles up in it
    notice.logMonoTime = time.monotonic_ns()
    fields = notice.cameraFrame
    fields.frameId = self.frame_id
    fields.timestampEof = notice.logMonoTime if timestamp_eof is None else timestamp_eof
    fields.timestampSof = fields.timestampEof if timestamp_sof is None else timestamp_sof
    fields.bufferIndex, fields.bufferSeq = self.index, self.seq
    self.pm.send(self.service, notice)
    notice.clear_write_flag()  # pycapnp warns when a message is serialized twice, unless told
    return self.frame_id

  def send(self, pixels: np.ndarray, **stamps) -> int:
    """Copy one frame (any array of frame_bytes uint8) into the next buffer and publish it."""
    buf = self.next_buffer()
    buf[:] = np.asarray(pixels, np.uint8).reshape(-1)
    return self.publish(**stamps)

  def wait_for_client(self, timeout_s: float = 5.0) -> bool:
    return self.pm.wait_for_subscribers(self.service, 1, timeout_s)

  def close(self):
    """Stop publishing and remove the pool file (if it is still ours)."""
    self.pm.close()
    self._remove_pool()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


@dataclass
class Frame:
  """One camera frame as zero-copy, read-only views into the pool."""
  y: np.ndarray
  uv: np.ndarray
  frame_id: int
  timestamp_sof: int
  timestamp_eof: int
  log_mono_time: int   # when the server published it
  index: int
  seq: int
  pool: Pool

  def still_valid(self) -> bool:
    """False once the server has begun to reuse this buffer: pixels read before now may be torn."""
    return self.pool.seqs[2 * self.index] == self.seq


class FrameClient:
  """Maps a camera's pool once and hands out its frames as numpy views. Reattaches (maps the new
  pool) when the server restarts."""

  def __init__(self, camera: str, timeout_s: float = 5.0):
    self.camera, self.service = camera, camera_service(camera).name
    self.sock = sub_socket(self.service)  # read keep-latest: recv() gives the newest frame
    self.limit = drain_limit(self.service)
    self.overwritten = 0   # notices whose buffer was already reused when they were read
    self.errors = 0        # malformed notices
    self.drops = DropLog(f"FrameClient({camera})")
    deadline = time.monotonic() + timeout_s
    while True:
      try:
        self.path = pool_path(camera)
        self.pool = Pool(self.path, writable=False)
        break
      except UnsafePath:
        self.sock.close()
        raise
      except (FileNotFoundError, ValueError):
        if time.monotonic() > deadline:
          self.sock.close()
          raise TimeoutError(f"no frame pool for camera {camera!r} at {pointer_path(camera)} after "
                             f"{timeout_s} s: is its FrameServer running?") from None
        time.sleep(0.02)

  def recv(self, timeout_ms: int = 100) -> Frame | None:
    """The newest frame announced within timeout_ms (-1: no limit), or None. Notices that are malformed or name
    no frame (counted in errors, or overwritten) make it wait on for the rest of the time. (A process that also
    needs other services can take the notices from its SubMaster and pass them to view() instead.)"""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
      data = recv_within(self.sock, timeout_ms)
      if data is None:
        return None
      for data in reversed([data, *drain(self.sock, self.limit)]):
        try:
          event, notice = parse(data, "cameraFrame")
        except MessageError as e:
          self.errors += 1
          self.drops.drop(self.service, str(e))
          continue
        if (frame := self.view(notice, event.logMonoTime)) is not None:
          return frame
      if timeout_ms >= 0:
        timeout_ms = int((deadline - time.monotonic()) * 1000)
        if timeout_ms <= 0:
          return None

  def view(self, notice, log_mono_time: int = 0) -> Frame | None:
    """The frame a cameraFrame notice names, or None if its buffer has been reused already or the notice names no
    buffer of the pool (a malformed notice, counted in errors)."""
    if notice.poolId != self.pool.pool_id:
      try:   # map the pool again only when the server made a new one: junk pool ids cost a stat, not a mapping
        if os.stat(pool_path(self.camera)).st_ino == self.pool.inode:
          self.errors += 1
          return None
        pool = Pool(pool_path(self.camera), writable=False)
      except (OSError, ValueError, UnsafePath):
        return None
      if notice.poolId != pool.pool_id:
        return None  # a notice from a server that is gone
      self.pool = pool  # the old mapping lives on in frames still holding it
    index, seq = notice.bufferIndex, notice.bufferSeq
    if index >= self.pool.layout.buffers:
      self.errors += 1
      return None
    y, uv = self.pool.views[index]
    frame = Frame(y, uv, notice.frameId, notice.timestampSof, notice.timestampEof, log_mono_time,
                  index, seq, self.pool)
    if not frame.still_valid():  # start moved on: the server is rewriting or has rewritten it
      self.overwritten += 1
      return None
    return frame

  def close(self):
    self.sock.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
