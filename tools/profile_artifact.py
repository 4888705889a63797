"""edgeml-profile: where the milliseconds go on the device, kernel by kernel, and how far each is from the limit.

  edgeml-profile model.edgeml [-n 100] [--top K] [--sort time|roofline] [--remeasure] [--trace out.json]

Runs the artifact n times (after its warm-up run) on random inputs and prints one row per kernel, slowest first (or
furthest from its roofline first with --sort roofline): launch size, median OpenCL-event time, share of the summed
medians, GFLOP/s and GB/s from the compiler's counts, and "roof": the kernel's roofline time, max(flops / peak FLOP/s,
bytes / peak bandwidth), as a percentage of the time it took, with the peak that bounds it ("limit": flop or mem).
The peaks are measured once per device and driver by compiled/roofline.py and cached (--remeasure measures again,
keeping the better figures). The kernel that loses the most time against its roofline is marked "<- worst". Then
the end-to-end latency of a whole execute() (inputs in, kernels, outputs out, on the host clock) as percentiles, and
the host time: wall minus the kernels' device time. --trace writes a Chrome/Perfetto trace (open it at ui.perfetto.dev
or chrome://tracing) with one slice per kernel per run.
"""
import argparse
import json
import time

import numpy as np

import compiled
from compiled.artifact import ArtifactError
from compiled import roofline
from compiled.atomic import write_atomic
from compiled.choice import add_device_arguments, use_device
from compiled.device import DeviceError


def measure(program, runs: int):
  """(kernel seconds (runs, kernels), [(kernel, start ns, end ns)] per run, end-to-end seconds per run)."""
  rng = np.random.default_rng(0)
  for t in program.inputs:
    buf = program.input_buffer(t.name)
    buf[...] = rng.random(buf.shape) if buf.dtype.kind == "f" else 0
  events, wall = [], np.empty(runs)
  for i in range(runs):
    t0 = time.perf_counter()
    program.execute()
    wall[i] = time.perf_counter() - t0
    events.append(program.last_kernel_times())
  times = np.array([[end - start for _, start, end in run] for run in events]) * 1e-9
  return times, events, wall


def kernel_rows(program, times, peaks: roofline.Peaks | None = None, by: str = "time") -> list[dict]:
  """One row per kernel (name, launch, median s, share, GFLOP/s, GB/s; with `peaks` also the roofline time `bound`,
  `roof` = bound / median, `limit` (the peak that bounds it: flop or mem) and `lost` = median - bound), slowest first,
  or lowest roof first (by="roofline")."""
  medians = np.median(times, axis=0)
  total = max(medians.sum(), 1e-12)
  rows = [dict(name=k.name, launch=_launch(k), seconds=s, share=s / total, gflops=k.flops / max(s, 1e-12) / 1e9,
               gbs=k.bytes / max(s, 1e-12) / 1e9) for k, s in zip(program.kernels, medians)]
  if peaks is not None:
    for r, k in zip(rows, program.kernels):
      r["bound"] = roofline.bound_seconds(k.flops, k.bytes, peaks)
      r["roof"] = roofline.fraction(r["seconds"], k.flops, k.bytes, peaks)
      r["limit"] = roofline.limit(k.flops, k.bytes, peaks)
      r["lost"] = max(r["seconds"] - r["bound"], 0.0)
    worst = max(rows, key=lambda r: r["lost"], default=None)
    for r in rows: r["worst"] = r is worst
  if by == "roofline" and peaks is not None: return sorted(rows, key=lambda r: (r["roof"], -r["seconds"]))
  return sorted(rows, key=lambda r: -r["seconds"])


def _launch(k) -> str:
  glob = "x".join(map(str, k.global_size))
  return glob if k.local_size is None else f"{glob}/{'x'.join(map(str, k.local_size))}"


def format_rows(rows: list[dict], top: int | None = None) -> list[str]:
  width = max([len(r["name"]) for r in rows] + [6])
  roof = bool(rows) and "roof" in rows[0]
  lines = [f"{'kernel':<{width}}  {'launch':<18} {'median us':>10} {'share':>6} {'GFLOP/s':>8} {'GB/s':>7}"
           + (f" {'roof':>6} limit" if roof else "")]
  for r in rows[:top]:
    line = (f"{r['name']:<{width}}  {r['launch']:<18} {r['seconds'] * 1e6:10.1f} {r['share']:6.1%} "
            f"{r['gflops']:8.2f} {r['gbs']:7.2f}" + (f" {r['roof']:6.1%} {r['limit']:<5}" if roof else ""))
    lines.append(line + "  <- worst" if r.get("worst") else line.rstrip())
  if top is not None and len(rows) > top:
    rest = rows[top:]
    lines.append(f"{f'... {len(rest)} more':<{width}}  {'':<18} {sum(r['seconds'] for r in rest) * 1e6:10.1f} "
                 f"{sum(r['share'] for r in rest):6.1%}")
  return lines


