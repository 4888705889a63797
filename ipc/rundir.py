"""The bus's files are ours alone: the runtime directory (sockets, pool pointers) and the pool files in /dev/shm.

private_dir(path) creates the directory (mode 0700) or checks the one there: a real directory, not a symbolic link,
owned by our effective uid, with no access for group or others. open_private(path) opens a file without following a
symbolic link and checks the same of it (a regular file). Anything else is UnsafePath, with one line saying what is
wrong: another user who created the path first must not be able to speak on our bus or hand us frames.
"""
import errno
import os
import stat


class UnsafePath(RuntimeError):
  """A path of the bus that is not ours alone."""


def _check(path: str, st: os.stat_result, want_dir: bool) -> None:
  euid = os.geteuid()
  if stat.S_ISLNK(st.st_mode):
    raise UnsafePath(f"{path} is a symbolic link: refusing to use it (remove it)")
  if want_dir and not stat.S_ISDIR(st.st_mode) or not want_dir and not stat.S_ISREG(st.st_mode):
    raise UnsafePath(f"{path} is not a {'directory' if want_dir else 'regular file'}: refusing to use it (remove it)")
  if st.st_uid != euid:
    raise UnsafePath(f"{path} belongs to uid {st.st_uid}, not to us (uid {euid}): refusing to use it (remove it)")
  if st.st_mode & 0o077:
    raise UnsafePath(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, open to other users: refusing to use it "
                     f"(chmod {'700' if want_dir else '600'} it or remove it)")


def private_dir(path: str) -> str:
  """`path`, created with mode 0700 (its parents too) unless it exists; UnsafePath unless it is ours alone."""
  os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
  try:
    os.mkdir(path, 0o700)
  except FileExistsError:
    pass
  _check(path, os.lstat(path), want_dir=True)
  return path


def open_private(path: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
  """A file descriptor of `path` (O_NOFOLLOW), checked to be a regular file of ours with mode 0600 or narrower.
  With O_CREAT | O_EXCL in `flags` it is a new file of `mode`."""
  try:
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise UnsafePath(f"{path} is a symbolic link: refusing to use it (remove it)") from None
    raise
  try:
    _check(path, os.fstat(fd), want_dir=False)
  except BaseException:
    os.close(fd)
    raise
  return fd
