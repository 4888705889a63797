"""PubMaster/SubMaster across processes: round trip, keep-latest, alive, freq_ok, malformed input,
a slow subscriber. Children are this file run as a script (see the roles at the bottom)."""
import os
import sys
import time

import numpy as np
import pytest
import zmq

from ipc import services
from ipc.messaging import MessageError, PubMaster, SubMaster, decode, new_message, sub_socket
from ipc.schema import Event
from ipc.tensors import get_outputs, set_outputs
from ipc.testing import Children, isolated_bus, read_command, update_until


@pytest.fixture(autouse=True)
def children():
  """Every test on a private bus; the child processes it starts are killed at its end."""
  with isolated_bus(), Children() as start:
    yield start


# --- registry and messages, one process ---

def test_unknown_service_names_the_known_ones():
  with pytest.raises(ValueError, match=r"'nope'.*robotState"):
    new_message("nope")
  with pytest.raises(ValueError, match="nope"):
    SubMaster(["nope"])
  with pytest.raises(ValueError, match=r"unknown camera 'back'.*road"):
    services.camera_service("back")


def test_endpoints_derive_from_name_and_prefix(monkeypatch):
  assert services.endpoint("robotState") == f"ipc://{services.runtime_dir()}/robotState"
  assert services.runtime_dir().endswith(f"edgeml-{os.environ['EDGEML_PREFIX']}")
  monkeypatch.setenv("EDGEML_BUS_HOST", "127.0.0.1")
  assert services.endpoint("robotState") == f"tcp://127.0.0.1:{services.tcp_port('robotState')}"
  assert len({services.tcp_port(n) for n in services.SERVICES}) == len(services.SERVICES)
  monkeypatch.setenv("EDGEML_PREFIX", "../x")
  with pytest.raises(ValueError, match="EDGEML_PREFIX"):
    services.runtime_dir()


def test_tcp_round_trip_on_loopback(monkeypatch):
  monkeypatch.setenv("EDGEML_BUS_HOST", "127.0.0.1")
  try:
    pm = PubMaster(["liveCalibration"])
  except zmq.ZMQError as e:
    pytest.skip(f"port {services.tcp_port('liveCalibration')} on 127.0.0.1 is taken: {e}")
  with pm, SubMaster(["liveCalibration"]) as sm:
    assert pm.wait_for_subscribers("liveCalibration", timeout_s=10)
    pm.send("liveCalibration", new_message("liveCalibration", warpMatrix=list(range(9))))
    assert update_until(sm, lambda: sm.updated["liveCalibration"])
    assert list(sm["liveCalibration"].warpMatrix) == list(range(9))


def test_new_message_is_stamped():
  before = time.monotonic_ns()
  msg = new_message("robotState", vEgo=3.5)
  assert before <= msg.logMonoTime <= time.monotonic_ns()
  assert msg.valid and msg.which() == "robotState" and msg.robotState.vEgo == 3.5
  with PubMaster(["robotState"]) as pm:
    with pytest.raises(ValueError, match="heartbeat"):
      pm.send("robotState", new_message("heartbeat"))
    with pytest.raises(ValueError, match="not published by this PubMaster"):
      pm.send("heartbeat", new_message("heartbeat"))
    with pytest.raises(RuntimeError, match="robotState is already published"):
      PubMaster(["robotState"])


def test_model_outputs_round_trip():
  arrays = {"plan": np.arange(12, dtype=np.float32).reshape(3, 4), "lead": np.array([0.5], np.float64)}
  msg = new_message("modelOutput", frameId=7, frameAge=1, gpuExecutionTime=0.004)
  set_outputs(msg.modelOutput, arrays)
  event = decode("modelOutput", msg.to_bytes())
  outputs = get_outputs(event.modelOutput)
  assert event.modelOutput.frameId == 7
  assert list(outputs) == ["plan", "lead"] and outputs["lead"].dtype == np.float32
  for name, array in arrays.items():
    np.testing.assert_array_equal(outputs[name], array)


def unknown_member(data: bytes) -> bytes:
  """`data` with the Event union discriminant set past the last member."""
  offset = 16 + 2 * Event.schema.node.struct.discriminantOffset  # segment table, root pointer, then data
  return data[:offset] + b"\xff\x7f" + data[offset + 2:]


def malformed(kind: int) -> bytes:
  good = new_message("robotState", vEgo=1.0).to_bytes()
  return [os.urandom(48), good[:-8], good + bytes(8), unknown_member(good), new_message("heartbeat").to_bytes(),
          b"abc"][kind]


MALFORMED_KINDS = 6


@pytest.mark.parametrize("kind", range(MALFORMED_KINDS))
def test_decode_rejects_malformed(kind):
  with pytest.raises(MessageError):
    decode("robotState", malformed(kind))


# --- across processes ---

def test_round_trip(children):
  sm = SubMaster(["robotState", "liveCalibration"], poll="robotState")
  children(__file__, "publish", "100").expect("ready")
  assert update_until(sm, lambda: sm.updated["robotState"])
  state = sm["robotState"]
  assert state.aEgo == -state.vEgo and state.vEgo >= 1
  assert sm.valid["robotState"] and sm.recv_frame["robotState"] == sm.frame
  assert 0 < sm.logMonoTime["robotState"] <= time.monotonic_ns()
  assert not sm.updated["liveCalibration"] and not sm.alive["liveCalibration"]
  assert len(sm["liveCalibration"].warpMatrix) == 0  # a default message before any arrives
  assert sm.errors == {"robotState": 0, "liveCalibration": 0}


