"""Hostile input into the bus, seeded and bounded: malformed, mutated and multipart messages into keep-latest and
queueing subscribers (each in a child process, so that an abort inside libzmq shows as a death, not as the end of
pytest), junk and forged camera notices into a FrameClient, floods of oversized messages. Nothing may crash, hang or
raise into a consumer; the tests count what was sent and what was dropped. Children are this file run as a script."""
import random
import resource
import sys
import time

import numpy as np
import pytest

from ipc.framepool import FrameClient, FrameServer
from ipc.fuzz import amplified, broken_pointers, hostile
from ipc.messaging import PubMaster, SubMaster, new_message, sub_socket
from ipc.schema import Event
from ipc.services import QUEUE_BYTES, get_service
from ipc.tensors import get_outputs, set_outputs
from ipc.testing import Children, isolated_bus, read_command, update_until
from ipc.validate import MessageError, parse, segments

ROUNDS = 40
W, H = 64, 48


@pytest.fixture(autouse=True)
def children():
  with isolated_bus(), Children() as start:
    yield start


def samples():
  """One valid message of each kind (with text, lists, data and nested structs to break)."""
  output = new_message("modelOutput", frameId=3)
  set_outputs(output.modelOutput, {"plan": np.arange(6, dtype=np.float32).reshape(2, 3),
                                   "lead": np.ones(2, np.float32)})
  return {"robotState": new_message("robotState", vEgo=1.5, standstill=True).to_bytes(),
          "liveCalibration": new_message("liveCalibration", warpMatrix=list(range(9))).to_bytes(),
          "roadCameraState": new_message("roadCameraState", camera="road", pool="edgeml-x-road-0123456789abcdef",
                                         bufferIndex=2, bufferSeq=7).to_bytes(),
          "modelOutput": output.to_bytes(),
          "heartbeat": new_message("heartbeat", process="camerad", pid=7).to_bytes()}


def readable(data: bytes, kind: str) -> bool:
  """Independent of parse(): capnp's own printer and to_dict read every field of the message."""
  try:
    event = Event.from_segments(segments(data))
    str(event), event.to_dict(), str(getattr(event, kind))
    return True
  except Exception:
    return False


def test_accepted_messages_read_whole_and_broken_pointers_are_refused():
  rng, goods = random.Random(10), samples()
  kinds = {name: get_service(name).kind for name in goods}
  tried = accepted = 0
  for bad in broken_pointers(goods["liveCalibration"]):
    tried += 1
    with pytest.raises(MessageError):
      parse(bad, "calibration")
  for bad in broken_pointers(goods["modelOutput"]):  # some are still readable (a pointer list read as structs)
    tried += 1
    try:
      parse(bad, "modelOutput")
      assert readable(bad, "modelOutput")
    except MessageError:
      pass
  for case in hostile(list(goods.values()), rng, 6000):
    for data in case:
      for name in ("liveCalibration", "modelOutput", "roadCameraState"):
        tried += 1
        try:
          parse(data, kinds[name])
        except MessageError:
          continue
        accepted += 1
        assert readable(data, kinds[name]), data.hex()
        if name == "modelOutput":
          get_outputs(parse(data, "modelOutput")[1])  # shapes and data agree
  assert tried > 15000 and 0 < accepted < tried
  print(f"\nvalidator: {tried} parses of hostile bytes, {tried - accepted} refused, {accepted} accepted and read whole")


def test_tensor_whose_shape_disagrees_with_its_data_is_refused():
  for shape, nbytes in (([3], 8), ([2, 2], 17), ([1 << 31, 2], 8), ([], 0)):
    msg = new_message("modelOutput")
    tensor = msg.modelOutput.init("outputs", 1)[0]
    tensor.name, tensor.shape, tensor.data = "plan", shape, bytes(nbytes)
    with pytest.raises(MessageError, match="output 'plan': shape"):
      parse(msg.to_bytes(), "modelOutput")


