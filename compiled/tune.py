"""edgeml-tune: time an artifact's kernel candidates on the device it runs on and record the fastest, with the
runtime alone (numpy, pyopencl, pycapnp; never the compiler).

    edgeml-tune model.edgeml [-o out.edgeml] [--device D] [--runs N] [--sign KEY] [--prebuild]

Every kernel that carries candidates (compiled/variants.py) is timed in each of its renderings on the buffers of a
loaded program (one untimed launch, then --runs launches timed by OpenCL events, the fastest kept); the picks go into
the artifact's choice table under this device's name and driver version (an older choice of the same device is
replaced; the table is sorted, so tuning again gives the same layout), and the artifact is rewritten atomically with
a new checksum. `compiled.load` then builds the chosen renderings on this device and the artifact's own source on any
other. Tuning changes the artifact's bytes, so a signed artifact is refused unless --sign KEY re-signs it (with the
signature it had dropped, it would no longer load where signatures are required).

Both tuning and --prebuild (which times nothing and writes the artifact only when -o names another file) then load the
result once with the program binary saved beside it in OUT.cache/ (keyed by device, driver and source) where
`compiled.load` looks first, and with PoCL's kernel cache warmed: the first start after an update is a warm one.
"""
import argparse
import os
import re
import shutil
import sys
import time

import numpy as np

from compiled.artifact import ArtifactError, ChoiceSpec, ProgramSpec, artifact_facts, read_artifact, write_artifact
from compiled.device import Device, DeviceError
from compiled.variants import device_key, record

RUNS = 5


def fastest(queue, launches: list, rounds: int = RUNS) -> list[float]:
  """Seconds of each launch's fastest run: (kernel, global size, local size) or None (cannot run: inf). Each runs once
  first (the driver generates machine code then), then `rounds` rounds take turns over them, so a burst of load on a
  shared machine slows one round of every launch rather than all runs of one."""
  import pyopencl as cl
  for launch in filter(None, launches): cl.enqueue_nd_range_kernel(queue, *launch).wait()
  best = [float("inf")] * len(launches)
  for _ in range(rounds):
    for i, launch in enumerate(launches):
      if launch is None: continue
      event = cl.enqueue_nd_range_kernel(queue, *launch)
      event.wait()
      best[i] = min(best[i], (event.profile.end - event.profile.start) * 1e-9)
  return best


def _progress(total: int, quiet: bool):
  """A tqdm bar on a terminal when tqdm is installed, else None (plain lines are printed instead)."""
  if quiet: return None
  try: from tqdm import tqdm
  except ImportError: return None
  bar = tqdm(total=total, desc="tuning", unit="kernel", leave=False, dynamic_ncols=True, disable=None)
  return None if bar.disable else bar   # not a terminal: plain lines


def time_candidates(spec: ProgramSpec, device: Device, runs: int = RUNS, name: str = "program",
                    log=print, quiet: bool = False) -> list[int]:
  """The fastest rendering of each kernel on `device` (0: the kernel itself, j: its candidate j), timed on the buffers
  of the program after one frame of zero inputs."""
  import pyopencl as cl
  from compiled.runtime import SCALARS, Program
  prog = Program(spec, device, name, validated=True, picks=[0] * len(spec.kernels))
  tunable = [i for i, k in enumerate(spec.kernels) if k.candidates]
  picks = [0] * len(spec.kernels)
  if not tunable: return picks
  renamed = [re.sub(rf"\bvoid\s+{re.escape(k.name)}\s*\(", f"void {k.name}__c{j}(", c.source, count=1)
             for i in tunable for k in [spec.kernels[i]] for j, c in enumerate(k.candidates, 1)]
  program = device.build(spec.source + "\n" + "\n".join(renamed), spec.build_options)
  bar = _progress(len(tunable), quiet)
  for done, i in enumerate(tunable, 1):
    k, launches = spec.kernels[i], []
    for j, (g, l) in enumerate([(k.global_size, k.local_size)] + [(c.global_size, c.local_size) for c in k.candidates]):
      kernel = cl.Kernel(program, k.name if j == 0 else f"{k.name}__c{j}")
      group = kernel.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, device.dev)
      if l and int(np.prod(l)) > group: launches.append(None); continue   # cannot launch here
      for a, (kind, value) in enumerate(k.args):
        kernel.set_arg(a, prog._buffers[value] if kind == "buffer" else SCALARS[kind](value))
      launches.append((kernel, g, l))
    times = fastest(device.queue, launches, runs)
    picks[i] = min(range(len(times)), key=times.__getitem__)
    line = f"{k.name}: " + ", ".join(f"{t * 1e6:.0f}" for t in times) + f" us -> candidate {picks[i]}"
    if bar is not None: bar.update(1); bar.set_postfix_str(line[-60:])
    elif not quiet: log(f"[{done}/{len(tunable)}] {line}")
  if bar is not None: bar.close()
  device.queue.finish()
  return picks


