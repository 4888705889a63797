"""edgeml-modeld: runs a compiled model on every camera frame and publishes modelOutput.

  edgeml-modeld model.edgeml [--config model.modeld.json] [--device NAME|N] [--require-signature] [--trusted-key FILE]
                [--status-every S] [--rt-priority N] [--cpu N] [--wait-subscriber S]

Per frame of the first camera in the model config (compiled/modelconfig.py, docs/modeld.md): copy the NV12 frame
from the pool to the device, check the pool buffer was not reused meanwhile, warp it into the image input with the
latest calibration (identity until one arrives; compiled/preprocess.py), run the program, copy each recurrent output
into its input on the device, publish. Image inputs keep their last K frames on the device. A frame id that skips
(the camera dropped, or this daemon was too slow for the keep-latest stream) counts into frameDropPerc, and outputs
stay invalid until the K-frame history is consecutive again. Other cameras are matched to the first by frame id,
waiting at most a period; a frame whose match does not come is skipped (and counts as dropped).

modelOutput: frameId, frameAge (camera periods between the frame's end of exposure and publishing), frameDropPerc
(share of frame ids not processed, filtered over about a second of frame ids: a 2 s stall reads as most frames
lost), modelExecutionTime (wall seconds, frame upload to outputs),
gpuExecutionTime (OpenCL-event seconds of the warp and the model's kernels), every output by name, and the envelope's
`valid`: false while the history refills, while a recurrent input is non-finite, or until a calibration arrives when
the config requires one.

Every few seconds (--status-every) a status line goes to stdout: frames in and out, dropped frame ids and malformed
messages so far, and over the last interval the p50 latency (end of exposure to publish) and the p50 model time, wall
and device. Imports only compiled/, ipc/, numpy and pyopencl.
"""
import argparse
import gc
import os
import signal
import sys
import time

import numpy as np
import pyopencl as cl

import compiled
from compiled.artifact import ArtifactError
from compiled.device import DeviceError
from compiled.preprocess import FrameWarp
from compiled.modelconfig import config_path, load_config
from ipc import SERVICES, FrameClient, PubMaster, SubMaster, camera_service, new_message, set_outputs
from ipc.rundir import UnsafePath
from ipc.validate import DropLog

DROP_TIME_CONSTANT_S = 1.0
STATUS_EVERY_S = 5.0
CAMERAS = [s.name.removesuffix("CameraState") for s in SERVICES.values() if s.kind == "cameraFrame"]


class DropRate:
  """Dropped share of frame ids, low-pass filtered over frame ids: every dropped id is a sample 1, every processed
  frame a sample 0, so a gap weighs as many frames as it lost."""
  def __init__(self, rate_hz: float):
    self.alpha = (1 / rate_hz) / (DROP_TIME_CONSTANT_S + 1 / rate_hz)
    self.value, self.total = 0.0, 0

  def add(self, dropped: int) -> float:
    """A processed frame after `dropped` lost ones; returns the filtered share."""
    self.total += dropped
    kept = (1 - self.alpha) ** dropped
    self.value = self.value * kept + (1 - kept)  # the lost ids, each a 1
    self.value *= 1 - self.alpha                  # this frame, a 0
    return self.value


class FrameHistory:
  """Whether the last `frames` processed frame ids are consecutive."""
  def __init__(self, frames: int):
    self.frames, self.last, self.run = frames, None, 0

  def add(self, frame_id: int) -> int:
    """Record `frame_id`; returns how many frames were dropped since the previous one."""
    dropped = 0 if self.last is None or frame_id <= self.last else frame_id - self.last - 1
    self.run = self.run + 1 if self.last is not None and frame_id == self.last + 1 else 1
    self.last = frame_id
    return dropped

  @property
  def full(self) -> bool:
    return self.run >= self.frames