def test_broken_calibration_pointers_only_fail_when_read():
  """The hazard itself: each broken calibration reads like a message until its warpMatrix is read."""
  for bad in broken_pointers(samples()["liveCalibration"]):
    event = Event.from_segments(segments(bad))
    with pytest.raises(Exception):
      list(event.calibration.warpMatrix)


def test_a_list_of_millions_of_empty_structs_is_refused_at_once():
  """Amplification: 136 bytes that claim 2^22 tensors. capnp's default reader lets a consumer loop over them all;
  parse() reads with a traversal limit of a few times the message and refuses it."""
  bad = amplified(samples()["modelOutput"])
  assert len(Event.from_segments(segments(bad)).modelOutput.outputs) == 1 << 22
  with pytest.raises(MessageError, match="traversal limit"):
    parse(bad, "modelOutput")


@pytest.mark.parametrize("conflate", [True, False], ids=["keep-latest", "queueing"])
def test_subscriber_survives_hostile_messages(children, conflate):
  rng, goods = random.Random(1 + conflate), samples()
  child = children(__file__, "sink", str(int(conflate)))
  child.expect("ready")
  sent = malformed = 0
  with PubMaster(["robotState"]) as pm:
    assert pm.wait_for_subscribers("robotState", 1, 10)
    raw = pm.sockets["robotState"]

    def junk(count):
      nonlocal sent, malformed
      for parts in hostile(list(goods.values()), rng, count):
        if len(parts) == 1 and _accepted(parts[0]):
          continue  # a mutation that is still a valid robotState: not junk
        raw.send_multipart(parts)
        sent += 1
        malformed += 1
    for k in range(1, ROUNDS + 1):
      junk(rng.randrange(0, 30))
      pm.send("robotState", new_message("robotState", vEgo=k))
      sent += 1
      junk(rng.randrange(0, 30))
      child.tell(f"{k} {malformed}")
      got, v_ego, errors = child.expect("got").split()[1:]
      assert int(got) == 1 and float(v_ego) == k, f"round {k}: the latest valid message was displaced or lost"
      assert int(errors) == malformed if not conflate else int(errors) <= malformed
  assert child.stop() == 0, "the subscriber died"
  assert sent > ROUNDS * 20
  print(f"\n{'keep-latest' if conflate else 'queueing'}: {sent} messages, {malformed} malformed, all dropped cleanly")


def _accepted(data):
  try:
    parse(data, "robotState")
    return True
  except MessageError:
    return False