def percentiles(seconds) -> str:
  p = np.percentile(np.asarray(seconds) * 1e3, [50, 90, 99])
  return f"p50 {p[0]:.2f} ms, p90 {p[1]:.2f} ms, p99 {p[2]:.2f} ms, max {np.max(seconds) * 1e3:.2f} ms"


def roofline_summary(peaks: roofline.Peaks, rows: list[dict], k: int = 3) -> list[str]:
  """The peaks, and the `k` kernels that lose the most time against their roofline."""
  total = max(sum(r["seconds"] for r in rows), 1e-12)
  lines = [f"roofline: peak {peaks.flops / 1e9:.1f} GFLOP/s, {peaks.bandwidth / 1e9:.1f} GB/s (measured on this "
           f"device; kernels at their roofline would take {sum(r['bound'] for r in rows) * 1e6:.1f} us of "
           f"{total * 1e6:.1f} us)"]
  for r in sorted(rows, key=lambda r: -r["lost"])[:k]:
    lines.append(f"  loses {r['lost'] * 1e6:8.1f} us ({r['lost'] / total:5.1%} of device time): {r['name']} at "
                 f"{r['roof']:.1%} of roofline")
  return lines


def host_time(wall, times) -> str:
  """Host time per run: execute()'s wall time minus the kernels' device time, and its ratio to the device time."""
  device = np.asarray(times).sum(axis=1)
  host, dev = np.median(np.asarray(wall) - device), np.median(device)
  return (f"host time: {host * 1e3:.3f} ms per run (median wall - device time; device {dev * 1e3:.3f} ms, "
          f"host/device {host / max(dev, 1e-12):.1%})")


def chrome_trace(program, events) -> dict:
  """Chrome trace events: one complete ('X') slice per kernel per run, microseconds from the first kernel."""
  t0 = events[0][0][1]
  slices = [{"name": k.name, "ph": "X", "ts": (start - t0) / 1e3, "dur": (end - start) / 1e3, "pid": 1, "tid": 1,
             "cat": "kernel", "args": {"run": i, "launch": _launch(k), "flops": k.flops, "bytes": k.bytes}}
            for i, run in enumerate(events) for k, start, end in run]
  names = [{"name": "process_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": program.device.name}},
           {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": program.name}}]
  return {"traceEvents": names + slices, "displayTimeUnit": "ms"}


def main(argv=None):
  ap = argparse.ArgumentParser(prog="edgeml-profile", description=__doc__.split("\n\n")[0])
  ap.add_argument("artifact", help="a compiled .edgeml file")
  ap.add_argument("-n", "--runs", type=int, default=100, help="timed runs (default 100)")
  ap.add_argument("--top", type=int, help="show only the K slowest kernels")
  ap.add_argument("--sort", choices=("time", "roofline"), default="time",
                  help="slowest first (default), or furthest from the roofline first")
  ap.add_argument("--remeasure", action="store_true", help="measure the device's peaks again (keeps the better)")
  ap.add_argument("--trace", metavar="OUT.json", help="write a Chrome/Perfetto trace")
  add_device_arguments(ap)
  args = ap.parse_args(argv)
  use_device(args.device)
  if args.runs < 1: ap.error("--runs must be at least 1")
  if args.top is not None and args.top < 1: ap.error("--top must be at least 1")
  try: program = compiled.load(args.artifact, allow_target_mismatch=args.allow_target_mismatch)
  except (OSError, ArtifactError, DeviceError) as e: raise SystemExit(f"edgeml-profile: {e}")
  peaks = roofline.peaks(program.device, remeasure=args.remeasure)
  times, events, wall = measure(program, args.runs)
  rows = kernel_rows(program, times, peaks, args.sort)
  print(f"{args.artifact} on {program.device.name}: {len(rows)} kernels, {args.runs} runs")
  print("\n".join(format_rows(rows, args.top)))
  print("\n".join(roofline_summary(peaks, rows)))
  print(f"kernels: {times.sum(axis=1).mean() * 1e3:.2f} ms per run on the device (sum of medians "
        f"{sum(r['seconds'] for r in rows) * 1e3:.2f} ms), "
        f"{sum(k.flops for k in program.kernels) / 1e9:.3f} GFLOP, "
        f"{sum(k.bytes for k in program.kernels) / 1e6:.1f} MB")
  print(f"end to end (inputs in, kernels, outputs out): {percentiles(wall)}")
  print(host_time(wall, times))
  if args.trace:
    write_atomic(args.trace, json.dumps(chrome_trace(program, events)).encode())
    print(f"trace: {args.trace} ({len(events) * len(program.kernels)} kernel slices)")


if __name__ == "__main__":
  main()