class Status:
  """The operator's status line: totals so far, and p50s of the frames published since the previous line."""
  def __init__(self, every_s: float, now: float):
    self.every_s, self.since = every_s, now
    self.latency, self.wall, self.device = [], [], []

  def add(self, latency_s: float, wall_s: float, device_s: float) -> None:
    self.latency.append(latency_s)
    self.wall.append(wall_s)
    self.device.append(device_s)

  def due(self, now: float) -> bool:
    return self.every_s > 0 and now - self.since >= self.every_s

  def line(self, daemon: "ModelDaemon", now: float) -> str:
    """The line for `daemon` at `now`; starts the next interval."""
    head = (f"modeld: status: {daemon.frames_in} frames in, {daemon.outputs} out, {daemon.drops.total} dropped, "
            f"{daemon.malformed()} malformed; last {now - self.since:.1f} s: ")
    if self.latency:
      ms = lambda values: f"{1e3 * float(np.median(values)):.2f}"
      tail = (f"{len(self.latency)} published, latency p50 {ms(self.latency)} ms, model p50 {ms(self.wall)} ms wall / "
              f"{ms(self.device)} ms device")
    else: tail = "no frames"
    self.since, self.latency, self.wall, self.device = now, [], [], []
    return head + tail

  def report(self, daemon: "ModelDaemon", now: float) -> None:
    """Print the line; if stdout is gone (a closed pipe), stop reporting and keep running."""
    try: print(self.line(daemon, now), flush=True)
    except OSError: self.every_s = 0


