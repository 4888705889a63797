"""A small conv -> relu -> pool -> linear network run eagerly (edgeml.realize) on the default OpenCL device, checked
against numpy, with the per-kernel table (launch sizes, OpenCL-event times, GFLOP/s, GB/s). `python -m tools.demo_network`
(the end-to-end demo is tools/demo.py)."""
import argparse
import time
import numpy as np
from compiled.device import default_device
from edgeml import Tensor
from compiled.debug import kernel_line
from edgeml.realize import realize


def reference(x, w, b, lw, lb):
  n, c, h, wd = x.shape
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  conv = np.zeros((n, w.shape[0], h, wd), np.float64)
  for kh in range(3):
    for kw in range(3):
      conv += np.einsum("nchw,oc->nohw", xp[:, :, kh:kh + h, kw:kw + wd], w[:, :, kh, kw])
  act = np.maximum(conv + b.reshape(1, -1, 1, 1), 0)
  pooled = act.reshape(n, act.shape[1], h // 2, 2, wd // 2, 2).max((3, 5))
  return pooled.reshape(n, -1) @ lw.T + lb


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m tools.demo_network", description=__doc__.split(". `")[0] + ".")
  ap.add_argument("--runs", type=int, default=20, help="timed runs; the table shows the median per kernel (default 20)")
  args = ap.parse_args(argv)
  if args.runs < 1: ap.error("--runs must be at least 1")
  dev = default_device()
  print(f"device: {dev.name}")
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
  w = (rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32)
  b = rng.standard_normal(16).astype(np.float32) * 0.1
  lw = (rng.standard_normal((10, 16 * 16 * 16)) * 0.02).astype(np.float32)
  lb = rng.standard_normal(10).astype(np.float32) * 0.1
  weights = [Tensor(a) for a in (w, b, lw, lb)]

  def network(inp: Tensor) -> Tensor:
    tw, tb, tlw, tlb = weights
    return inp.conv2d(tw, tb, padding=1).relu().max_pool2d(2).flatten(1).linear(tlw, tlb)

  times: dict[str, list] = {}
  kernels = {}
  t0 = time.perf_counter()
  for i in range(args.runs + 1):
    stats = []
    out = network(Tensor(x))
    realize([out.node], stats)
    if i == 0: first = time.perf_counter() - t0   # includes OpenCL builds
    else:
      for k, s in stats:
        times.setdefault(k.name, []).append(s)
        kernels[k.name] = k
  err = np.abs(out.numpy() - reference(x, w, b, lw, lb)).max()
  print(f"network: conv3x3(3->16) + relu + maxpool2 + linear(4096->10); {len(kernels)} kernels; "
        f"first run (with builds) {first * 1e3:.0f} ms; max abs error vs numpy {err:.2e}")
  print(f"{'kernel':<28} {'launch':<16} {'median':>12} {'':>16} {'':>12}")
  total = 0.0
  for name, k in kernels.items():
    med = float(np.median(times[name]))
    total += med
    print(kernel_line(name, k.global_size, k.local_size, med, k.flops, k.bytes))
  print(f"total kernel time (median per kernel, summed): {total * 1e6:.1f} us over {args.runs} runs")
  if err > 1e-3: raise SystemExit(f"demo output differs from numpy by {err}")


if __name__ == "__main__":
  main()