def prebuild(path: str, device: Device) -> float:
  """Load the artifact at `path` once on `device`, leaving its program binary in PATH.cache/ (and PoCL's kernel cache
  warm); returns the seconds it took."""
  from compiled.runtime import Program, cache_beside
  start = time.perf_counter()
  Program(read_artifact(path), device, path, validated=True, beside=cache_beside(path), save_beside=True)
  return time.perf_counter() - start


def _device(spec: ProgramSpec, path: str, allow_mismatch: bool) -> Device:
  from compiled.runtime import _device_for
  return _device_for(spec, path, None, allow_mismatch)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="edgeml-tune", description="Time an artifact's kernel candidates on this device "
                               "and record the fastest in it (the runtime alone: no compiler needed).")
  ap.add_argument("model", help="the artifact (.edgeml)")
  ap.add_argument("-o", "--output", help="write the tuned artifact here (default: rewrite MODEL in place)")
  ap.add_argument("--device", metavar="NAME|INDEX", help="the OpenCL device: a name substring or an index "
                  "(default: EDGEML_DEVICE, else the first of the artifact's target)")
  ap.add_argument("--allow-target-mismatch", action="store_true", help="tune on a device of another target")
  ap.add_argument("--runs", type=int, default=RUNS,
                  help=f"rounds of timed launches taking turns over the candidates (default {RUNS})")
  ap.add_argument("--sign", metavar="KEY", help="re-sign the tuned artifact with this Ed25519 private key (PEM); "
                  "a signed artifact is refused without it")
  ap.add_argument("--prebuild", action="store_true", help="time nothing: only leave the program binary beside the "
                  "artifact (OUT.cache/) and warm the driver's cache")
  ap.add_argument("-q", "--quiet", action="store_true", help="no progress")
  args = ap.parse_args(argv)
  if args.runs < 1: ap.error("--runs must be at least 1")
  if args.device is not None: os.environ["EDGEML_DEVICE"] = args.device   # before any device is opened
  out = args.output or args.model
  say = (lambda *_: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
  try:
    facts, spec = artifact_facts(args.model), read_artifact(args.model)
    if facts.signer and not args.sign and not (args.prebuild and out == args.model):
      raise ArtifactError(f"{args.model}: signed (key {facts.signer[:16]}...); tuning changes its bytes: give "
                          f"--sign KEY to sign the tuned artifact")
    device = _device(spec, args.model, args.allow_target_mismatch)
    if args.prebuild:
      if os.path.abspath(out) != os.path.abspath(args.model):
        if args.sign: write_artifact(spec, out, args.sign)
        else: shutil.copyfile(args.model, out)
    else:
      say(f"tuning {args.model} on {device.name}: {sum(bool(k.candidates) for k in spec.kernels)} of "
          f"{len(spec.kernels)} kernels have candidates")
      picks = time_candidates(spec, device, args.runs, args.model, say, args.quiet)
      write_artifact(record(spec, ChoiceSpec(*device_key(device.dev), picks)), out, args.sign)
      say(f"wrote {out}: {sum(p > 0 for p in picks)} kernels use another candidate on {device.name}")
    seconds = prebuild(out, device)
    say(f"prebuilt {out} on {device.name} in {seconds:.2f} s (binary in {out}.cache/)")
  except (ArtifactError, DeviceError, OSError) as e:
    print(f"edgeml-tune: {getattr(e, 'strerror', None) and f'{e.filename}: {e.strerror}' or e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