class ModelDaemon:
  def __init__(self, program, config, log=print):
    self.program, self.config, self.log = program, config, log
    self.calibration_drops = DropLog("modeld")   # well-formed messages that carry an unusable matrix
    self.queue = program.device.queue
    self.warps = {}
    for image in config.images:
      program.feed_on_device(image.name)
      self.warps[image.name] = FrameWarp(program.device, image.layout, image.shape, program.device_buffer(image.name))
    self.recurrent = []
    for name, out in config.recurrent.items():
      program.feed_on_device(name)
      nbytes = program.input_buffer(name).nbytes
      cl.enqueue_fill_buffer(self.queue, program.device_buffer(name), np.zeros(1, np.uint8), 0, nbytes)
      self.recurrent.append((program.device_buffer(name), program.device_buffer(out), nbytes,
                             program.output_buffer(out)))
    self.cameras = config.cameras
    self.rate_hz = camera_service(self.cameras[0]).rate_hz
    self.history = FrameHistory(max(w.frames for w in self.warps.values()))
    self.drops = DropRate(self.rate_hz)
    self.calibrated, self.finite = False, True
    self.latest = {}  # camera -> newest Frame received
    self.frames_in = self.outputs = 0
    self.status = Status(0.0, time.monotonic())  # main() sets the interval

  def connect(self, stop: list, wait_subscriber_s: float = 0.0) -> bool:
    """Publish modelOutput (waiting up to wait_subscriber_s for a subscriber), subscribe to calibration and the
    cameras (waiting for their pools until `stop`); False if stopped first."""
    self.pm = PubMaster(["modelOutput"])
    if wait_subscriber_s: self.pm.wait_for_subscribers("modelOutput", 1, wait_subscriber_s)
    self.sm = SubMaster(["liveCalibration"])
    self.clients = {}
    for camera in self.cameras:
      while camera not in self.clients:
        if stop: return False
        try: self.clients[camera] = FrameClient(camera, timeout_s=0.5)
        except TimeoutError: pass
    return True

  def malformed(self) -> int:
    """Messages dropped as malformed so far: calibrations and camera notices."""
    sm, clients = getattr(self, "sm", None), getattr(self, "clients", {})
    return (sum(sm.errors.values()) if sm else 0) + sum(client.errors for client in clients.values())

  def close(self):
    for client in getattr(self, "clients", {}).values(): client.close()
    for master in (getattr(self, "sm", None), getattr(self, "pm", None)):
      if master is not None: master.close()

  def run(self, stop: list) -> None:
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
      while not stop:
        if (frame := self.clients[self.cameras[0]].recv(100)) is not None:
          self.step(frame)
        if self.status.due(now := time.monotonic()): self.status.report(self, now)
    finally:
      gc.enable()

  def step(self, frame) -> None:
    """One camera frame of the first camera: warp, run, feed back, publish."""
    t0 = time.perf_counter()
    self.frames_in += 1
    self.update_calibration()
    frames = {self.cameras[0]: frame, **{c: self.matching(c, frame.frame_id) for c in self.cameras[1:]}}
    if not self.load(frames): return  # a buffer was reused under us: this frame is lost, the next one shows the gap
    dropped = self.history.add(frame.frame_id)
    events = [warp.warp() for warp in self.warps.values()]
    self.program.execute()
    for dst, src, nbytes, _ in self.recurrent: cl.enqueue_copy(self.queue, dst, src, byte_count=nbytes)
    valid = self.history.full and self.finite and (self.calibrated or not self.config.requires_calibration)
    self.finite = all(np.isfinite(host).all() for *_, host in self.recurrent)  # the next frame's inputs
    model_time = time.perf_counter() - t0
    gpu_time = sum(e.profile.end - e.profile.start for e in events) * 1e-9 + self.program.last_gpu_time
    msg = new_message("modelOutput", valid=valid)
    out = msg.modelOutput
    out.frameId = frame.frame_id
    age_s = (time.monotonic_ns() - frame.timestamp_eof) * 1e-9
    out.frameAge = max(0, int(age_s * self.rate_hz))
    out.frameDropPerc = 100 * self.drops.add(dropped)
    out.modelExecutionTime, out.gpuExecutionTime = model_time, gpu_time
    set_outputs(out, {t.name: self.program.output_buffer(t.name) for t in self.program.outputs})
    self.pm.send("modelOutput", msg)
    self.outputs += 1
    self.status.add(age_s, model_time, gpu_time)

  def matching(self, camera: str, frame_id: int):
    """The frame of `camera` with `frame_id`, waiting at most a period for it; None if it does not come or that
    camera is already past it (the first camera's frame is then skipped, and counts as dropped)."""
    client, frame = self.clients[camera], self.latest.get(camera)
    deadline = time.monotonic() + 1 / self.rate_hz
    while (frame is None or frame.frame_id < frame_id) and (left := deadline - time.monotonic()) > 0:
      frame = client.recv(max(1, int(left * 1000))) or frame
    self.latest[camera] = frame
    return frame if frame is not None and frame.frame_id == frame_id else None

  def load(self, frames: dict) -> bool:
    """Copy each image input's frame to the device; False if one is missing or was overwritten during the copy."""
    for image in self.config.images:
      frame = frames[image.camera]
      if frame is None: return False
      layout = frame.pool.layout
      self.warps[image.name].load(frame.pool.buffer(frame.index), layout.width, layout.height, layout.stride)
      if not frame.still_valid(): return False
    return True

  def update_calibration(self) -> None:
    self.sm.update(0)
    if not self.sm.updated["liveCalibration"]: return
    matrix = np.array(self.sm["liveCalibration"].warpMatrix, np.float64)
    if matrix.size != 9 or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix.reshape(3, 3))) < 1e-12:
      self.calibration_drops.drop("liveCalibration", f"warpMatrix of {matrix.size} values is not an invertible "
                                                     f"3x3 matrix")
      return
    for warp in self.warps.values(): warp.set_matrix(matrix.reshape(3, 3))
    self.calibrated = True


def set_realtime(priority: int, cpu: int | None) -> None:
  """Pin to `cpu` (threads started later, such as OpenCL CPU workers, inherit it) and ask for SCHED_FIFO `priority`
  for this thread; without the permission, say so and go on."""
  if cpu is not None: os.sched_setaffinity(0, {cpu})
  if priority:
    try: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError: print(f"modeld: warning: no permission for SCHED_FIFO {priority}, running at normal "
                                  f"priority (needs CAP_SYS_NICE or root)", file=sys.stderr)


