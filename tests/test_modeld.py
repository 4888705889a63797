"""camerad -> modeld -> subscriber as real processes on a private bus.

The outputs must equal running the artifact directly on the same frames, re-created by frame id and warped by the
numpy reference, with the recurrent state chained the same way; injected drops must raise frameDropPerc and mark the
outputs invalid until the two-frame history is consecutive again; SIGTERM must leave nothing in /dev/shm. The status
lines must add up; signatures, the device choice and the config's default name are checked at start.
"""
import glob
import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import compiled
from compiled.preprocess import reference
from ipc import PubMaster, decode, get_outputs, new_message, sub_socket
from ipc.framepool import SHM_DIR
from ipc.testing import isolated_bus
from edgeml import demo_model
from tools.camerad import synthetic_frame
from edgeml.compile import compile_model
from compiled.modelconfig import config_path, load_config
from tools.modeld import CAMERAS, DropRate, FrameHistory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAMERA = (160, 96)  # larger than the 128x64 warped image: the identity warp is a crop
SHAPE = (1, 12, 32, 64)
WAIT_S = 30  # bound on every wait for a process


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """A compiled small demo-model artifact with its config beside it."""
  folder = tmp_path_factory.mktemp("model")
  demo_model.build_small(str(folder / "drive.onnx"), *SHAPE[2:])
  compile_model(str(folder / "drive.onnx"), str(folder / "drive.edgeml"), log=lambda *_: None)
  (folder / "drive.modeld.json").write_text(json.dumps(demo_model.CONFIG))
  return folder / "drive.edgeml"


@pytest.fixture(scope="module")
def signed(model, tmp_path_factory):
  """The model signed by a key (trusted.pub), by another key (other.edgeml), and with its signature's last byte
  flipped (tampered.edgeml), each with its config beside it; a dict of paths."""
  from compiled.artifact import read_artifact, write_artifact
  from compiled.signing import generate_keypair
  folder = tmp_path_factory.mktemp("signed")
  paths = {"trusted.pub": folder / "trusted.pub", "other.pub": folder / "other.pub"}
  generate_keypair(folder / "trusted.pem", paths["trusted.pub"])
  generate_keypair(folder / "other.pem", paths["other.pub"])
  spec = read_artifact(model)
  for name, key in (("signed", "trusted.pem"), ("other", "other.pem"), ("tampered", "trusted.pem")):
    paths[name] = folder / f"{name}.edgeml"
    write_artifact(spec, paths[name], sign_key=folder / key)
    (folder / f"{name}.modeld.json").write_text(json.dumps(demo_model.CONFIG))
  data = bytearray(paths["tampered"].read_bytes())
  data[-1] ^= 1
  paths["tampered"].write_bytes(bytes(data))
  return paths


@pytest.fixture
def main_here(monkeypatch):
  """tools.modeld.main run in this process, its SystemExit message returned (None if it started: it then returns
  at once instead of waiting for a camera); the signal handlers main installs and the variables it sets are restored
  after the test."""
  from tools import modeld
  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  monkeypatch.setattr(modeld.ModelDaemon, "connect", lambda *_a, **_k: False)
  monkeypatch.delenv("EDGEML_TRUSTED_KEYS", raising=False)
  monkeypatch.setenv("EDGEML_DEVICE", os.environ.get("EDGEML_DEVICE", ""))

  def run(*argv):
    try: modeld.main([str(a) for a in argv])
    except SystemExit as e: return str(e.code)
  yield run
  for sig, handler in handlers.items(): signal.signal(sig, handler)


@pytest.fixture
def bus():
  with isolated_bus() as prefix:
    yield prefix
    assert glob.glob(os.path.join(SHM_DIR, f"edgeml-{prefix}-*")) == []  # before isolated_bus cleans up


