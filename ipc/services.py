"""The service registry: every topic on the bus, its message type and rate, and where its socket lives.

A service is published by one process, which binds the endpoint; subscribers connect to it.
Endpoints derive from the service name alone:
  - default: an ipc:// socket in a private runtime directory (ipc/rundir.py: ours, mode 0700) namespaced by
    EDGEML_PREFIX, so parallel test runs (each with its own prefix) never meet;
  - with EDGEML_BUS_HOST set: tcp://HOST:PORT, the port a hash of the name, for a stack spread over
    machines. The publisher binds HOST and nothing wider: set it to 0.0.0.0 only if you mean it.
"""
import os
import re
import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Service:
  name: str
  kind: str       # the Event union member it carries
  rate_hz: float  # declared rate: alive and freq_ok are judged against it
  queue: int      # messages kept per subscriber before the publisher drops (when not conflating)
  logged: bool    # recorded by `edgeml-bus record` by default
  max_bytes: int = 4096  # largest message accepted (ZMQ_MAXMSGSIZE): a bigger one drops the connection

  @property
  def hwm(self) -> int:
    """Messages a subscriber's socket holds before the publisher drops (keep-latest ones drain it on every read):
    the queue, cut so that it never holds more than QUEUE_BYTES."""
    return max(2, min(self.queue, QUEUE_BYTES // self.max_bytes))


# queue: about two seconds of messages, at least 100. A publisher learns what its subscribers have read
# only in batches of half the queue, and at most once a millisecond: a burst faster than that drops
# messages at a small high-water mark even when every subscriber keeps up (measured: 3% lost at 32).
# max_bytes: a cameraFrame notice is ~150 bytes, a calibration ~100; modelOutput carries the model's outputs.
QUEUE_BYTES = 32 << 20  # per subscriber and service: what a flood of the largest messages can make it hold
SERVICES = {s.name: s for s in (
  Service("roadCameraState", "cameraFrame", 20.0, queue=100, logged=True),
  Service("wideRoadCameraState", "cameraFrame", 20.0, queue=100, logged=True),
  Service("modelOutput", "modelOutput", 20.0, queue=100, logged=True, max_bytes=1 << 20),
  Service("liveCalibration", "calibration", 4.0, queue=100, logged=True),
  Service("robotState", "robotState", 100.0, queue=200, logged=True),
  Service("heartbeat", "heartbeat", 1.0, queue=100, logged=False),
)}

TCP_BASE_PORT = 8600
TCP_PORT_SPAN = 2000


def get_service(name: str) -> Service:
  try:
    return SERVICES[name]
  except KeyError:
    raise ValueError(f"unknown service {name!r}; known services: {', '.join(sorted(SERVICES))}") from None


def camera_service(camera: str) -> Service:
  """The cameraFrame service of a camera: 'road' -> roadCameraState."""
  name = f"{camera}CameraState"
  if name not in SERVICES or SERVICES[name].kind != "cameraFrame":
    cameras = sorted(s.name.removesuffix("CameraState") for s in SERVICES.values() if s.kind == "cameraFrame")
    raise ValueError(f"unknown camera {camera!r}; known cameras: {', '.join(cameras)}")
  return SERVICES[name]


def prefix() -> str:
  """EDGEML_PREFIX, or 'default': names every socket and shared-memory file of one bus."""
  value = os.environ.get("EDGEML_PREFIX") or "default"
  if not re.fullmatch(r"[A-Za-z0-9_]+", value):
    raise ValueError(f"EDGEML_PREFIX={value!r}: use letters, digits and '_' only")
  return value


def runtime_dir() -> str:
  """$XDG_RUNTIME_DIR/edgeml-PREFIX, or without it ~/.cache/edgeml/edgeml-PREFIX: never a shared directory such
  as /tmp, where another user could create the path first."""
  base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "edgeml")
  return os.path.join(base, f"edgeml-{prefix()}")


def tcp_port(name: str) -> int:
  return TCP_BASE_PORT + zlib.crc32(name.encode()) % TCP_PORT_SPAN


def endpoint(name: str) -> str:
  get_service(name)
  host = os.environ.get("EDGEML_BUS_HOST")
  if host:
    return f"tcp://{host}:{tcp_port(name)}"
  return f"ipc://{os.path.join(runtime_dir(), name)}"
