"""The end-to-end demo: camera -> frame pool -> modeld -> modelOutput -> consumer, on the default OpenCL device.

  python -m tools.demo [--seconds 10] [--model model.onnx]      (bash scripts/demo.sh)

The model is the project's own demo driving model (edgeml/demo_model.py: a mini_drive-shaped network with seeded
weights), written to build/ once, or --model (an ONNX model with its inputs, e.g. ../shared/models/mini_drive.onnx).
It is compiled with --tune by `edgeml-compile` into build/, once: later runs reuse the artifact while the model, the
compiler's sources and the device are unchanged (build/NAME.key holds their digest). Starts a consumer, the model
daemon and a 20 Hz synthetic camera as processes on a bus of their own (EDGEML_PREFIX, printed), publishes a
calibration that maps the road ahead into the model's view, prints a line a second, then the summary: frames in and
out, drops, latency from the camera's end of exposure to the consumer, model time and the slowest kernels. Leaves
nothing in /dev/shm. Ctrl-C stops it (exit 130).
"""
import argparse
import glob
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
TOP_KERNELS = 5
CAMERA = (1928, 1208)
START_S = 300  # bound on each startup wait (a cold OpenCL cache builds every kernel at the daemon's first load)


# ---- the consumer process -------------------------------------------------------------------------------------

def consume() -> None:
  """Receive every modelOutput and camera notice; print a JSON line a second and one at SIGTERM. Counting starts at
  the first output: frames in are camera frames from its frame id on."""
  from ipc import decode, sub_socket
  stop = []
  for sig in (signal.SIGINT, signal.SIGTERM): signal.signal(sig, lambda *_: stop.append(1))
  cam, out = sub_socket("roadCameraState"), sub_socket("modelOutput")
  eof, seen = {}, {"frames_in": 0, "outputs": 0, "valid": 0, "drop_perc": 0.0}
  latency, model, gpu, first, next_report = [], [], [], None, time.monotonic() + 1
  while not stop:
    out.poll(100)
    while cam.poll(0):
      frame = decode("roadCameraState", cam.recv()).cameraFrame
      eof[frame.frameId] = frame.timestampEof
      seen["frames_in"] += first is not None and frame.frameId >= first
    while out.poll(0):
      now, event = time.monotonic_ns(), decode("modelOutput", out.recv())
      m = event.modelOutput
      if first is None: first, seen["frames_in"] = m.frameId, sum(f >= m.frameId for f in eof)
      seen["outputs"] += 1
      seen["valid"] += event.valid
      seen["drop_perc"] = m.frameDropPerc
      if m.frameId in eof: latency.append((now - eof.pop(m.frameId)) * 1e-6)
      model.append(m.modelExecutionTime * 1e3)
      gpu.append(m.gpuExecutionTime * 1e3)
    if time.monotonic() >= next_report:
      next_report += 1
      print("progress " + json.dumps(dict(seen, latency=latency[-20:], model=model[-20:])), flush=True)
  print("summary " + json.dumps(dict(seen, latency=latency, model=model, gpu=gpu)), flush=True)


# ---- the demo ---------------------------------------------------------------------------------------------------

class Lines:
  """A child's stdout, line by line, with a bounded wait."""
  def __init__(self, proc):
    self.proc, self.pending = proc, b""

  def next(self, prefix: str, timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    while True:
      while b"\n" in self.pending:
        line, self.pending = self.pending.split(b"\n", 1)
        if line.decode().startswith(prefix): return line.decode()
      left = deadline - time.monotonic()
      if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]: return None
      if not (chunk := os.read(self.proc.stdout.fileno(), 65536)): return None
      self.pending += chunk


def model_source(path: str | None) -> Path:
  """--model, or the demo model in build/ (written once per builder version and parameters)."""
  if path:
    if not os.path.isfile(path): raise SystemExit(f"demo: no such model file: {path}")
    return Path(path)
  from edgeml import demo_model
  onnx_path = BUILD / f"demo_drive-{demo_model.cache_key()}.onnx"
  if not onnx_path.exists():
    BUILD.mkdir(exist_ok=True)
    print(f"demo: writing the demo model {onnx_path.relative_to(ROOT)} (edgeml/demo_model.py, version "
          f"{demo_model.VERSION}, seeded weights)", flush=True)
    demo_model.build(str(onnx_path) + ".tmp")
    os.replace(str(onnx_path) + ".tmp", onnx_path)
  return onnx_path


