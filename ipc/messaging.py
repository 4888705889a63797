"""Typed pub/sub over pyzmq: new_message, PubMaster, SubMaster.

Choices, each for a trap measured on this machine (see BUS_NOTES.md):
  - Every message is one zmq part, so a keep-latest (ZMQ_CONFLATE) subscriber is safe; conflate
    with multipart aborts the process.
  - Keep-latest is the default: a high-water mark alone still lets kernel buffers hold seconds of
    old messages. Subscribers that need every message (recorder, echo) ask for conflate=False and
    get the service's queue; past it the publisher drops, it never blocks.
  - Publishers are XPUB sockets: they see subscriptions arrive, so a caller can wait out the slow
    joiner (messages sent before a subscriber has connected are silently lost).
  - Messages are received as bytes (copied, 8-byte aligned) because capnp refuses unaligned data.
  - The receive path is kept short: at 20 Hz the caches are cold at every message, and each layer
    of Python (a context manager, an exception for "no more messages") costs tens of microseconds.
"""
import os
import socket
import struct
import time

import capnp
import zmq

from ipc.health import ServiceHealth
from ipc.schema import Event
from ipc.services import get_service, endpoint, runtime_dir

MAX_SEGMENTS = 512


class MessageError(ValueError):
  """Bytes that are not a well-formed Event of the expected kind."""


def new_message(service: str, valid: bool = True, **fields):
  """An Event builder for `service`, stamped with logMonoTime, its union member set from `fields`
  (e.g. new_message("robotState", vEgo=3.0)) or left empty to fill in: msg.robotState.vEgo = 3.0."""
  msg = Event.new_message()
  msg.logMonoTime = time.monotonic_ns()
  msg.valid = valid
  member = msg.init(get_service(service).kind)
  for name, value in fields.items():
    setattr(member, name, value)
  return msg


def _segments(data: bytes):
  """The segments of a capnp message in standard framing (segment count - 1, sizes, then the segments),
  which must fill `data` exactly."""
  if data[:4] == b"\0\0\0\0" and len(data) == 8 + 8 * int.from_bytes(data[4:8], "little"):
    return (memoryview(data)[8:],)  # one segment: nearly every message
  count = int.from_bytes(data[:4], "little") + 1
  header = (4 * (count + 1) + 7) // 8 * 8
  if len(data) < 8 or count > MAX_SEGMENTS or len(data) < header:
    raise MessageError(f"not a capnp message ({len(data)} bytes)")
  sizes = struct.unpack_from(f"<{count}I", data, 4)
  if header + 8 * sum(sizes) != len(data):
    raise MessageError(f"{len(data)} bytes where the segment table says {header + 8 * sum(sizes)}")
  view, segments = memoryview(data), []
  for size in sizes:
    segments.append(view[header:header + 8 * size])
    header += 8 * size
  return segments


def decode(service: str, data: bytes):
  """The Event reader for `data`, checked to be a whole capnp message carrying `service`'s kind;
  MessageError otherwise (not capnp, truncated, another or an unknown union member)."""
  return parse(data, get_service(service).kind)[0]


def parse(data: bytes, kind: str):
  """(event, its `kind` member) for `data`, as decode() checks it, or MessageError."""
  try:
    event = Event.from_segments(_segments(data))  # a reader that keeps `data` alive, unlike from_bytes
    return event, getattr(event, kind)  # raises unless `kind` is the member set, and readable
  except capnp.KjException as e:
    raise MessageError(f"not a readable Event carrying {kind!r} ({len(data)} bytes): {e}") from None


def _listening(path: str) -> bool:
  """Whether a live process accepts connections on the unix socket at `path` (not a stale file)."""
  with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
    try:
      probe.connect(path)
      return True
    except (FileNotFoundError, ConnectionRefusedError):
      return False


def recv_within(sock: zmq.Socket, timeout_ms: int):
  """The next message on `sock` within timeout_ms (-1: no limit), or None. A blocking receive wakes
  sooner than zmq_poll followed by recv."""
  sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
  try:
    return sock.recv()
  except zmq.Again:
    return None


def sub_socket(service: str, conflate: bool = True) -> zmq.Socket:
  """A SUB socket connected to `service`: keep-latest, or queueing up to the service's queue size."""
  sock = zmq.Context.instance().socket(zmq.SUB)
  sock.setsockopt(zmq.LINGER, 0)
  if conflate:
    sock.setsockopt(zmq.CONFLATE, 1)  # must precede connect
  else:
    sock.setsockopt(zmq.RCVHWM, get_service(service).queue)
  sock.setsockopt(zmq.SUBSCRIBE, b"")
  sock.connect(endpoint(service))
  return sock


