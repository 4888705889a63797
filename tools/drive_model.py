"""Write the project's driving model (edgeml/demo_model.py) and its modeld config beside it
(OUT.modeld.json, the name modeld looks for beside OUT.edgeml).

  python -m tools.drive_model OUT.onnx [--small] [--height 128] [--width 256] [--hidden 256] [--seed 0]

The default is the demo model (mini_drive's structure: conv stem, EfficientNet-lite blocks, GRU, plan, lane and lead
heads); --small writes the one-conv model the daemon tests use. The same arguments give the same bytes.
"""
import argparse
import json
import os

from compiled.modelconfig import config_path
from edgeml.demo_model import CONFIG


def main(argv=None):
  from edgeml import demo_model
  ap = argparse.ArgumentParser(prog="python -m tools.drive_model", description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  ap.add_argument("output", help="the .onnx file to write")
  ap.add_argument("--small", action="store_true", help="the small test model (height, width multiples of 4)")
  ap.add_argument("--height", type=int, help="input height (the demo model: a multiple of 64; default 128, "
                  "--small 32)")
  ap.add_argument("--width", type=int, help="input width (default 256, --small 64)")
  ap.add_argument("--hidden", type=int, help="recurrent state size (default 256, --small 16)")
  ap.add_argument("--seed", type=int, default=0, help="weight seed")
  args = ap.parse_args(argv)
  sizes = {k: v for k, v in (("height", args.height), ("width", args.width), ("hidden", args.hidden)) if v is not None}
  folder = os.path.dirname(os.path.abspath(args.output))
  if not os.path.isdir(folder): raise SystemExit(f"drive_model: no such folder: {folder}")
  try:
    (demo_model.build_small if args.small else demo_model.build)(args.output, seed=args.seed, **sizes)
  except ValueError as e: raise SystemExit(f"drive_model: {e}")
  config = config_path(args.output)
  with open(config, "w") as f: json.dump(CONFIG, f, indent=1)
  print(f"wrote {args.output} and its modeld config {config}")


if __name__ == "__main__":
  main()