def build_key(onnx_path: Path) -> str:
  """The digest of what the artifact depends on: the model's bytes, the compiler's sources, the compile flags and the
  device it is tuned for."""
  from compiled.device import default_device
  digest = hashlib.sha256(f"--tune {default_device().name}".encode())
  for path in [onnx_path, *sorted((ROOT / "edgeml").glob("*.py")), *sorted((ROOT / "compiled").glob("*.py")),
               ROOT / "compiled" / "artifact.capnp", ROOT / "tools" / "compile.py"]:
    digest.update(path.name.encode() + b"\0" + path.read_bytes())
  return digest.hexdigest()


def compiled_artifact(onnx_path: Path) -> Path:
  """build/NAME.edgeml with its modeld config (NAME.modeld.json), compiled unless build/NAME.key holds its build_key."""
  from compiled.modelconfig import config_path
  from edgeml.demo_model import CONFIG
  artifact, key_file = BUILD / f"{onnx_path.stem}.edgeml", BUILD / f"{onnx_path.stem}.key"
  key = build_key(onnx_path)
  if artifact.exists() and key_file.exists() and key_file.read_text() == key:
    print(f"demo: reusing {artifact} (the model, the compiler, the flags and the device are unchanged)")
  else:
    BUILD.mkdir(exist_ok=True)
    print(f"demo: compiling {onnx_path} with --tune (once; later runs reuse it)", flush=True)
    command = [sys.executable, "-m", "tools.compile", str(onnx_path), "-o", str(artifact), "--tune"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1")) as done:
      for line in done.stdout: print(f"  {line.rstrip()}", flush=True)
    if done.returncode == 130: raise KeyboardInterrupt
    if done.returncode: raise SystemExit(f"demo: edgeml-compile failed (exit {done.returncode})")
    key_file.write_text(key)
  Path(config_path(artifact)).write_text(json.dumps(CONFIG, indent=1))
  return artifact


def road_calibration(image_hw: tuple[int, int]) -> list[float]:
  """Camera -> model pixels: a band of the camera three times the model image, centred a little below the middle."""
  (h, w), s = image_hw, 1 / 3
  x0, y0 = CAMERA[0] / 2 - 1.5 * w, CAMERA[1] * 0.55 - 1.5 * h
  return [s, 0, -x0 * s, 0, s, -y0 * s, 0, 0, 1]


def ms(values, q) -> str:
  return f"{np.percentile(values, q):.1f} ms" if values else "n/a"


def run(artifact: Path, seconds: float) -> dict:
  """Start consumer, modeld and camerad; report each second for `seconds` after the first output; the summary."""
  from compiled.preprocess import image_size
  from compiled.artifact import read_artifact
  from ipc import PubMaster, new_message
  spec = read_artifact(artifact)
  image = next(t for t in spec.inputs if t.name == "input_imgs")
  calibration = road_calibration(image_size("yuv6", image.shape)[1:])
  procs = {}

  def start(name, *args, pipe=True):
    procs[name] = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE if pipe else None)
    return Lines(procs[name]) if pipe else None
  try:
    consumer = start("consumer", "tools.demo", "--consume")
    modeld = start("modeld", "tools.modeld", str(artifact), "--wait-subscriber", "10", "--status-every", "0")
    if (line := modeld.next("modeld:", START_S)) is None: raise SystemExit("demo: modeld did not start")
    print(line)
    start("camerad", "tools.camerad", "--rate", "20", "--size", "x".join(map(str, CAMERA)), "--wait-client", "10",
          pipe=False)
    with PubMaster(["liveCalibration"]) as pm:
      t0, progress = None, None
      while t0 is None or time.monotonic() - t0 < seconds - 0.5:  # lines come once a second
        pm.send("liveCalibration", new_message("liveCalibration", warpMatrix=calibration))
        if (line := consumer.next("progress ", START_S if t0 is None else 5)) is None:
          raise SystemExit(f"demo: no progress from the consumer ({ {n: p.poll() for n, p in procs.items()} })")
        progress = json.loads(line.split(" ", 1)[1])
        if t0 is None and progress["outputs"]: t0 = time.monotonic()
        if t0 is not None:
          print(f"  {time.monotonic() - t0:4.1f} s  frames in {progress['frames_in']:4d}  outputs "
                f"{progress['outputs']:4d} (valid {progress['valid']:4d})  latency {ms(progress['latency'], 50):>8}  "
                f"model {ms(progress['model'], 50):>8}  drops {progress['drop_perc']:.1f}%", flush=True)
    for name in ("camerad", "modeld", "consumer"):  # upstream first, so the consumer sees every output
      procs[name].send_signal(signal.SIGTERM)
      procs[name].wait(30)
    if (line := consumer.next("summary ", 10)) is None: raise SystemExit("demo: the consumer gave no summary")
    return json.loads(line.split(" ", 1)[1])
  finally:
    for proc in procs.values():
      if proc.poll() is None: proc.kill()
      proc.wait()
      if proc.stdout: proc.stdout.close()


