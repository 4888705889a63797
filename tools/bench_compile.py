"""Compile time per stage and model: each model is compiled (untuned) in a fresh process, so nothing is cached, and the
table shows CPU seconds (time.process_time, which a machine loaded by other work does not inflate) per stage with the
wall-clock total beside them. Stages: modules (importing the compiler), import (ONNX to the lazy graph), schedule,
fold (constants evaluated on the host), plan (buffers, weights, arena), render (code generation), write.

  python -m tools.bench_compile [model.onnx ...] [--target pocl] [--json OUT.json]

Without models: the demo model (edgeml/demo_model.py) and ../shared/models/*.onnx when present.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

STAGES = ("modules", "import", "schedule", "fold", "plan", "render", "write")
SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "models")

CHILD = r"""
import json, sys, time
w0, c0 = time.perf_counter(), time.process_time()
from edgeml.compile import compile_model
stages = {"modules": (time.perf_counter() - w0, time.process_time() - c0)}
result = compile_model(sys.argv[1], sys.argv[2], target=sys.argv[3], log=lambda line: None, progress=False)
stages.update(result.stages)
print(json.dumps({"stages": stages, "kernels": len(result.spec.kernels)}))
"""


def measure(model: str, target: str, folder: str) -> dict:
  """{"stages": {name: (wall, cpu)}, "kernels": n} of one compile in a fresh process."""
  out = os.path.join(folder, os.path.splitext(os.path.basename(model))[0] + ".edgeml")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, "-c", CHILD, model, out, target], capture_output=True, text=True, cwd=root)
  if done.returncode: raise SystemExit(f"bench_compile: compiling {model} failed:\n{done.stderr.strip().splitlines()[-1]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m tools.bench_compile", description=__doc__.split("\n\n")[0])
  ap.add_argument("models", nargs="*", help=".onnx files (default: the demo model and ../shared/models/*.onnx)")
  ap.add_argument("--target", default="pocl", help="target to compile for (default pocl; no device is needed)")
  ap.add_argument("--json", metavar="OUT.json", help="also write the numbers as JSON")
  args = ap.parse_args(argv)
  for m in args.models:
    if not os.path.isfile(m): raise SystemExit(f"bench_compile: no such model file: {m}")
  with tempfile.TemporaryDirectory() as folder:
    models = list(args.models)
    if not models:
      from edgeml import demo_model
      models.append(os.path.join(folder, "demo.onnx"))
      demo_model.build(models[0])
      models += sorted(glob.glob(os.path.join(SHARED, "*.onnx")))
    rows = {}
    print(f"{'model':<16} {'kernels':>7} " + " ".join(f"{s:>8}" for s in STAGES) + f" {'CPU s':>7} {'wall s':>7}")
    for m in models:
      r = measure(m, args.target, folder)
      name = os.path.splitext(os.path.basename(m))[0]
      cpu = {s: r["stages"].get(s, (0, 0))[1] for s in STAGES}
      wall = sum(w for w, _ in r["stages"].values())
      rows[name] = {"kernels": r["kernels"], "stages": r["stages"], "cpu": sum(cpu.values()), "wall": wall}
      print(f"{name:<16} {r['kernels']:>7} " + " ".join(f"{cpu[s]:8.2f}" for s in STAGES) +
            f" {sum(cpu.values()):7.2f} {wall:7.2f}", flush=True)
  print("(stage columns: CPU seconds; wall s is what the clock saw, including waits for a core on a loaded machine)")
  if args.json:
    with open(args.json, "w") as f: json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