def main(argv=None):
  ap = argparse.ArgumentParser(prog="edgeml-modeld", description=__doc__.split("\n\n")[0])
  ap.add_argument("artifact", help="a compiled .edgeml file")
  ap.add_argument("--config", help="the model config (default: the artifact's path with .modeld.json; the old "
                  "default NAME.json is no longer read)")
  ap.add_argument("--device", metavar="NAME|N", help="the OpenCL device: a name substring or an index (the same "
                  "meaning as EDGEML_DEVICE, which it overrides)")
  ap.add_argument("--trusted-key", action="append", default=[], metavar="FILE",
                  help="an Ed25519 public key (PEM) whose signatures are accepted (repeatable; the files in "
                  "EDGEML_TRUSTED_KEYS are trusted too)")
  ap.add_argument("--require-signature", action="store_true",
                  help="refuse an artifact that is not signed by a trusted key")
  ap.add_argument("--status-every", type=float, default=STATUS_EVERY_S, metavar="S",
                  help=f"seconds between status lines on stdout (default {STATUS_EVERY_S:g}; 0: none)")
  ap.add_argument("--rt-priority", type=int, default=0, metavar="N", help="SCHED_FIFO priority for the run loop")
  ap.add_argument("--cpu", type=int, metavar="N", help="pin the daemon (and its OpenCL CPU threads) to core N")
  ap.add_argument("--wait-subscriber", type=float, default=0.0, metavar="S",
                  help="wait up to S seconds for a modelOutput subscriber before reading frames")
  args = ap.parse_args(argv)
  if args.require_signature and not args.trusted_key and not os.environ.get("EDGEML_TRUSTED_KEYS"):
    raise SystemExit("edgeml-modeld: --require-signature needs a trusted key: --trusted-key FILE (or "
                     "EDGEML_TRUSTED_KEYS)")
  if args.status_every < 0: raise SystemExit(f"edgeml-modeld: --status-every {args.status_every:g}: give S >= 0")
  if args.device is not None: os.environ["EDGEML_DEVICE"] = args.device  # before the device is opened
  stop = []
  for sig in (signal.SIGINT, signal.SIGTERM): signal.signal(sig, lambda *_: stop.append(1))
  if args.cpu is not None: set_realtime(0, args.cpu)  # before the OpenCL threads start
  try:
    program = compiled.load(args.artifact, trusted_keys=args.trusted_key or None,
                            require_signature=args.require_signature)
    config = load_config(args.config or config_path(args.artifact), program.inputs, program.outputs, CAMERAS)
    daemon = ModelDaemon(program, config)
  except DeviceError as e:  # the device choice is reported as the flag when it came from one
    message = str(e).replace("EDGEML_DEVICE=", "--device ") if args.device is not None else str(e)
    raise SystemExit(f"edgeml-modeld: {message}")
  except (OSError, ArtifactError, ValueError) as e: raise SystemExit(f"edgeml-modeld: {e}")
  except Exception as e:  # whatever else a bad artifact or device makes the loader raise: one line, not a traceback
    raise SystemExit(f"edgeml-modeld: cannot load {args.artifact}: {type(e).__name__}: {e}")
  set_realtime(args.rt_priority, None)
  signed = ", signature verified" if args.require_signature else ""
  print(f"modeld: {args.artifact} on {program.device.name}, cameras {', '.join(daemon.cameras)}{signed}", flush=True)
  daemon.status = Status(args.status_every, time.monotonic())
  try:
    if daemon.connect(stop, args.wait_subscriber):
      daemon.run(stop)
  except UnsafePath as e:
    raise SystemExit(f"edgeml-modeld: {e}")
  finally:
    daemon.close()
  print(f"modeld: {daemon.frames_in} frames in, {daemon.outputs} outputs, {daemon.drops.total} dropped, "
        f"{daemon.malformed()} malformed messages ignored", flush=True)


if __name__ == "__main__":
  main()
