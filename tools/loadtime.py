"""Cold and warm load time of an artifact, each in a fresh process. `python -m tools.loadtime [model.edgeml]`

Cold runs start from an empty cache directory (a temporary one: the user's cache is never touched); warm runs
reuse what the cold run left there. Without an artifact, a demo one is written: a chain of dense + ReLU kernels in
one program. Columns are seconds: importing the runtime, reading + verifying, creating the device context, building
the program, allocating + binding + warm-up (machine code is generated at each kernel's first enqueue), the process.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CHILD = """
import json, sys, time
t = [time.perf_counter()]
from compiled.artifact import read_artifact
from compiled.device import default_device
from compiled.runtime import Program
t.append(time.perf_counter())
spec = read_artifact(sys.argv[1]); t.append(time.perf_counter())
dev = default_device(); t.append(time.perf_counter())
dev.build(spec.source, spec.build_options); t.append(time.perf_counter())
Program(spec, dev, sys.argv[1]); t.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip(t, t[1:])]))
"""
COLUMNS = ("import", "read", "device", "build", "warm-up")

DENSE = """
__kernel void NAME(__global float *y, __global const float *x, __global const float *w, __global const float *b) {
  int i = get_global_id(0);
  float acc = b[i];
  for (int k = 0; k < WIDTH; k++) acc += w[i * WIDTH + k] * x[k];
  y[i] = acc > 0.0f ? acc : 0.0f;
}
"""


def write_demo(path: str, layers: int = 8, width: int = 256) -> None:
  """A chain of `layers` dense + ReLU kernels of `width` features, ping-ponging through two arena slots."""
  import numpy as np
  from compiled.artifact import BufferSpec, KernelSpec, ProgramSpec, TensorSpec, write_artifact
  from compiled.device import select_device
  from compiled.targets import target_of
  row, matrix = 4 * width, 4 * width * width
  buffers = [BufferSpec("input", 0, row), BufferSpec("output", 0, row),
             BufferSpec("arena", 0, row), BufferSpec("arena", 1024, row)]
  kernels, source = [], f"#define WIDTH {width}\n"
  for i in range(layers):
    src, dst = 0 if i == 0 else 2 + (i - 1) % 2, 1 if i == layers - 1 else 2 + i % 2
    at = i * (matrix + 1024)
    buffers += [BufferSpec("weights", at, matrix), BufferSpec("weights", at + matrix, row)]
    args = [("buffer", dst), ("buffer", src), ("buffer", len(buffers) - 2), ("buffer", len(buffers) - 1)]
    kernels.append(KernelSpec(f"dense{i}", (width,), (32,), args, 2 * width * width, matrix + 3 * row))
    source += DENSE.replace("NAME", f"dense{i}")
  weights = np.random.default_rng(0).standard_normal(layers * (matrix + 1024) // 4, np.float32) * width ** -0.5
  target = target_of(select_device()).name
  write_artifact(ProgramSpec(target, "loadtime-demo", source, "", [TensorSpec("x", (1, width), "float32", 0)],
                             [TensorSpec("y", (1, width), "float32", 1)], buffers, kernels, arena_size=1024 + row,
                             align=512, weights=weights.tobytes()), path)


def measure(artifact: str, cache_dir: str) -> list[float]:
  env = {k: v for k, v in os.environ.items() if k != "POCL_CACHE_DIR"} | {"EDGEML_CACHE_DIR": cache_dir}
  start = time.perf_counter()
  out = subprocess.run([sys.executable, "-c", CHILD, artifact], env=env, capture_output=True, text=True, check=True)
  return json.loads(out.stdout) + [time.perf_counter() - start]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m tools.loadtime",
                                   description=__doc__.split("\n\n")[0].split(". `")[0] + ".")
  parser.add_argument("artifact", nargs="?", help="a compiled .edgeml file (default: a demo artifact written to a "
                      "temporary folder)")
  parser.add_argument("--rounds", type=int, default=3, help="cold + warm pairs to time (default 3)")
  args = parser.parse_args(argv)
  if args.rounds < 1: parser.error("--rounds must be at least 1")
  if args.artifact and not os.path.isfile(args.artifact):
    raise SystemExit(f"loadtime: no such artifact: {args.artifact}")
  with tempfile.TemporaryDirectory(prefix="edgeml-loadtime-") as tmp:
    artifact = args.artifact or os.path.join(tmp, "demo.edgeml")
    if not args.artifact: write_demo(artifact)
    cache = os.path.join(tmp, "cache")
    print(f"{artifact}: seconds per stage, each run a fresh process")
    print(f"{'run':<6}" + "".join(f"{c:>9}" for c in COLUMNS) + f"{'load':>9}{'process':>9}")
    for _ in range(args.rounds):
      shutil.rmtree(cache, ignore_errors=True)
      for kind in ("cold", "warm"):
        times = measure(artifact, cache)
        print(f"{kind:<6}" + "".join(f"{t:9.3f}" for t in times[:-1]) + f"{sum(times[1:-1]):9.3f}{times[-1]:9.3f}")


if __name__ == "__main__":
  main()