def test_frame_client_keeps_the_newest_valid_frame_under_junk_and_forged_notices():
  rng, goods = random.Random(3), samples()
  forged_kinds = junk_total = 0
  with FrameServer("road", W, H, buffers=4) as server, FrameClient("road") as client:
    assert server.wait_for_client(10)
    raw = server.pm.sockets[server.service]
    for k in range(1, ROUNDS + 1):
      server.send(np.full(W * H * 3 // 2, k, np.uint8))
      sent_junk = 0
      for parts in hostile(list(goods.values()), rng, rng.randrange(1, 20)):
        if len(parts) == 1 and _notice_ok(parts[0]):
          continue
        raw.send_multipart(parts)
        sent_junk += 1
      for forged in _forged(server, rng):  # well-formed notices naming no frame of the pool
        server.pm.send(server.service, forged)
        forged_kinds += 1
      junk_total += sent_junk
      frame = client.recv(10000)
      assert frame is not None and frame.frame_id == k and frame.y[0, 0] == k % 256 and frame.still_valid()
      assert client.recv(0) is None  # nothing valid left behind it
    # junk and forgeries that arrive after their round's frame was read are superseded by the next frame unread
    assert 0 < client.errors <= junk_total + forged_kinds + ROUNDS and 0 < client.overwritten <= ROUNDS
  assert forged_kinds == 3 * ROUNDS
  print(f"\nFrameClient: {ROUNDS} frames, {junk_total} junk and {forged_kinds} forged notices, every frame read, "
        f"{client.errors} malformed and {client.overwritten} stale notices dropped")


def _notice_ok(data):
  try:
    parse(data, "cameraFrame")
    return True
  except MessageError:
    return False


def _forged(server, rng):
  """Notices that parse but name nothing: another pool id, a buffer past the pool, a sequence the buffer does not
  hold."""
  base = dict(camera="road", pool="x", frameId=10 ** 6, bufferIndex=server.index, bufferSeq=server.seq)
  yield new_message(server.service, **{**base, "poolId": rng.getrandbits(64)})
  yield new_message(server.service, **{**base, "poolId": server.pool.pool_id, "bufferIndex": 4 + rng.randrange(9)})
  yield new_message(server.service, **{**base, "poolId": server.pool.pool_id, "bufferSeq": server.seq + 4})


@pytest.mark.parametrize("service, size, count", [("robotState", 16 << 20, 40), ("modelOutput", 16 << 20, 40),
                                                   ("modelOutput", 1 << 20, 100)],
                         ids=["16MiB-robotState", "16MiB-modelOutput", "max-size-modelOutput"])
def test_flood_of_big_messages_keeps_an_idle_queueing_subscriber_bounded(children, service, size, count):
  """An idle queueing subscriber sent `count` messages of `size` bytes: messages over the service's max_bytes are
  refused by the socket (and its connection dropped, then made again), the rest are held up to the hwm (the others
wait in the publisher), so its peak RSS grows by at most QUEUE_BYTES and the kernel's socket buffers."""
  child = children(__file__, "flood_sink", service)
  child.expect("ready")
  blob = bytes(size)
  with PubMaster([service]) as pm:
    assert pm.wait_for_subscribers(service, 1, 10)
    raw = pm.sockets[service]
    for _ in range(count):
      raw.send(blob, copy=False)
    time.sleep(1.0)  # while the subscriber's I/O thread takes in what it will (a slower machine measures less)
    child.tell("report")
    marker = new_message(service, valid=False).to_bytes()
    for _ in range(300):  # the marker may be lost while the subscriber reconnects after a refused message
      pm.send(service, marker)
      try:
        line = child.expect("rss", timeout_s=0.1)
        break
      except TimeoutError:
        continue
    else:
      raise AssertionError("the subscriber never got a valid message after the flood")
  base_kb, peak_kb, held = map(int, line.split()[1:])
  growth = (peak_kb - base_kb) * 1024
  print(f"\n{service} flood of {count} x {size} bytes: peak RSS {peak_kb // 1024} MiB "
        f"(+{growth >> 20} MiB), {held} flood messages held")
  assert growth < QUEUE_BYTES + (16 << 20)
  assert held == (count if size <= get_service(service).max_bytes else 0)  # past the hwm they waited in the publisher
  assert child.stop() == 0


# --- children ---

def sink(conflate):
  """A SubMaster of robotState; for each line 'k malformed' from the parent, update until vEgo == k (and, queueing,
  until every malformed message was counted), update a few more times, then print 'got ok vEgo errors'."""
  sm = SubMaster(["robotState"], conflate=conflate == "1")
  print("ready", flush=True)
  while True:
    if (line := read_command(10)) is None:
      continue
    k, expected = map(int, line.split())
    ok = update_until(sm, lambda: sm["robotState"].vEgo == k and (sm.conflate or sm.errors["robotState"] >= expected))
    for _ in range(3):
      sm.update(20)  # junk arriving after k must not displace it
    print(f"got {int(ok)} {sm['robotState'].vEgo} {sm.errors['robotState']}", flush=True)


def flood_sink(service):
  """A queueing socket that reads nothing until told 'report'; then it reads until a valid message comes and prints
  'rss BASE_KB PEAK_KB HELD' (HELD: flood messages it had queued)."""
  sock = sub_socket(service)
  base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print("ready", flush=True)
  while read_command(10) != "report":
    pass
  held = 0
  while sock.poll(30000):
    data = sock.recv()
    try:
      parse(data, get_service(service).kind)
      break
    except MessageError:
      held += 1
  print(f"rss {base} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} {held}", flush=True)
  while True:
    read_command(10)


if __name__ == "__main__":
  {"sink": sink, "flood_sink": flood_sink}[sys.argv[1]](*sys.argv[2:])
