"""Test helpers: a private bus per test, child processes driven line by line, bounded waits."""
import contextlib
import glob
import os
import select
import selectors
import shutil
import subprocess
import sys
import time
import uuid

from ipc.framepool import SHM_DIR
from ipc.services import runtime_dir


@contextlib.contextmanager
def isolated_bus():
  """Point EDGEML_PREFIX at a fresh name for the duration (children inherit it); afterwards remove
  its sockets and pool files. Yields the prefix."""
  saved = {k: os.environ.get(k) for k in ("EDGEML_PREFIX", "EDGEML_BUS_HOST")}
  os.environ.pop("EDGEML_BUS_HOST", None)
  os.environ["EDGEML_PREFIX"] = prefix = "t" + uuid.uuid4().hex[:16]
  try:
    yield prefix
  finally:
    if os.path.islink(runtime_dir()):
      os.unlink(runtime_dir())
    shutil.rmtree(runtime_dir(), ignore_errors=True)
    for path in glob.glob(os.path.join(SHM_DIR, f"edgeml-{prefix}-*")):
      os.unlink(path)
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value


class Child:
  """A Python child process talking in lines on stdin/stdout; every wait has a timeout."""

  def __init__(self, *args: str):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `ipc` and `tools` live
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    self.proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    self.selector = selectors.DefaultSelector()
    self.selector.register(self.proc.stdout, selectors.EVENT_READ)
    self.pending = b""  # output read but not yet split into lines

  def expect(self, prefix: str, timeout_s: float = 10.0) -> str:
    """The next output line starting with `prefix` (others are skipped); TimeoutError if none comes."""
    deadline = time.monotonic() + timeout_s
    while True:
      while b"\n" in self.pending:
        line, self.pending = self.pending.split(b"\n", 1)
        if line.decode().startswith(prefix):
          return line.decode()
      left = deadline - time.monotonic()
      if left <= 0 or not self.selector.select(left):
        raise TimeoutError(f"child printed no {prefix!r} line within {timeout_s} s")
      chunk = os.read(self.proc.stdout.fileno(), 65536)
      if not chunk:
        raise EOFError(f"child exited with {self.proc.wait(timeout_s)} before printing {prefix!r}")
      self.pending += chunk

  def tell(self, line: str):
    self.proc.stdin.write(line.encode() + b"\n")
    self.proc.stdin.flush()

  def stop(self, timeout_s: float = 10.0) -> int:
    """Close its stdin (children exit on EOF), wait, kill if it lingers. Returns the exit code."""
    with contextlib.suppress(BrokenPipeError):
      self.proc.stdin.close()
    try:
      self.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
      self.proc.kill()
    return self.kill()

  def kill(self) -> int:
    """SIGKILL unless it has exited; returns the exit code."""
    if self.proc.poll() is None:
      self.proc.kill()
    self.proc.wait()
    self.selector.close()
    self.proc.stdout.close()
    with contextlib.suppress(BrokenPipeError):
      self.proc.stdin.close()
    return self.proc.returncode


class Children:
  """Every Child started through it is killed on exit: `with Children() as start: start(script, "role")`."""

  def __init__(self):
    self.started = []

  def start(self, *args: str) -> Child:
    self.started.append(Child(*args))
    return self.started[-1]

  def __enter__(self):
    return self.start

  def __exit__(self, *exc):
    for child in self.started:
      child.kill()


_stdin_pending = b""


def read_command(timeout_s: float) -> str | None:
  """In a Child: the next line from the parent within timeout_s, or None. Exits (cleanly, so
  finalizers run) when the parent closes stdin."""
  global _stdin_pending
  deadline = time.monotonic() + timeout_s
  while b"\n" not in _stdin_pending:
    left = deadline - time.monotonic()
    if left <= 0 or not select.select([0], [], [], left)[0]:
      return None
    chunk = os.read(0, 4096)
    if not chunk:
      sys.exit(0)
    _stdin_pending += chunk
  line, _stdin_pending = _stdin_pending.split(b"\n", 1)
  return line.decode()


def update_until(sm, condition, timeout_s: float = 10.0) -> bool:
  """Call sm.update() until condition() holds; False if it has not within timeout_s."""
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    sm.update(20)
    if condition():
      return True
  return False
