"""edgeml-compile: an ONNX model to a self-contained artifact (kernels, launch list, buffer plan, weights).

  edgeml-compile model.onnx -o model.edgeml [--shape input=1x3x224x224] [--target auto|pocl|nvidia|adreno|generic] [--fp16] [--tune]
"""
import argparse
import os
import sys
from compiled.targets import TARGETS


def parse_shapes(items: list[str]) -> dict:
  shapes = {}
  for item in items:
    name, sep, dims = item.rpartition("=")
    try:
      if not sep or not name: raise ValueError
      shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
      raise SystemExit(f"edgeml-compile: --shape {item!r} is not NAME=D0xD1x... (for example input=1x3x224x224)")
    if any(d <= 0 for d in shapes[name]): raise SystemExit(f"edgeml-compile: --shape {item!r}: every size must be positive")
  return shapes


def parse_consts(items: list[str], const_file: str | None = None) -> dict:
  """--const NAME=VALUE (a number or a comma list) and --const-file feeds.npz: inputs fixed at compile time."""
  import zipfile
  import numpy as np
  consts = {}
  if const_file:
    try:
      with np.load(const_file, allow_pickle=False) as f: consts.update((k, f[k]) for k in f.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e: raise SystemExit(f"edgeml-compile: --const-file {const_file!r}: {e}")
  for item in items:
    name, sep, value = item.partition("=")
    try:
      if not sep or not name: raise ValueError
      parts = [float(v) if any(c in v.lower() for c in ".en") else int(v) for v in value.split(",")]
      consts[name] = np.array(parts if "," in value else parts[0])
    except ValueError:
      raise SystemExit(f"edgeml-compile: --const {item!r} is not NAME=VALUE or NAME=V0,V1,... (for example sr=16000)")
  return consts


def check_onnx(path: str) -> None:
  """SystemExit naming `path` unless it holds an ONNX model with a graph."""
  import onnx
  from google.protobuf.message import DecodeError
  try: model = onnx.load(path, load_external_data=False)
  except DecodeError: raise SystemExit(f"edgeml-compile: {path} is not an ONNX model (protobuf parsing failed)")
  if not model.graph.output: raise SystemExit(f"edgeml-compile: {path} is not an ONNX model (it has no graph outputs)")


def check_output(path: str) -> None:
  """Before any compile work: create the artifact's folder when it is missing (and say so), and refuse one that cannot
  be written (a file is created and removed there: permission bits alone do not stop root, a read-only mount does)."""
  import tempfile
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path): raise SystemExit(f"edgeml-compile: the output {path} is a folder; give a file name")
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise SystemExit(f"edgeml-compile: cannot write {path}: {folder} is a file, not a folder")
  if not os.path.isdir(folder):
    try: os.makedirs(folder)
    except OSError as e: raise SystemExit(f"edgeml-compile: cannot create the output folder {folder}: {e.strerror}")
    print(f"edgeml-compile: created the output folder {folder}")
  try:
    with tempfile.TemporaryFile(dir=folder): pass
  except OSError as e: raise SystemExit(f"edgeml-compile: cannot write to the output folder {folder}: {e.strerror}")


def main(argv=None):
  ap = argparse.ArgumentParser(prog="edgeml-compile", description="Compile an ONNX model into an edgeml artifact.")
  ap.add_argument("model", help="the .onnx file")
  ap.add_argument("-o", "--output", help="artifact path (default: the model's name with .edgeml)")
  ap.add_argument("--shape", action="append", default=[], metavar="NAME=D0xD1x...", help="fix an input's shape")
  ap.add_argument("--target", default="auto", choices=("auto", *TARGETS),
                  help="the device class to generate code for; auto (the default) takes the target of the device "
                  "EDGEML_DEVICE selects (see compiled/targets.py)")
  ap.add_argument("--const", action="append", default=[], metavar="NAME=VALUE",
                  help="fix an input to a value at compile time (a number or a comma list); it is no longer an input")
  ap.add_argument("--const-file", metavar="FEEDS.npz", help="fix the inputs named in this .npz at compile time")
  ap.add_argument("--fp16", action="store_true", help="store weights as float16 (half the bytes; math stays float32)")
  ap.add_argument("--tune", action="store_true", help="time each kernel's variants on this machine's device and keep "
                  "the fastest (slower compile, cached)")
  ap.add_argument("--device", metavar="NAME|INDEX", help="the OpenCL device --tune times kernels on and --target auto "
                  "takes the target from (a name substring or an index; default EDGEML_DEVICE, else the first GPU); "
                  "compiling for a named target needs no device")
  ap.add_argument("--sign", metavar="KEY.pem", help="sign the artifact with this Ed25519 private key (make one with "
                  "edgeml-keygen); compiled.load(..., trusted_keys=[KEY.pub]) then accepts it")
  args = ap.parse_args(argv)
  from compiled.choice import use_device
  use_device(args.device)
  if args.sign:
    from compiled.artifact import ArtifactError
    from compiled.signing import load_private_key
    try: load_private_key(args.sign)
    except ArtifactError as e: raise SystemExit(f"edgeml-compile: --sign: {e}")
  if not os.path.isfile(args.model): raise SystemExit(f"edgeml-compile: no such model file: {args.model}")
  out = args.output or os.path.splitext(args.model)[0] + ".edgeml"
  try:
    check_onnx(args.model)
    check_output(out)
    from edgeml.compile import compile_model
    compile_model(args.model, out, parse_shapes(args.shape), args.target, args.tune, args.fp16,
                  consts=parse_consts(args.const, args.const_file), sign_key=args.sign)
  except (ValueError, NotImplementedError) as e:
    print(f"edgeml-compile: {args.model}: {e}", file=sys.stderr)
    raise SystemExit(1)
  except KeyboardInterrupt:
    print("edgeml-compile: interrupted", file=sys.stderr)
    raise SystemExit(130)


if __name__ == "__main__":
  main()
