"""edgeml-bench: latency of each model through the edgeml runtime, onnxruntime CPU (2 threads and 1) and tinygrad on
the same OpenCL device (when the [bench] extra is installed), all measured in one run; prints median and p90 in ms
and the ratios edgeml/tinygrad and edgeml/onnxruntime.

  edgeml-bench [model.onnx ...] [--runs 50] [--fp16]

The default models are every model in ../shared/models when that folder is beside the checkout, else the project's
demo driving model (edgeml/demo_model.py). Models are compiled with --tune (kernel variants timed on this device,
cached) by edgeml-compile.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
import numpy as np

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"

TINYGRAD_SCRIPT = r"""
import json, sys, time, numpy as np
from tinygrad import Tensor, TinyJit
from tinygrad.nn.onnx import OnnxRunner
model, feeds_path, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
runner = OnnxRunner(model)
with np.load(feeds_path) as data: feeds = {k: data[k] for k in data.files}
@TinyJit
def step(**inputs): return {k: v.realize() for k, v in runner(inputs).items()}
times = []
for i in range(runs + 5):
  start = time.perf_counter()
  outs = step(**{k: Tensor(v).realize() for k, v in feeds.items()})
  for v in outs.values(): v.numpy()
  times.append(time.perf_counter() - start)
print(json.dumps(times[5:]))
"""


def feeds_for(model_path: Path, specs) -> dict:
  """The inputs stored beside the model (NAME.npz) when present, else seeded random ones."""
  npz = model_path.with_suffix(".npz")
  if npz.exists():
    with np.load(npz) as data:
      if all(s.name in data for s in specs): return {s.name: data[s.name] for s in specs}
  rng = np.random.default_rng(0)
  return {s.name: rng.standard_normal(s.shape).astype(s.dtype) if np.dtype(s.dtype).kind == "f"
          else rng.integers(0, 10, s.shape).astype(s.dtype) for s in specs}


def timed(fn, runs: int) -> list[float]:
  for _ in range(3): fn()
  out = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    out.append(time.perf_counter() - start)
  return out


def tinygrad_times(model: Path, feeds: dict, runs: int) -> list[float] | str:
  """Seconds per run, or why tinygrad could not run the model."""
  try:
    import tinygrad  # noqa: F401
  except ImportError:
    return "not installed (pip install -e .[bench])"
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "feeds.npz")
    np.savez(path, **feeds)
    env = dict(os.environ, DEV="CL")
    try:
      done = subprocess.run([sys.executable, "-c", TINYGRAD_SCRIPT, str(model), path, str(runs)], env=env,
                            capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
      return "timed out"
  if done.returncode != 0:
    last = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return "cannot run: " + (last[-1][:70] if last else f"exit {done.returncode}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def ort_times(model: Path, feeds: dict, threads: int, runs: int) -> list[float]:
  import onnxruntime
  opts = onnxruntime.SessionOptions()
  opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
  session = onnxruntime.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
  return timed(lambda: session.run(None, feeds), runs)


def stats(times, notes: list) -> str:
  if isinstance(times, str):
    notes.append(times)
    return f"{'(' + str(len(notes)) + ')':>19}"
  ms = np.array(times) * 1e3
  return f"{np.median(ms):8.2f} {np.percentile(ms, 90):8.2f}  "


def ratio(a, b) -> str:
  if isinstance(a, str) or isinstance(b, str): return "     -"
  return f"{np.median(a) / np.median(b):6.2f}"


def bench_model(model: Path, runs: int, out_dir: str, fp16: bool = False) -> dict:
  import compiled
  artifact = os.path.join(out_dir, model.stem + ".edgeml")
  print(f"compiling {model.name} (--tune{' --fp16' if fp16 else ''}) ...", file=sys.stderr, flush=True)
  done = subprocess.run([sys.executable, "-m", "tools.compile", str(model), "-o", artifact, "--tune",
                         *(["--fp16"] if fp16 else [])], stdout=subprocess.DEVNULL, cwd=Path(__file__).parents[1])
  if done.returncode: raise SystemExit(f"edgeml-bench: edgeml-compile {model} failed (exit {done.returncode})")
  prog = compiled.load(artifact)
  feeds = feeds_for(model, prog.inputs)
  print(f"timing {model.name}: edgeml, onnxruntime x2 / x1, tinygrad ...", file=sys.stderr, flush=True)
  row = {"edgeml": timed(lambda: prog.run(feeds), runs), "ort2": ort_times(model, feeds, 2, runs),
         "ort1": ort_times(model, feeds, 1, runs)}
  row["tinygrad"] = tinygrad_times(model, feeds, runs)
  return row


def main(argv=None):
  ap = argparse.ArgumentParser(prog="edgeml-bench", description=__doc__.split("\n\n")[0])
  ap.add_argument("models", nargs="*", help=".onnx files (default: ../shared/models/*.onnx, else the demo model)")
  ap.add_argument("--runs", type=int, default=50, help="timed runs per model and runtime (default 50)")
  ap.add_argument("--fp16", action="store_true", help="compile with float16 weight storage")
  args = ap.parse_args(argv)
  if args.runs < 1: ap.error("--runs must be at least 1")
  models = [Path(m) for m in args.models] or sorted(SHARED_MODELS.glob("*.onnx"))
  if missing := [str(m) for m in models if not m.is_file()]:
    raise SystemExit(f"edgeml-bench: no such model file: {missing[0]}")
  from compiled.device import default_device
  print(f"device: {default_device().name}; {args.runs} runs each; times in ms (median, p90)")
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    if not models:
      from edgeml.demo_model import build
      build(os.path.join(tmp, "demo_drive.onnx"))
      models = [Path(tmp) / "demo_drive.onnx"]
    for m in models: rows[m.stem] = bench_model(m, args.runs, tmp, args.fp16)
  head = f"{'model':<16} {'edgeml':>19} {'tinygrad (CL)':>19} {'onnxruntime x2':>19} {'onnxruntime x1':>19} {'e/tiny':>6} {'e/ort2':>6}"
  print(head)
  print("-" * len(head))
  notes = []
  for name, r in rows.items():
    print(f"{name:<16} {stats(r['edgeml'], notes)} {stats(r['tinygrad'], notes)} {stats(r['ort2'], notes)} "
          f"{stats(r['ort1'], notes)} {ratio(r['edgeml'], r['tinygrad'])} {ratio(r['edgeml'], r['ort2'])}")
  for i, note in enumerate(notes): print(f"({i + 1}) {note}")
  print("targets: edgeml/tinygrad <= 0.5 on every model tinygrad runs; edgeml/onnxruntime x2 <= 3 on mini_drive")


if __name__ == "__main__":
  main()