def top_kernels(artifact: Path, runs: int = 20) -> list[str]:
  """The kernel table of `edgeml-profile -n runs --top TOP_KERNELS` (its rows, without the header line)."""
  done = subprocess.run([sys.executable, "-m", "tools.profile_artifact", str(artifact), "-n", str(runs),
                         "--top", str(TOP_KERNELS)], cwd=ROOT, capture_output=True, text=True)
  if done.returncode: return [f"(edgeml-profile failed: {done.stderr.strip()})"]
  return done.stdout.splitlines()[1:TOP_KERNELS + 3]


def main(argv=None):
  ap = argparse.ArgumentParser(prog="edgeml-demo", description=__doc__.split("\n\n")[0])
  ap.add_argument("--seconds", type=float, default=10.0, help="how long to run after the first output (default 10)")
  ap.add_argument("--model", help="an ONNX model with the demo model's inputs and a `state`/`state_out` pair, such as "
                  "../shared/models/mini_drive.onnx (default: the demo model, edgeml/demo_model.py)")
  ap.add_argument("--consume", action="store_true", help=argparse.SUPPRESS)  # the consumer process
  args = ap.parse_args(argv)
  if args.consume: return consume()
  try:
    demo(args)
  except KeyboardInterrupt:
    print("demo: interrupted", file=sys.stderr)
    raise SystemExit(130)


def demo(args) -> None:
  os.environ["EDGEML_PREFIX"] = prefix = f"demo{os.getpid()}"  # a bus of its own; children inherit it
  from compiled.device import default_device
  from ipc.framepool import SHM_DIR
  from ipc.services import runtime_dir
  print(f"demo: OpenCL device {default_device().name}")
  artifact = compiled_artifact(model_source(args.model))
  print(f"demo: bus EDGEML_PREFIX={prefix}; to look at it from another shell while it runs: "
        f"EDGEML_PREFIX={prefix} edgeml-bus list, or ... edgeml-bus echo modelOutput -n 1", flush=True)
  try:
    s = run(artifact, args.seconds)
  finally:
    shutil.rmtree(runtime_dir(), ignore_errors=True)
    left = glob.glob(os.path.join(SHM_DIR, f"edgeml-{prefix}-*"))
  print(f"\nsummary: {artifact.stem}, {args.seconds:.0f} s on {default_device().name}")
  print(f"  frames in     {s['frames_in']} (camera, 20 Hz, from the first output on)")
  print(f"  outputs       {s['outputs']} ({s['valid']} valid)")
  print(f"  drops         {max(s['frames_in'] - s['outputs'], 0)} frames; frameDropPerc at the end "
        f"{s['drop_perc']:.1f}%")
  print(f"  latency       camera end of frame -> consumer: median {ms(s['latency'], 50)}, p99 {ms(s['latency'], 99)}")
  print(f"  model time    wall median {ms(s['model'], 50)} (p99 {ms(s['model'], 99)}), device median "
        f"{ms(s['gpu'], 50)}")
  print(f"  top kernels   {TOP_KERNELS} slowest of 20 runs (edgeml-profile, OpenCL events):")
  print("\n".join(f"    {line}" for line in top_kernels(artifact)))
  print(f"  /dev/shm      {'clean' if not left else 'LEFT: ' + ', '.join(left)}")
  if left or not s["outputs"]: raise SystemExit(1)


if __name__ == "__main__":
  main()
