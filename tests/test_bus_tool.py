"""edgeml-bus against live publishers: list, hz, echo, and record -> replay -> record giving the same events.
Publishers are this file run as a script (see the roles at the bottom)."""
import os
import re
import subprocess
import sys
import time

import pytest

from ipc.logfile import read_log
from ipc.messaging import PubMaster, new_message
from ipc.testing import Children, isolated_bus, read_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def children():
  """Every test on a private bus; the child processes it starts are killed at its end."""
  with isolated_bus(), Children() as start:
    yield start


def tool(*args) -> str:
  done = subprocess.run([sys.executable, "-m", "tools.bus", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=60)
  assert done.returncode == 0, done.stderr
  return done.stdout


def by_service(entries):
  events = {}
  for service, _, data in entries:
    events.setdefault(service, []).append(data)
  return events


def test_list_hz_echo_see_a_live_service(children):
  children(__file__, "publish").expect("ready")
  out = tool("echo", "robotState", "-n", "2", "--time", "30")
  assert out.count("robotState = (") == 2 and "vEgo = " in out
  out = tool("hz", "robotState", "--time", "1.2", "--interval", "0.5")
  assert re.search(r"^robotState: [0-9.]+ Hz \(declared 100\)$", out, re.M)
  out = tool("list", "--time", "1")
  assert re.search(r"^robotState +robotState +declared +100\.0 Hz +measured +[0-9.]+ Hz$", out, re.M)
  assert "liveCalibration" not in out


def test_unknown_service_is_refused_with_the_list():
  done = subprocess.run([sys.executable, "-m", "tools.bus", "hz", "nope"], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)
  assert done.returncode == 2 and "unknown service 'nope'" in done.stderr and "robotState" in done.stderr


@pytest.mark.parametrize("timing", ["recorded", "fast"])
def test_record_replay_gives_identical_events(children, tmp_path, timing):
  first, second = str(tmp_path / "first.log"), str(tmp_path / "second.log")
  recorder = children("-m", "tools.bus", "record", first, "-n", "20")
  recorder.expect("recording")
  publisher = children(__file__, "publish_mix", "10")
  recorder.expect("recorded 20")
  assert recorder.stop() == 0 and publisher.stop() == 0  # replay takes the place of the publisher

  recorder = children("-m", "tools.bus", "record", second, "-n", "20")
  recorder.expect("recording")
  player = children("-m", "tools.bus", "replay", first, "--wait", "30", *(["--fast"] if timing == "fast" else []))
  player.expect("replayed 20")
  recorder.expect("recorded 20")
  assert player.stop() == 0 and recorder.stop() == 0

  recorded, replayed = by_service(read_log(first)), by_service(read_log(second))
  assert sorted(recorded) == ["liveCalibration", "robotState"]  # heartbeat is not a logged service
  assert replayed == recorded and all(len(events) == 10 for events in recorded.values())


def publish():
  """robotState at 100 Hz until stdin closes."""
  pm = PubMaster(["robotState"])
  print("ready", flush=True)
  start, i = time.monotonic(), 0
  while True:
    i += 1
    pm.send("robotState", new_message("robotState", vEgo=i))
    read_command(start + i / 100 - time.monotonic())


def publish_mix(count):
  """`count` messages each of robotState, liveCalibration and heartbeat, once both logged ones have a subscriber."""
  pm = PubMaster(["robotState", "liveCalibration", "heartbeat"])
  for service in ("robotState", "liveCalibration"):
    pm.wait_for_subscribers(service, timeout_s=30)
  for i in range(int(count)):
    pm.send("robotState", new_message("robotState", vEgo=i))
    pm.send("liveCalibration", new_message("liveCalibration", warpMatrix=[float(i)] * 9))
    pm.send("heartbeat", new_message("heartbeat", process="test", pid=os.getpid()))
    time.sleep(0.005)
  while True:
    read_command(10)


if __name__ == "__main__":
  {"publish": publish, "publish_mix": publish_mix}[sys.argv[1]](*sys.argv[2:])
