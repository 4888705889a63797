"""edgeml-compile: an ONNX model to a self-contained artifact (kernels, launch list, buffer plan, weights).

  edgeml-compile model.onnx -o model.edgeml [--shape input=1x3x224x224] [--target pocl|nvidia|adreno] [--fp16] [--tune]
"""
import argparse
import os
import sys
import time
from compiled.artifact import TARGETS


def parse_shapes(items: list[str]) -> dict:
  shapes = {}
  for item in items:
    name, sep, dims = item.rpartition("=")
    try:
      if not sep or not name: raise ValueError
      shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
      raise SystemExit(f"edgeml-compile: --shape {item!r} is not NAME=D0xD1x... (for example input=1x3x224x224)")
  return shapes


def compile_model(model_path: str, out_path: str, shapes: dict | None = None, target: str = "pocl", tune: bool = False,
                  fp16: bool = False, log=print):
  """Compile and write the artifact; returns the Compiled result. Progress goes to `log`."""
  from edgeml.compile import compile_graph, placeholder
  from edgeml.onnx import OnnxModel
  from compiled.artifact import write_artifact
  t0 = time.perf_counter()
  model = OnnxModel(model_path, shapes=shapes or {})
  inputs = {name: placeholder(name, shape, dtype) for name, shape, dtype in model.inputs}
  log(f"[1/3] imported {model_path}: inputs {', '.join(f'{n} {s} {d}' for n, s, d in model.inputs)}")
  outputs = model(inputs)
  if tune: log("      tuning: timing kernel variants on the device (cached for next time)")
  result = compile_graph(inputs, outputs, target=target, tune=tune, fp16=fp16, log=log)
  spec = result.spec
  log(f"[2/3] {len(spec.kernels)} kernels ({result.folded} constant kernels folded), "
      f"arena {result.planned:,} B planned for {result.unplanned:,} B of intermediates "
      f"(liveness lower bound {result.lower_bound:,} B, ratio {result.planned / max(result.lower_bound, 1):.2f}), "
      f"weights {len(spec.weights):,} B")
  write_artifact(spec, out_path)
  log(f"[3/3] wrote {out_path} ({os.path.getsize(out_path):,} B, target {target}{', fp16 weights' if fp16 else ''}) "
      f"in {time.perf_counter() - t0:.1f} s")
  return result


def main(argv=None):
  ap = argparse.ArgumentParser(prog="edgeml-compile", description="Compile an ONNX model into an edgeml artifact.")
  ap.add_argument("model", help="the .onnx file")
  ap.add_argument("-o", "--output", help="artifact path (default: the model's name with .edgeml)")
  ap.add_argument("--shape", action="append", default=[], metavar="NAME=D0xD1x...", help="fix an input's shape")
  ap.add_argument("--target", default="pocl", choices=TARGETS)
  ap.add_argument("--fp16", action="store_true", help="store weights as float16 (half the bytes; math stays float32)")
  ap.add_argument("--tune", action="store_true", help="time each kernel's variants on this machine's device and keep "
                  "the fastest (slower compile, cached)")
  args = ap.parse_args(argv)
  if not os.path.isfile(args.model): raise SystemExit(f"edgeml-compile: no such model file: {args.model}")
  out = args.output or os.path.splitext(args.model)[0] + ".edgeml"
  try:
    compile_model(args.model, out, parse_shapes(args.shape), args.target, args.tune, args.fp16)
  except (ValueError, NotImplementedError) as e:
    print(f"edgeml-compile: {args.model}: {e}", file=sys.stderr)
    raise SystemExit(1)


if __name__ == "__main__":
  main()
