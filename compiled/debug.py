"""EDGEML_DEBUG: what runs kernels says what it runs. 1: a line per frame (wall and device time); 2: also a line per
kernel (name, launch size, OpenCL-event time, GFLOP/s, GB/s); the compiler adds 3 (the schedule) and 4 (the source)."""
import os
import sys

DEBUG = int(os.environ.get("EDGEML_DEBUG", "0") or 0)


def kernel_line(name: str, global_size: tuple, local_size: tuple | None, seconds: float, flops: int, nbytes: int) -> str:
  launch = "x".join(map(str, global_size)) + "/" + ("x".join(map(str, local_size)) if local_size else "auto")
  return (f"{name:<28} {launch:<16} {seconds * 1e6:9.1f} us {flops / max(seconds, 1e-9) / 1e9:8.2f} GFLOP/s "
          f"{nbytes / max(seconds, 1e-9) / 1e9:7.2f} GB/s")


def say(line: str) -> None:
  """Debug output goes to stderr, so it never mixes with a program's own output."""
  print(line, file=sys.stderr, flush=True)
