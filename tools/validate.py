"""edgeml-validate: run an ONNX model with onnxruntime (the reference) and its compiled artifact with the edgeml
runtime on the same inputs, print the error of each output, and exit 1 when any output is beyond the tolerance.

  edgeml-validate model.onnx model.edgeml [--inputs feeds.npz] [--rtol 1e-3] [--atol 1e-4]

An output passes when every element satisfies |edgeml - onnxruntime| <= atol + rtol * |onnxruntime| (numpy's
allclose). Per output the table shows the largest absolute error and "worst/allowed": the largest ratio of an
element's error to its allowance atol + rtol * |onnxruntime|, so the output passes exactly when it is at most 1.
"""
import argparse
import os
import sys
import zipfile

import numpy as np
from compiled.choice import add_device_arguments, use_device
from compiled.feeds import random_feeds


def compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> tuple[float, float, bool]:
  """(max abs error, max error / allowance, passed): passed when every |got - want| <= atol + rtol * |want|."""
  if got.shape != want.shape: return float("inf"), float("inf"), False
  want64 = want.astype(np.float64)
  diff = np.abs(got.astype(np.float64) - want64)
  allowed = atol + rtol * np.abs(want64)
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = np.where(diff == 0, 0.0, diff / allowed)
  ratio = np.where(np.isnan(ratio), np.inf, ratio)  # a NaN on either side never passes
  worst = float(ratio.max(initial=0))
  return float(np.nan_to_num(diff, nan=np.inf).max(initial=0)), worst, worst <= 1


def reference_session(path: str):
  """The onnxruntime session of `path`, or SystemExit with one line when onnxruntime cannot load it."""
  import onnxruntime
  from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
  try: return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  except (ort_errors.InvalidProtobuf, ort_errors.InvalidArgument, ort_errors.InvalidGraph, ort_errors.NoModel,
          ort_errors.Fail, ort_errors.NotImplemented) as e:
    reason = str(e).split(" failed:", 1)[-1].strip()
    raise SystemExit(f"edgeml-validate: {path} is not an ONNX model onnxruntime can load ({reason})")


def main(argv=None):
  ap = argparse.ArgumentParser(prog="edgeml-validate", description=__doc__.split("\n\n")[0])
  ap.add_argument("model", help="the .onnx model the artifact was compiled from")
  ap.add_argument("artifact", help="the compiled .edgeml file")
  ap.add_argument("--inputs", help=".npz with one array per input name (default: random inputs, seed 0)")
  ap.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance: an element passes when "
                  "|edgeml - onnxruntime| <= atol + rtol * |onnxruntime| (default 1e-3)")
  ap.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance, see --rtol (default 1e-4)")
  add_device_arguments(ap)
  args = ap.parse_args(argv)
  use_device(args.device)
  import compiled
  from compiled.artifact import ArtifactError
  from compiled.device import DeviceError
  if not os.path.isfile(args.model): raise SystemExit(f"edgeml-validate: no such model file: {args.model}")
  session = reference_session(args.model)
  try: prog = compiled.load(args.artifact, allow_target_mismatch=args.allow_target_mismatch)
  except (OSError, ArtifactError, DeviceError) as e: raise SystemExit(f"edgeml-validate: {e}")
  if args.inputs:
    try:
      with np.load(args.inputs, allow_pickle=False) as data:
        feeds = {s.name: data[s.name] for s in prog.inputs if s.name in data}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      raise SystemExit(f"edgeml-validate: --inputs {args.inputs}: {e}")
    missing = [s.name for s in prog.inputs if s.name not in feeds]
    if missing: raise SystemExit(f"edgeml-validate: {args.inputs} has no array for input(s) {missing}")
  else:
    feeds = random_feeds(prog.inputs)
  got = prog.run(feeds)
  names = [o.name for o in session.get_outputs()]
  if unmatched := [s.name for s in prog.outputs if s.name not in names]:
    raise SystemExit(f"edgeml-validate: {args.artifact} has outputs {unmatched} that {args.model} lacks "
                     f"(its outputs: {names}); is the artifact compiled from this model?")
  want = dict(zip(names, session.run(names, feeds)))
  failed = 0
  print(f"{'output':<24} {'shape':<18} {'max abs err':>12} {'worst/allowed':>14}  result")
  for spec in prog.outputs:
    abs_err, worst, ok = compare(got[spec.name], want[spec.name], args.rtol, args.atol)
    failed += not ok
    print(f"{spec.name:<24} {str(tuple(spec.shape)):<18} {abs_err:12.3e} {worst:14.3f}  {'ok' if ok else 'FAIL'}")
  print(f"{len(prog.outputs) - failed} passed, {failed} failed (pass: |edgeml - onnxruntime| <= {args.atol:g} + "
        f"{args.rtol:g} * |onnxruntime| everywhere, i.e. worst/allowed <= 1)")
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