def test_keep_latest_by_default_and_queue_on_request(children):
  burst = 50
  sm = SubMaster(["robotState"])
  queued = sub_socket("robotState")
  children(__file__, "burst", str(burst), "2").expect("done")
  seen = []

  def newest_arrived():
    if sm.updated["robotState"]:
      seen.append(sm["robotState"].vEgo)
    return seen[-1:] == [burst]
  assert update_until(sm, newest_arrived)
  assert seen == sorted(seen) and len(seen) < burst  # older messages were replaced, not queued
  every = []
  while len(every) < burst and queued.poll(5000):
    every.append(decode("robotState", queued.recv()).robotState.vEgo)
  assert every == list(range(1, burst + 1))
  queued.close()


def test_polling_submaster_gives_the_newest_not_the_oldest_queued(children):
  burst = 50
  sm = SubMaster(["robotState"], poll="robotState")
  probe = sub_socket("robotState")  # has every message once they have all arrived
  children(__file__, "burst", str(burst), "2").expect("done")
  for _ in range(burst):
    assert probe.poll(10000)
    probe.recv()
  assert sm.sockets["robotState"].poll(10000)
  assert sm.update(10000) and sm["robotState"].vEgo == burst
  assert not sm.update(0)  # nothing older left queued behind it
  probe.close()


def test_alive_follows_publisher_death_and_restart(children):
  sm = SubMaster(["robotState"])
  child = children(__file__, "publish", "100")
  child.expect("ready")
  assert update_until(sm, lambda: sm.all_checks())
  child.kill()
  assert update_until(sm, lambda: not sm.alive["robotState"])
  assert not sm.freq_ok["robotState"] and not sm.all_checks()
  children(__file__, "publish", "100").expect("ready")
  assert update_until(sm, lambda: sm.alive["robotState"] and sm.freq_ok["robotState"])


def test_freq_ok_false_at_half_rate(children):
  sm = SubMaster(["robotState"])
  children(__file__, "publish", "50").expect("ready")
  measured = []  # freq_ok at each update once a whole window has been measured

  def enough():
    if sm.health["robotState"].rate is not None:
      measured.append(sm.freq_ok["robotState"])
    return len(measured) >= 20
  assert update_until(sm, enough)
  assert not any(measured) and sm.alive["robotState"]


def test_malformed_messages_are_counted_while_valid_ones_arrive(children):
  sm = SubMaster(["robotState"], conflate=False)  # queue, so every bad message reaches update()
  child = children(__file__, "malformed")
  child.expect("ready")
  for k in range(1, 2 * MALFORMED_KINDS + 1):
    child.tell(str(k))  # the child sends one malformed message, then a good one with vEgo=k
    assert update_until(sm, lambda: sm["robotState"].vEgo == k)
    assert sm.errors["robotState"] == k
    assert sm.valid["robotState"] and sm.alive["robotState"]


def test_slow_subscriber_never_blocks_publisher(children):
  flood = 20000
  stalled = sub_socket("robotState")
  children(__file__, "burst", str(flood), "1").expect("done", timeout_s=60)  # all sent while nobody reads
  received = 0
  while stalled.poll(200):
    stalled.recv()
    received += 1
  assert 0 < received < flood  # the publisher dropped instead of waiting
  stalled.close()


# --- children ---

def publish(rate_hz):
  """Publish robotState with vEgo = 1, 2, ... at rate_hz until stdin closes. After a stall (a busy machine) it
  catches up by one message at most: a longer burst would read as a rate above rate_hz, no catching up at all
  as one below it."""
  pm = PubMaster(["robotState"])
  pm.wait_for_subscribers("robotState", timeout_s=10)
  print("ready", flush=True)
  period, due, i = 1 / float(rate_hz), time.monotonic(), 0
  while True:
    i += 1
    pm.send("robotState", new_message("robotState", vEgo=i, aEgo=-i))
    due = max(due + period, time.monotonic() - period)
    read_command(due - time.monotonic())


def burst(count, subscribers):
  """Send `count` messages as fast as possible once the subscribers are there; then wait for stdin to close."""
  pm = PubMaster(["robotState"])
  pm.wait_for_subscribers("robotState", int(subscribers), timeout_s=10)
  for i in range(1, int(count) + 1):
    pm.send("robotState", new_message("robotState", vEgo=i))
  print("done", flush=True)
  while True:
    read_command(10)


def send_malformed():
  """For each line k from the parent: one malformed message, then a good one with vEgo=k."""
  pm = PubMaster(["robotState"])
  pm.wait_for_subscribers("robotState", timeout_s=10)
  print("ready", flush=True)
  while True:
    if (line := read_command(10)) is not None:
      k = int(line)
      pm.send("robotState", malformed(k % MALFORMED_KINDS))
      pm.send("robotState", new_message("robotState", vEgo=k))


if __name__ == "__main__":
  {"publish": publish, "burst": burst, "malformed": send_malformed}[sys.argv[1]](*sys.argv[2:])