@pytest.fixture
def spawn(bus):
  """start(module, *args) runs `python -m module args` on the test's bus; every process is killed at the end."""
  procs = []

  def start(*args):
    procs.append(subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
    return procs[-1]
  try:
    yield start
  finally:
    for proc in procs:
      if proc.poll() is None: proc.kill()
      proc.communicate()


def stop(proc) -> tuple[int, str]:
  """SIGTERM, then the exit code and everything it printed (killed if it does not exit in time)."""
  proc.send_signal(signal.SIGTERM)
  try: out, _ = proc.communicate(timeout=WAIT_S)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise AssertionError(f"{proc.args} did not exit within {WAIT_S} s of SIGTERM: {proc.communicate()[0]}")
  return proc.returncode, out


def receive(sock, timeout_s: float) -> dict | None:
  """The next modelOutput within timeout_s as a dict (seq, valid, frame_id, drop, times, outputs), or None."""
  if not sock.poll(int(timeout_s * 1000)): return None
  event = decode("modelOutput", sock.recv())
  m = event.modelOutput
  return dict(seq=event.seq, valid=event.valid, frame_id=m.frameId, drop=m.frameDropPerc,
              model_time=m.modelExecutionTime, gpu_time=m.gpuExecutionTime, outputs=get_outputs(m))


def collect(sock, camerad, last_frame_id: int) -> list:
  """Every modelOutput until the one for `last_frame_id`, or until camerad has exited and nothing more comes."""
  got, deadline = [], time.monotonic() + WAIT_S
  while time.monotonic() < deadline:
    if (out := receive(sock, 3.0)) is not None:
      got.append(out)
      if out["frame_id"] == last_frame_id: break
    elif camerad.poll() is not None: break
  return got


def run_stack(spawn, model, frames: int, skip=(), modeld_args=(), during=None):
  """camerad (frames, skipped ids) + modeld; returns (outputs received, modeld's printout). `during(sock, camerad)`
  replaces the default collection for tests that act on the stack while it runs; camerad is then stopped."""
  sock = sub_socket("modelOutput")  # subscribed before modeld starts: it waits for us
  try:
    modeld = spawn("tools.modeld", str(model), "--wait-subscriber", str(WAIT_S), *modeld_args)
    camerad = spawn("tools.camerad", "--size", "x".join(map(str, CAMERA)), "--frames", str(frames),
                    "--skip", ",".join(map(str, skip)), "--wait-client", str(WAIT_S))
    if during is None:
      got = collect(sock, camerad, frames - 1)
      assert camerad.wait(WAIT_S) == 0  # it stops by itself after `frames`
    else:
      got = during(sock, camerad)
      assert stop(camerad)[0] == 0
    rc, printed = stop(modeld)
    assert rc == 0, printed
    return got, printed
  finally:
    sock.close()


def replay(model, got) -> None:
  """Run the artifact directly on the frames modeld processed, in its order, and compare every output."""
  prog = compiled.load(model)
  images, state, last = np.zeros(SHAPE, np.float32), np.zeros((1, 16), np.float32), None
  for out in got:
    nv12 = synthetic_frame(out["frame_id"], *CAMERA)
    area = CAMERA[0] * CAMERA[1]
    y, uv = nv12[:area].reshape(CAMERA[::-1]), nv12[area:].reshape(CAMERA[1] // 2, CAMERA[0])
    images[0, :6] = images[0, 6:]
    images[0, 6:] = reference(y, uv, np.eye(3), "yuv6", SHAPE)
    expected = prog.run({"input_imgs": images, "desire": np.zeros((1, 8), np.float32), "state": state})
    for name, value in expected.items():
      np.testing.assert_allclose(out["outputs"][name], value, rtol=1e-4, atol=1e-5, err_msg=f"frame {out['frame_id']}")
    assert out["valid"] == (last == out["frame_id"] - 1), f"frame {out['frame_id']} after {last}"
    state, last = expected["state_out"], out["frame_id"]


STATUS = re.compile(r"modeld: status: (\d+) frames in, (\d+) out, (\d+) dropped, (\d+) malformed; last ([\d.]+) s: "
                    r"(?:(\d+) published, latency p50 ([\d.]+) ms, model p50 ([\d.]+) ms wall / ([\d.]+) ms device"
                    r"|no frames)$")


def status_lines(printed: str) -> list[dict]:
  """modeld's status lines, parsed; any other line starting 'modeld: status' fails the test."""
  lines = [line for line in printed.splitlines() if line.startswith("modeld: status")]
  names = ("frames_in", "frames_out", "dropped", "malformed", "interval", "published", "latency", "wall", "device")
  parsed = []
  for line in lines:
    assert (m := STATUS.match(line)), f"unexpected status line: {line!r}"
    parsed.append({k: float(v) if v is not None else None for k, v in zip(names, m.groups())})
  return parsed


def test_outputs_equal_the_artifact_run_directly_and_drops_are_counted(spawn, model):
  # 24 frames at 20 Hz keep modeld busy for more than 1.1 s of camera time: several 0.2 s status intervals
  got, printed = run_stack(spawn, model, frames=24, skip=(10, 11), modeld_args=("--status-every", "0.2"))
  assert [o["seq"] for o in got] == list(range(1, len(got) + 1)), "a modelOutput was lost on the bus"
  ids = [o["frame_id"] for o in got]
  assert ids == sorted(ids) and not {10, 11} & set(ids) and ids[-1] == 23
  replay(model, got)
  after_gap = next(o for o in got if o["frame_id"] > 11)
  before_gap = [o["drop"] for o in got if o["frame_id"] < 10]
  assert not after_gap["valid"] and after_gap["drop"] > max(before_gap)
  assert all(o["drop"] > 0 for o in got if o["frame_id"] > 11)
  assert all(o["model_time"] > 0 and o["gpu_time"] > 0 for o in got)
  assert "modeld: " in printed and f"{len(got)} outputs" in printed
  lines = status_lines(printed)
  assert any(line["published"] for line in lines), printed
  published = 0
  for before, line in zip([None] + lines, lines):
    assert line["frames_in"] >= line["frames_out"] and line["malformed"] == 0, line
    if before: assert all(line[k] >= before[k] for k in ("frames_in", "frames_out", "dropped")), (before, line)
    published += line["published"] or 0
    assert line["frames_out"] == published, (line, published)  # the intervals' counts add up to the total
    if line["published"]:  # the latency (end of exposure to publish) contains the model's wall time
      assert line["latency"] >= line["wall"] > 0 and line["device"] > 0, line
  assert lines[-1]["frames_out"] <= len(got)


def test_outputs_invalid_until_calibration_when_required(spawn, model, tmp_path):
  config = dict(demo_model.CONFIG, requires_calibration=True)
  (tmp_path / "calibrated.json").write_text(json.dumps(config))
  matrix = [0.9, 0.0, 2.0, 0.0, 0.9, 1.0, 0.0, 0.0, 1.0]

  def calibrate_midway(sock, camerad):
    with PubMaster(["liveCalibration"]) as pm:
      got = []
      while not got or not got[-1]["valid"]:
        assert (out := receive(sock, WAIT_S)) is not None and camerad.poll() is None, "no valid output came"
        got.append(out)
        if len(got) >= 6: pm.send("liveCalibration", new_message("liveCalibration", warpMatrix=matrix))
      return got
  got, _ = run_stack(spawn, model, frames=200, modeld_args=("--config", str(tmp_path / "calibrated.json")),
                     during=calibrate_midway)
  assert not any(o["valid"] for o in got[:6]) and got[-1]["valid"]


def test_hostile_calibrations_are_dropped_and_counted_while_frames_flow(spawn, model, tmp_path):
  """Broken warpMatrix pointers, mutations, garbage and multipart messages on liveCalibration: modeld drops and
  counts every one (its summary line), keeps publishing, takes none of them as a calibration (the outputs stay
  invalid while the config requires one), and takes the valid calibration sent after them."""
  import random
  from ipc.fuzz import broken_pointers, hostile
  from ipc.validate import MessageError, parse
  config = dict(demo_model.CONFIG, requires_calibration=True)
  (tmp_path / "calibrated.json").write_text(json.dumps(config))
  matrix = [0.9, 0.0, 2.0, 0.0, 0.9, 1.0, 0.0, 0.0, 1.0]
  good = new_message("liveCalibration", warpMatrix=matrix).to_bytes()
  rng, sent = random.Random(7), []

  def malformed(parts):
    try: parse(parts[0], "calibration")
    except MessageError: return True
    return len(parts) > 1

  def attack(sock, camerad):
    with PubMaster(["liveCalibration"]) as pm:
      assert pm.wait_for_subscribers("liveCalibration", 1, WAIT_S)
      raw, got = pm.sockets["liveCalibration"], []
      for _ in range(30):
        cases = [[b] for b in broken_pointers(good)] + list(filter(malformed, hostile([good], rng, 25)))
        for parts in cases:  # broken pointers are broken by construction (test_bus_fuzz checks they fail on read)
          raw.send_multipart(parts)
          sent.append(len(parts))
        assert (out := receive(sock, WAIT_S)) is not None and camerad.poll() is None, "modeld stopped publishing"
        got.append(out)
      pm.send("liveCalibration", new_message("liveCalibration", warpMatrix=matrix))
      while not got[-1]["valid"]:
        assert (out := receive(sock, WAIT_S)) is not None and camerad.poll() is None, "no valid output came"
        got.append(out)
      return got
  got, printed = run_stack(spawn, model, frames=400, modeld_args=("--config", str(tmp_path / "calibrated.json")),
                           during=attack)
  assert not any(o["valid"] for o in got[:30]) and got[-1]["valid"]
  assert f"{len(sent)} malformed messages ignored" in printed, printed
  print(f"\nmodeld: {len(sent)} hostile calibrations ({sum(n > 1 for n in sent)} multipart), all dropped; "
        f"{len(got)} outputs meanwhile")


def test_junk_camera_notices_do_not_starve_modeld(spawn, model):
  """In lockstep (each frame waits for its output): every frame is followed by junk notices (mutations, broken,
  multipart) and forged ones (another pool, a buffer past the pool); modeld must still answer every frame. A
  keep-latest socket whose newest message wins regardless of validity would lose frames here and stall the test."""
  import random
  from ipc import FrameServer
  from ipc.fuzz import hostile
  from ipc.validate import MessageError, parse
  from tools.camerad import write_synthetic
  rng, junk, frames = random.Random(11), 0, 30

  def malformed(parts):
    try: parse(parts[0], "cameraFrame")
    except MessageError: return True
    return len(parts) > 1
  sock = sub_socket("modelOutput")
  try:
    with FrameServer("road", *CAMERA) as server:
      modeld = spawn("tools.modeld", str(model), "--wait-subscriber", str(WAIT_S))
      assert server.wait_for_client(WAIT_S)
      raw, good = server.pm.sockets[server.service], server.notice.to_bytes()
      server.notice.clear_write_flag()
      for k in range(frames):
        write_synthetic(server.next_buffer(), k, *CAMERA, "road")
        server.publish(k)
        for parts in filter(malformed, hostile([good], rng, 20)):
          raw.send_multipart(parts)
          junk += 1
        for forged in ({"poolId": server.pool.pool_id ^ 1}, {"poolId": server.pool.pool_id, "bufferIndex": 9}):
          server.pm.send(server.service, new_message(server.service, camera="road", frameId=10 ** 6,
                                                     bufferSeq=server.seq, **forged))
        assert (out := receive(sock, WAIT_S)) is not None and out["frame_id"] == k, f"frame {k} got no output"
      rc, printed = stop(modeld)
  finally:
    sock.close()
  assert rc == 0, printed
  assert f"{frames} frames in, {frames} outputs, 0 dropped" in printed, printed
  print(f"\nmodeld: {frames} frames among {junk} junk and {2 * frames} forged notices, every frame answered")


def test_a_stall_of_modeld_shows_in_frame_drop_perc(spawn, model):
  """SIGSTOP modeld for 2 s at 20 Hz: about 40 frame ids go by unprocessed, and the first output after it says
  that most recent frames were lost (a per-output filter read 4.6%)."""
  sock = sub_socket("modelOutput")
  try:
    modeld = spawn("tools.modeld", str(model), "--wait-subscriber", str(WAIT_S))
    camerad = spawn("tools.camerad", "--size", "x".join(map(str, CAMERA)), "--wait-client", str(WAIT_S))
    before = [receive(sock, WAIT_S) for _ in range(10)]
    assert all(before)
    modeld.send_signal(signal.SIGSTOP)
    time.sleep(2.0)
    modeld.send_signal(signal.SIGCONT)
    while (out := receive(sock, WAIT_S)) is not None and out["frame_id"] <= before[-1]["frame_id"] + 1:
      pass  # outputs of frames read before the stop
    assert out is not None
    lost = out["frame_id"] - before[-1]["frame_id"] - 1
    assert lost >= 20 and out["drop"] > 50 and not out["valid"], (lost, out["drop"])
    assert stop(camerad)[0] == 0 and stop(modeld)[0] == 0
  finally:
    sock.close()


def test_sigterm_while_waiting_for_a_camera_exits_cleanly(spawn, model):
  modeld = spawn("tools.modeld", str(model))
  assert select.select([modeld.stdout], [], [], WAIT_S)[0] and modeld.stdout.readline().startswith("modeld: ")
  rc, printed = stop(modeld)  # no camera yet: it is waiting for the pool
  assert rc == 0, printed


def test_camerad_sigterm_removes_its_pools(spawn, bus):
  camerad = spawn("tools.camerad", "--cameras", "road,wideRoad", "--size", "64x48")
  assert select.select([camerad.stdout], [], [], WAIT_S)[0], "camerad printed nothing"
  assert camerad.stdout.readline().startswith("camerad: road,wideRoad 64x48")
  pools = sorted(os.path.basename(p) for p in glob.glob(os.path.join(SHM_DIR, f"edgeml-{bus}-*")))
  assert [p.rsplit("-", 1)[0] for p in pools] == [f"edgeml-{bus}-{camera}" for camera in ("road", "wideRoad")]
  rc, _ = stop(camerad)
  assert rc == 0


def test_history_and_drop_rate():
  history, drops = FrameHistory(2), DropRate(20.0)
  assert [history.add(i) for i in (0, 1, 2, 5, 6, 3)] == [0, 0, 0, 2, 0, 0]  # going back (a restart) is no drop
  history = FrameHistory(2)
  full = [(history.add(i), history.full)[1] for i in (0, 1, 2, 5, 6, 7)]
  assert full == [False, True, True, False, True, True]
  rates = [drops.add(d) for d in (0, 0, 2, 0, 0)]
  assert rates[0] == rates[1] == 0 and rates[2] > 0 and rates[2] > rates[3] > rates[4] > 0 and drops.total == 2


def test_drop_rate_counts_every_lost_frame_id():
  """frameDropPerc follows the share of lost frame ids, filtered over ids: the reference is the same low-pass filter
  run over one sample per frame id (1 lost, 0 processed), so a 2 s stall at 20 Hz (39 ids lost) shows as most."""
  gaps = [0] * 30 + [39] + [0] * 20 + [3, 0, 1]
  drops = DropRate(20.0)
  got = [drops.add(g) for g in gaps]
  samples, at = [], []
  for g in gaps:
    samples += [1.0] * g + [0.0]
    at.append(len(samples) - 1)
  value, reference = 0.0, []
  for x in samples:
    value += drops.alpha * (x - value)
    reference.append(value)
  np.testing.assert_allclose(got, np.array(reference)[at], rtol=1e-9, atol=1e-12)
  assert got[30] > 0.8 and drops.total == 43


def test_a_frame_overwritten_during_the_copy_is_not_used(bus):
  """ModelDaemon.load checks the pool buffer after copying it: a camera that reuses the buffer meanwhile makes the
  frame lost (False), never a torn input."""
  from types import SimpleNamespace
  from ipc import FrameClient, FrameServer
  from tools.modeld import ModelDaemon
  w, h = 16, 8
  with FrameServer("road", w, h, buffers=4) as server, FrameClient("road") as client:
    assert server.wait_for_client(WAIT_S)
    server.send(np.full(w * h * 3 // 2, 1, np.uint8))
    frame = client.recv(WAIT_S * 1000)
    assert frame is not None and frame.still_valid()
    copies = []

    def copy_then_camera_overtakes(pixels, *size, laps=0):
      copies.append(pixels.copy())
      for n in range(laps): server.send(np.full(w * h * 3 // 2, 2 + n, np.uint8))
    daemon = SimpleNamespace(config=SimpleNamespace(images=[SimpleNamespace(name="img", camera="road")]),
                             warps={"img": SimpleNamespace(load=copy_then_camera_overtakes)})
    assert ModelDaemon.load(daemon, {"road": frame})  # nothing reused: the copy is good
    daemon.warps["img"].load = lambda *a: copy_then_camera_overtakes(*a, laps=4)  # all four buffers rewritten
    assert not ModelDaemon.load(daemon, {"road": frame})
    assert (copies[0] == 1).all() and len(copies) == 2


@pytest.mark.parametrize("error", [ValueError("bad launch size"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
                                   RuntimeError("Member was null."), KeyError("kernel"), MemoryError()])
def test_any_load_failure_is_one_line(main_here, model, monkeypatch, error):
  from tools import modeld

  def fail(*_a, **_k): raise error
  monkeypatch.setattr(modeld.compiled, "load", fail)
  message = main_here(model)
  assert message and message.startswith("edgeml-modeld: ") and "\n" not in message
  assert (str(error) or type(error).__name__) in message


def test_config_errors_name_the_input(model, tmp_path):
  prog = compiled.load(model)
  cases = {"input_imgs": ({"source": "back", "layout": "yuv6"}, "unknown camera 'back'"),
           "state": ({"recurrent": "plan"}, "same shape"),
           "desire": ({"source": "road", "layout": "rgb"}, r"\(1, 3\*frames, h, w\)")}
  for name, (entry, message) in cases.items():
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"inputs": {**demo_model.CONFIG["inputs"], name: entry}}))
    with pytest.raises(ValueError, match=f"input '{name}'.*{message}"):
      load_config(str(path), prog.inputs, prog.outputs, CAMERAS)
  with pytest.raises(ValueError, match="no model config.*write one"):
    load_config(str(tmp_path / "none.json"), prog.inputs, prog.outputs)
  for text, message in (('["input_imgs"]', "expected an object"), ('{"inputs": ["desire"]}', "expected an object"),
                        (json.dumps({"inputs": {**demo_model.CONFIG["inputs"], "desire": "zeros"}}),
                         "input 'desire': the entry must be an object, not 'zeros'")):
    (tmp_path / "odd.json").write_text(text)
    with pytest.raises(ValueError, match=message):
      load_config(str(tmp_path / "odd.json"), prog.inputs, prog.outputs)


def test_two_cameras_matched_by_frame_id(spawn, tmp_path):
  """A model reading the road camera (yuv6) and the wide camera (rgb): each output comes from one frame id of both."""
  from onnx import TensorProto, helper, numpy_helper, save
  shapes = {"road_img": (1, 6, 16, 32), "wide_img": (1, 3, 24, 40)}
  rng = np.random.default_rng(1)
  inits, nodes = [], []
  for name, shape in shapes.items():
    weights = rng.standard_normal((int(np.prod(shape)), 8)).astype(np.float32) / 1e3
    inits.append(numpy_helper.from_array(weights, f"w_{name}"))
    nodes += [helper.make_node("Flatten", [name], [f"flat_{name}"]),
              helper.make_node("MatMul", [f"flat_{name}", f"w_{name}"], [f"out_{name}"])]
  value = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
  graph = helper.make_graph(nodes, "two_cameras", [value(n, s) for n, s in shapes.items()],
                            [value(f"out_{n}", [1, 8]) for n in shapes], inits)
  save(helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "two.onnx"))
  compile_model(str(tmp_path / "two.onnx"), str(tmp_path / "two.edgeml"), log=lambda *_: None)
  (tmp_path / "two.modeld.json").write_text(json.dumps({"inputs": {"road_img": {"source": "road", "layout": "yuv6"},
                                                            "wide_img": {"source": "wideRoad", "layout": "rgb"}}}))
  sock = sub_socket("modelOutput")
  try:
    modeld = spawn("tools.modeld", str(tmp_path / "two.edgeml"), "--wait-subscriber", str(WAIT_S))
    camerad = spawn("tools.camerad", "--cameras", "road,wideRoad", "--size", "x".join(map(str, CAMERA)),
                    "--frames", "12", "--wait-client", str(WAIT_S))
    got = collect(sock, camerad, 11)
    assert camerad.wait(WAIT_S) == 0 and stop(modeld)[0] == 0
  finally:
    sock.close()
  assert got and got[-1]["frame_id"] == 11
  prog, area = compiled.load(tmp_path / "two.edgeml"), CAMERA[0] * CAMERA[1]
  for out in got:
    feeds = {}
    for (name, shape), (camera, layout) in zip(shapes.items(), [("road", "yuv6"), ("wideRoad", "rgb")]):
      nv12 = synthetic_frame(out["frame_id"], *CAMERA, camera)
      y, uv = nv12[:area].reshape(CAMERA[::-1]), nv12[area:].reshape(CAMERA[1] // 2, CAMERA[0])
      feeds[name] = reference(y, uv, np.eye(3), layout, shape)[None]
    for name, value in prog.run(feeds).items():
      np.testing.assert_allclose(out["outputs"][name], value, rtol=1e-4, atol=1e-5, err_msg=f"frame {out['frame_id']}")
    assert out["valid"]


def test_video_sources_loop_and_convert_to_nv12(tmp_path):
  from tools.camerad import VideoFile
  w, h = 8, 4
  planes = [np.random.default_rng(i).integers(0, 256, w * h * 3 // 2, dtype=np.uint8) for i in range(2)]
  with open(tmp_path / "clip.y4m", "wb") as f:
    f.write(f"YUV4MPEG2 W{w} H{h} F20:1 Ip A1:1 C420jpeg\n".encode())
    for p in planes: f.write(b"FRAME\n" + p.tobytes())
  (tmp_path / "clip.nv12").write_bytes(b"".join(p.tobytes() for p in planes))
  y4m, raw = VideoFile(str(tmp_path / "clip.y4m"), None), VideoFile(str(tmp_path / "clip.nv12"), (w, h))
  out = np.empty_like(planes[0])
  for i in range(3):  # the third frame is the first again
    p = planes[i % 2]
    y4m.read(out)
    uv = out[w * h:].reshape(h // 2, w)
    assert (out[:w * h] == p[:w * h]).all()
    assert (uv[:, 0::2].ravel() == p[w * h:w * h * 5 // 4]).all() and (uv[:, 1::2].ravel() == p[w * h * 5 // 4:]).all()
    raw.read(out)
    assert (out == p).all()


def test_the_default_config_is_model_modeld_json_and_the_old_name_is_not_read(model, tmp_path):
  """model.json is what `edgeml-profile --trace model.json` writes: never taken for the config; when it is all there
  is, the error says to rename it."""
  prog = compiled.load(model)
  assert config_path(tmp_path / "drive.edgeml") == str(tmp_path / "drive.modeld.json")
  assert config_path("drive.onnx") == "drive.modeld.json"
  (tmp_path / "drive.json").write_text(json.dumps(demo_model.CONFIG))
  with pytest.raises(ValueError, match=r"drive\.json is there, but that old default name is no longer read.*rename it"):
    load_config(config_path(tmp_path / "drive.edgeml"), prog.inputs, prog.outputs, CAMERAS)
  (tmp_path / "drive.modeld.json").write_text(json.dumps(demo_model.CONFIG))
  (tmp_path / "drive.json").write_text('{"traceEvents": []}')  # a profile trace beside it changes nothing
  config = load_config(config_path(tmp_path / "drive.edgeml"), prog.inputs, prog.outputs, CAMERAS)
  assert config.cameras == ["road"] and config.recurrent == {"state": "state_out"}


def test_signature_refusals_are_one_line(main_here, model, signed):
  trust = ("--trusted-key", signed["trusted.pub"])
  cases = [((model, "--require-signature", *trust), "unsigned, and signatures are required"),
           ((signed["other"], "--require-signature", *trust), "not among the 1 trusted"),
           ((signed["other"], *trust), "not among the 1 trusted"),  # a given key is checked even when not required
           ((signed["tampered"], "--require-signature", *trust), "bad signature"),
           ((signed["signed"], "--require-signature"), "--require-signature needs a trusted key"),
           ((signed["signed"], "--trusted-key", signed["signed"].parent / "none.pub"), "cannot read trusted key file")]
  for argv, expected in cases:
    message = main_here(*argv)
    assert message and message.startswith("edgeml-modeld: ") and "\n" not in message and expected in message, \
      (argv, message)


def test_an_unsigned_artifact_is_refused_by_the_console_script(model, signed, bus):
  done = subprocess.run([sys.executable, "-m", "tools.modeld", str(model), "--require-signature", "--trusted-key",
                         str(signed["trusted.pub"])], cwd=ROOT, capture_output=True, text=True, timeout=WAIT_S)
  assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
  assert done.stderr.count("\n") == 1 and "unsigned, and signatures are required" in done.stderr, done.stderr


def test_a_signed_artifact_with_a_trusted_key_runs(spawn, signed):
  """Two trusted keys (the flag is repeatable), one of them the signer's: modeld starts and says it checked."""
  modeld = spawn("tools.modeld", str(signed["signed"]), "--require-signature",
                 "--trusted-key", str(signed["other.pub"]), "--trusted-key", str(signed["trusted.pub"]))
  assert select.select([modeld.stdout], [], [], WAIT_S)[0]
  line = modeld.stdout.readline()
  assert line.startswith("modeld: ") and "signature verified" in line, line + modeld.stdout.read()
  rc, printed = stop(modeld)
  assert rc == 0, printed


def test_device_flag_sets_the_device_before_it_is_opened(main_here, model, monkeypatch):
  from tools import modeld
  seen = []

  def load(*_a, **_k):
    seen.append(os.environ.get("EDGEML_DEVICE"))
    raise ValueError("stop here")
  monkeypatch.setattr(modeld.compiled, "load", load)
  assert main_here(model, "--device", "1") == "edgeml-modeld: stop here" and seen == ["1"]


def test_an_unknown_device_is_one_line(model, bus):
  done = subprocess.run([sys.executable, "-m", "tools.modeld", str(model), "--device", "no-such-device-xyz"], cwd=ROOT,
                        capture_output=True, text=True, timeout=WAIT_S)
  assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
  assert done.stderr.count("\n") == 1 and "--device 'no-such-device-xyz' matches no OpenCL device" in done.stderr, \
    done.stderr


def test_status_line_medians_and_a_closed_stdout(monkeypatch, capsys):
  """The line's p50s are the medians of what was added in the interval (statistics.median as the reference), the
  next interval starts empty, and a stdout that is gone stops the lines, not the daemon."""
  import statistics
  from types import SimpleNamespace
  from tools.modeld import Status
  rng = np.random.default_rng(3)
  latency, wall, device = (rng.uniform(1e-3, 5e-2, 7) for _ in range(3))
  daemon = SimpleNamespace(frames_in=9, outputs=7, drops=SimpleNamespace(total=2), malformed=lambda: 4)
  status = Status(1.0, now=10.0)
  for sample in zip(latency, wall, device): status.add(*sample)
  assert not status.due(10.5) and status.due(11.0)
  status.report(daemon, 11.0)
  first, = status_lines(capsys.readouterr().out)
  assert (first["frames_in"], first["frames_out"], first["dropped"], first["malformed"]) == (9, 7, 2, 4)
  assert first["interval"] == 1.0 and first["published"] == 7
  for name, values in (("latency", latency), ("wall", wall), ("device", device)):
    assert abs(first[name] - 1e3 * statistics.median(values)) <= 0.005 + 1e-9, name
  status.report(daemon, 12.0)
  assert status_lines(capsys.readouterr().out)[0]["published"] is None  # "no frames" in the second interval

  class Gone:
    def write(self, _text): raise BrokenPipeError(32, "Broken pipe")
    def flush(self): raise BrokenPipeError(32, "Broken pipe")
  monkeypatch.setattr(sys, "stdout", Gone())
  status.report(daemon, 13.0)
  assert not status.due(100.0)
