"""Runs an artifact's kernels with every buffer of its plan in an allocation of its own, and compares the outputs with
a reference .npz (one array per input and output name). For a memory checker such as Oclgrind, which checks bounds per
allocation: in compiled.runtime the plan's buffers are sub-buffers of one arena and one weights buffer, so a read past
one buffer into its neighbour would go unseen there. The kernels are launched as the runtime launches them, chains
(compiled/chain.py) included, so Oclgrind also sees each chain's work-group and its barriers. Used by
tests/test_oclgrind.py.

  python tests/oclgrind_run.py model.edgeml reference.npz [--rtol 1e-3] [--atol 1e-4]   exit 1 on a mismatch
"""
import argparse
import os
import sys
import zipfile

import numpy as np
import pyopencl as cl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from compiled.artifact import ArtifactError, read_artifact   # noqa: E402
from compiled.chain import launch_count, launches    # noqa: E402
from compiled.device import default_device    # noqa: E402

SCALARS = {"int32": np.int32, "float32": np.float32}
IMAGE_CHANNEL_TYPES = {"float32": cl.channel_type.FLOAT, "float16": cl.channel_type.HALF_FLOAT}


def image(dev, b, blob: np.ndarray) -> cl.Image:
  """Image weights (the adreno target): an RGBA image2d of image_width x image_height texels, rows `pitch` bytes."""
  fmt = cl.ImageFormat(cl.channel_order.RGBA, IMAGE_CHANNEL_TYPES[b.image_format])
  return cl.create_image(dev.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, fmt,
                         shape=(b.image_width, b.image_height), pitches=(b.pitch,), hostbuf=blob[b.offset:b.offset + b.nbytes])


def run_separately(spec, feeds: dict) -> dict:
  """{output name: array} after one run of every kernel, each plan buffer a device allocation of exactly its size."""
  dev = default_device()
  blob = np.frombuffer(spec.weights, np.uint8)
  bufs = [image(dev, b, blob) if b.kind == "image" else dev.upload(blob[b.offset:b.offset + b.nbytes])
          if b.kind == "weights" else dev.alloc(b.nbytes) for b in spec.buffers]
  for t in spec.inputs: bufs[t.buffer] = dev.upload(np.asarray(feeds[t.name], t.dtype).reshape(t.shape))
  source, kernels, _ = launches(spec.source, spec.kernels, dev.target.work_group)
  program = dev.build(source, spec.build_options)
  for k in kernels:
    kernel = cl.Kernel(program, k.name)
    for i, (kind, value) in enumerate(k.args): kernel.set_arg(i, bufs[value] if kind == "buffer" else SCALARS[kind](value))
    cl.enqueue_nd_range_kernel(dev.queue, kernel, k.global_size, k.local_size)
  return {t.name: dev.download(bufs[t.buffer], t.shape, t.dtype) for t in spec.outputs}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("artifact")
  ap.add_argument("reference", help=".npz with an array per input and output name")
  ap.add_argument("--rtol", type=float, default=1e-3)
  ap.add_argument("--atol", type=float, default=1e-4)
  args = ap.parse_args(argv)
  try: spec = read_artifact(args.artifact)
  except (OSError, ArtifactError) as e: raise SystemExit(f"oclgrind_run: {e}")
  try:
    with np.load(args.reference) as ref: ref = dict(ref)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise SystemExit(f"oclgrind_run: {args.reference} is not a readable .npz: {e}")
  if missing := [t.name for t in (*spec.inputs, *spec.outputs) if t.name not in ref]:
    raise SystemExit(f"oclgrind_run: {args.reference} has no array for {missing}")
  print(f"device: {default_device().name}; {len(spec.kernels)} kernels in {launch_count(spec.kernels)} launches, "
        f"{len(spec.buffers)} buffers")
  got = run_separately(spec, ref)
  failed = 0
  for name, out in got.items():
    want = ref[name]
    ok = out.shape == want.shape and bool(np.allclose(out, want, rtol=args.rtol, atol=args.atol))
    failed += not ok
    err = float(np.abs(out.astype(np.float64) - want).max()) if out.shape == want.shape else float("inf")
    print(f"{name}: max abs err {err:.3e} {'ok' if ok else 'MISMATCH'}")
  print(f"{len(got) - failed} outputs match, {failed} mismatch (rtol {args.rtol}, atol {args.atol})")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
