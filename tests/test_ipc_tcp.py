"""The TCP bus (EDGEML_BUS_HOST): no open bind on a non-loopback address without being told, CURVE with a key
directory (only holders of its keys read or subscribe), idle connections closed after the handshake time so that a
flood of them cannot lock out subscribers. Subscribers are this file run as a script (a process of its own, with
its own EDGEML_BUS_KEYS)."""
import os
import socket
import subprocess
import sys
import time

import pytest
import zmq

from ipc import services, transport
from ipc.messaging import PubMaster, new_message
from ipc.rundir import UnsafePath
from ipc.testing import Children, isolated_bus, read_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORTS = {"non_loopback": "robotState", "curve": "heartbeat", "idle": "roadCameraState", "flood": "wideRoadCameraState"}
# each test on a port of its own, so that parallel test workers never meet (liveCalibration: test_ipc_messaging)


def message(service, i):
  kind = services.get_service(service).kind
  fields = {"heartbeat": {"pid": i}, "robotState": {"vEgo": i}, "cameraFrame": {"frameId": i}}[kind]
  return new_message(service, **fields)


@pytest.fixture(autouse=True)
def children(monkeypatch):
  for key in ("EDGEML_BUS_KEYS", "EDGEML_BUS_INSECURE"):
    monkeypatch.delenv(key, raising=False)
  with isolated_bus(), Children() as start:
    yield start


def publisher(service, host, monkeypatch):
  monkeypatch.setenv("EDGEML_BUS_HOST", host)
  try:
    return PubMaster([service])
  except zmq.ZMQError as e:
    pytest.skip(f"port {services.tcp_port(service)} is taken: {e}")


def keys(path, monkeypatch=None):
  done = subprocess.run([sys.executable, "-m", "tools.bus", "keys", str(path)], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  if monkeypatch is not None:
    monkeypatch.setenv("EDGEML_BUS_KEYS", str(path))
  return path


def test_non_loopback_bind_needs_keys_or_insecure(monkeypatch):
  service = PORTS["non_loopback"]
  for host in ("0.0.0.0", "10.1.2.3", "example.com"):
    monkeypatch.setenv("EDGEML_BUS_HOST", host)
    with pytest.raises(UnsafePath, match="refusing to publish on tcp://.*EDGEML_BUS_KEYS.*EDGEML_BUS_INSECURE=1"):
      PubMaster([service])
  assert transport.is_loopback("127.0.0.1") and transport.is_loopback("::1") and transport.is_loopback("localhost")
  monkeypatch.setenv("EDGEML_BUS_INSECURE", "1")
  publisher(service, "0.0.0.0", monkeypatch).close()


def test_key_directory_open_to_others_is_refused(monkeypatch, tmp_path):
  keys(tmp_path / "keys", monkeypatch)
  os.chmod(tmp_path / "keys", 0o755)
  monkeypatch.setenv("EDGEML_BUS_HOST", "0.0.0.0")
  with pytest.raises(UnsafePath, match="mode 0755"):
    PubMaster([PORTS["non_loopback"]])


def test_curve_bus_serves_key_holders_only(children, monkeypatch, tmp_path):
  keys(tmp_path / "keys", monkeypatch)
  other = keys(tmp_path / "other")  # a whole other key set: its client key is not among ours
  service = PORTS["curve"]
  with publisher(service, "0.0.0.0", monkeypatch) as pm:
    holder = children(__file__, "subscribe", service, str(tmp_path / "keys"))
    plain = children(__file__, "subscribe", service, "")
    stranger = children(__file__, "subscribe", service, str(other))
    assert pm.wait_for_subscribers(service, 1, 10)
    for child in (holder, plain, stranger):
      child.expect("ready")
    for i in range(1, 31):  # 1.5 s of messages
      pm.send(service, message(service, i))
      time.sleep(0.05)
    counts = {}
    for name, child in (("holder", holder), ("plain", plain), ("stranger", stranger)):
      child.tell("count")
      counts[name] = int(child.expect("count").split()[1])
  assert counts["holder"] > 0 and counts["plain"] == 0 and counts["stranger"] == 0, counts
  assert pm.subscriptions[service] == 1


def test_idle_connections_are_closed_and_do_not_lock_out_subscribers(children, monkeypatch, tmp_path):
  keys(tmp_path / "keys", monkeypatch)
  service = PORTS["idle"]
  with publisher(service, "0.0.0.0", monkeypatch) as pm:
    idle = []
    for _ in range(200):
      s = socket.create_connection(("127.0.0.1", services.tcp_port(service)), timeout=10)
      idle.append(s)
    sub = children(__file__, "subscribe", service, str(tmp_path / "keys"))
    assert pm.wait_for_subscribers(service, 1, 10)
    sub.expect("ready")
    pm.send(service, message(service, 1))
    sub.tell("count")
    assert int(sub.expect("count").split()[1]) == 1
    closed = 0
    for s in idle:  # the publisher closes each once its handshake time has passed
      s.settimeout(transport.HANDSHAKE_MS / 1000 + 10)
      try:
        closed += s.recv(4096, socket.MSG_WAITALL) == b"" or s.recv(4096) == b""
      except (ConnectionResetError, TimeoutError):
        closed += 1
      s.close()
  assert closed == len(idle)


def test_a_flood_past_the_open_file_limit_does_not_lock_out_subscribers(children, monkeypatch, tmp_path):
  """The publisher may open 64 files; 200 idle connections use them up. It closes each after the handshake time,
  so a real subscriber arriving during the flood is served (within 20 s: zmq's default handshake time is 30 s)."""
  folder = keys(tmp_path / "keys", monkeypatch)
  monkeypatch.setenv("EDGEML_BUS_HOST", "0.0.0.0")
  service = PORTS["flood"]
  pub = children(__file__, "publish_limited", service, "64")
  pub.expect("ready")
  idle = []
  for _ in range(200):
    try:
      idle.append(socket.create_connection(("127.0.0.1", services.tcp_port(service)), timeout=0.5))
    except OSError:
      break  # the listen backlog is full too
  sub = children(__file__, "subscribe", service, str(folder))
  sub.expect("ready")
  deadline, count = time.monotonic() + 20, 0
  while count == 0 and time.monotonic() < deadline:
    sub.tell("count")
    count = int(sub.expect("count").split()[1])
  for s in idle:
    s.close()
  assert len(idle) > 64 and count > 0, (len(idle), count)


# --- children ---

def publish_limited(service, files):
  """Publish `service` at 20 Hz with at most `files` open files (soft and hard), until stdin closes."""
  import resource
  resource.setrlimit(resource.RLIMIT_NOFILE, (int(files), int(files)))
  pm = PubMaster([service])
  print("ready", flush=True)
  i = 0
  while True:
    i += 1
    pm.send(service, message(service, i))
    read_command(0.05)

def subscribe(service, folder):
  """Subscribe to `service` over TCP with EDGEML_BUS_KEYS=folder (none if empty); on 'count', print how many valid
  messages arrived so far."""
  if folder:
    os.environ["EDGEML_BUS_KEYS"] = folder
  else:
    os.environ.pop("EDGEML_BUS_KEYS", None)
  from ipc.messaging import SubMaster
  sm = SubMaster([service], conflate=False)
  print("ready", flush=True)
  count = 0
  while True:
    sm.update(20)
    count += sm.updated[service]
    if read_command(0.01) == "count":
      for _ in range(10):
        sm.update(20)
        count += sm.updated[service]
      print(f"count {count}", flush=True)


if __name__ == "__main__":
  {"subscribe": subscribe, "publish_limited": publish_limited}[sys.argv[1]](*sys.argv[2:])