class PubMaster:
  """Publishes services. send() never blocks: a subscriber that falls `queue` messages behind loses
  the newest ones (keep-latest subscribers never fall behind). lossless=True is for offline producers
  such as replay: send() waits for such a subscriber instead."""

  def __init__(self, services, lossless: bool = False):
    self.sockets, self.seq, self.subscriptions = {}, {}, {}
    self.send_flags = 0 if lossless else zmq.NOBLOCK
    for name in services:
      service = get_service(name)
      address = endpoint(name)
      if address.startswith("ipc://"):
        os.makedirs(runtime_dir(), mode=0o700, exist_ok=True)
        if _listening(address.removeprefix("ipc://")):  # binding would silently steal the path
          raise RuntimeError(f"{name} is already published by another process ({address})")
      sock = zmq.Context.instance().socket(zmq.XPUB)
      sock.setsockopt(zmq.LINGER, 0)
      sock.setsockopt(zmq.SNDHWM, service.queue)
      sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscriber, not only the first
      sock.setsockopt(zmq.XPUB_NODROP, lossless)
      sock.bind(address)
      self.sockets[name], self.seq[name], self.subscriptions[name] = sock, 0, 0

  def send(self, service: str, msg):
    """Send an Event builder from new_message (stamped with the next seq), or raw bytes as they are."""
    sock = self._socket(service)
    if not isinstance(msg, bytes):
      kind = get_service(service).kind
      if msg.which() != kind:
        raise ValueError(f"{service} carries {kind!r}, got a {msg.which()!r} message")
      self.seq[service] += 1
      msg.seq = self.seq[service]
      msg = msg.to_bytes()
    sock.send(msg, self.send_flags)

  def wait_for_subscribers(self, service: str, count: int = 1, timeout_s: float = 5.0) -> bool:
    """True once `count` subscriptions to `service` have arrived (reconnects count again),
    False after timeout_s. Messages sent before a subscriber joins never reach it."""
    sock = self._socket(service)
    deadline = time.monotonic() + timeout_s
    while self.subscriptions[service] < count:
      left_ms = int((deadline - time.monotonic()) * 1000)
      if left_ms <= 0 or not sock.poll(left_ms):
        return False
      self.subscriptions[service] += sock.recv().startswith(b"\x01")  # 1 subscribe, 0 unsubscribe
    return True

  def _socket(self, service):
    if service not in self.sockets:
      get_service(service)  # a name that is no service at all gets the list of known ones
      raise ValueError(f"{service!r} is not published by this PubMaster; it has: {', '.join(self.sockets)}")
    return self.sockets[service]

  def close(self, linger_ms: int = 0):
    """Close the sockets; linger_ms > 0 lets queued messages go out first (then terminate the
    context, zmq.Context.instance().term(), to wait for them before the process exits)."""
    for sock in self.sockets.values():
      sock.close(linger=linger_ms)
    self.sockets = {}

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class SubMaster:
  """Latest message of each service plus its health.

  After update(): for each service, updated, recv_frame (update count at last receipt), recv_time
  (time.monotonic()), logMonoTime, valid, alive, freq_ok, errors (malformed messages dropped), and
  sm[service], the newest message's union member (a default one before any arrives).
  """

  def __init__(self, services, poll: str | None = None, conflate: bool = True):
    self.services = list(services)
    self.kinds = {name: get_service(name).kind for name in self.services}
    if poll is not None and poll not in self.services:
      raise ValueError(f"poll service {poll!r} is not among {self.services}")
    self.poll = poll
    self.sockets = {name: sub_socket(name, conflate) for name in self.services}
    self.names = {sock: name for name, sock in self.sockets.items()}
    self.poll_items = [(sock, zmq.POLLIN) for sock in self.sockets.values()]
    self.single_latest = conflate and len(self.services) == 1   # one socket holding at most one message
    self.health = {name: ServiceHealth(get_service(name).rate_hz) for name in self.services}
    self.frame = 0
    self.updated = dict.fromkeys(self.services, False)
    self.recv_frame = dict.fromkeys(self.services, 0)
    self.recv_time = dict.fromkeys(self.services, 0.0)
    self.logMonoTime = dict.fromkeys(self.services, 0)
    self.valid = dict.fromkeys(self.services, False)
    self.alive = dict.fromkeys(self.services, False)
    self.freq_ok = dict.fromkeys(self.services, False)
    self.errors = dict.fromkeys(self.services, 0)
    self.data = {name: parse(new_message(name, valid=False).to_bytes(), kind)[1]
                 for name, kind in self.kinds.items()}  # the newest message's union member, by service

  def __getitem__(self, service: str):
    return self.data[service]

  def update(self, timeout_ms: int = 100) -> bool:
    """Wait up to timeout_ms for the poll service (or any service), then take what has arrived.
    Never raises for bad messages. Returns whether anything new arrived."""
    self.frame += 1
    self.updated = dict.fromkeys(self.services, False)
    first = self._wait(timeout_ms)
    now = time.monotonic()
    if first is not None:
      self._receive(self.poll, first, now)
    if first is None or not self.single_latest:   # a single keep-latest socket just read holds nothing more
      while ready := zmq.zmq_poll(self.poll_items, 0):  # one call for all sockets, faster than get(EVENTS)
        for sock, _ in ready:
          self._receive(self.names[sock], sock.recv(), now)
    for name, health in self.health.items():
      self.alive[name] = alive = now - health.recv_time < health.alive_s
      self.freq_ok[name] = alive and health.rate_ok
    return any(self.updated.values())

  def _wait(self, timeout_ms):
    """Block until the poll service's next message, returned, or without a poll service until any
    service has one (None)."""
    if self.poll is None:
      zmq.zmq_poll(self.poll_items, timeout_ms)
      return None
    return recv_within(self.sockets[self.poll], timeout_ms)

  def _receive(self, name, data, now):
    try:
      event, self.data[name] = parse(data, self.kinds[name])
    except MessageError:
      self.errors[name] += 1
      return
    self.updated[name] = True
    self.recv_frame[name] = self.frame
    self.recv_time[name] = now
    self.logMonoTime[name] = event.logMonoTime
    self.valid[name] = event.valid
    self.health[name].add(now, event.seq, event.logMonoTime)

  def all_checks(self, services=None) -> bool:
    names = self.services if services is None else services
    return all(self.alive[n] and self.freq_ok[n] and self.valid[n] for n in names)

  def close(self):
    for sock in self.sockets.values():
      sock.close()
    self.sockets = {}

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
