"""Writing a file so that readers see the old file or the whole new one, never a part: a temporary file beside it,
flushed to disk, then renamed over it; on any failure the temporary file is removed."""
import os


def write_atomic(path: str | os.PathLike, *parts) -> None:
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    with open(tmp, "xb") as f:
      for part in parts: f.write(part)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp): os.remove(tmp)
    raise
