"""edgeml-validate: run an ONNX model with onnxruntime (the reference) and its compiled artifact with the edgeml
runtime on the same inputs; print the max abs and rel error per output; exit 1 beyond tolerance.

  edgeml-validate model.onnx model.edgeml [--inputs feeds.npz] [--rtol 1e-3] [--atol 1e-4]
"""
import argparse
import os
import sys

import numpy as np


def random_feeds(specs, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  feeds = {}
  for s in specs:
    dtype = np.dtype(s.dtype)
    if dtype.kind == "f": feeds[s.name] = rng.standard_normal(s.shape).astype(dtype)
    elif dtype.kind == "b": feeds[s.name] = rng.random(s.shape) < 0.5
    else: feeds[s.name] = rng.integers(0, 10, s.shape).astype(dtype)
  return feeds


def compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> tuple[float, float, bool]:
  if got.shape != want.shape: return float("inf"), float("inf"), False
  diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
  rel = diff / np.maximum(np.abs(want.astype(np.float64)), 1e-12)
  ok = bool(np.all(diff <= atol + rtol * np.abs(want.astype(np.float64))))
  return float(diff.max(initial=0)), float(rel.max(initial=0)), ok


def main(argv=None):
  ap = argparse.ArgumentParser(prog="edgeml-validate", description=__doc__.split("\n")[0])
  ap.add_argument("model")
  ap.add_argument("artifact")
  ap.add_argument("--inputs", help=".npz with one array per input name (default: random inputs)")
  ap.add_argument("--rtol", type=float, default=1e-3)
  ap.add_argument("--atol", type=float, default=1e-4)
  args = ap.parse_args(argv)
  import onnxruntime
  import compiled
  from compiled.artifact import ArtifactError
  from compiled.device import DeviceError
  if not os.path.isfile(args.model): raise SystemExit(f"edgeml-validate: no such model file: {args.model}")
  try: prog = compiled.load(args.artifact)
  except (OSError, ArtifactError, DeviceError) as e: raise SystemExit(f"edgeml-validate: {e}")
  if args.inputs:
    with np.load(args.inputs) as data: feeds = {s.name: data[s.name] for s in prog.inputs if s.name in data}
    missing = [s.name for s in prog.inputs if s.name not in feeds]
    if missing: raise SystemExit(f"edgeml-validate: {args.inputs} has no array for input(s) {missing}")
  else:
    feeds = random_feeds(prog.inputs)
  got = prog.run(feeds)
  session = onnxruntime.InferenceSession(args.model, providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]
  if unmatched := [s.name for s in prog.outputs if s.name not in names]:
    raise SystemExit(f"edgeml-validate: {args.artifact} has outputs {unmatched} that {args.model} lacks "
                     f"(its outputs: {names}); is the artifact compiled from this model?")
  want = dict(zip(names, session.run(names, feeds)))
  failed = 0
  print(f"{'output':<24} {'shape':<18} {'max abs err':>12} {'max rel err':>12}  result")
  for spec in prog.outputs:
    abs_err, rel_err, ok = compare(got[spec.name], want[spec.name], args.rtol, args.atol)
    failed += not ok
    print(f"{spec.name:<24} {str(tuple(spec.shape)):<18} {abs_err:12.3e} {rel_err:12.3e}  {'ok' if ok else 'FAIL'}")
  print(f"{len(prog.outputs) - failed} passed, {failed} failed (rtol {args.rtol}, atol {args.atol})")
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
