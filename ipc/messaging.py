"""Typed pub/sub over pyzmq: new_message, PubMaster, SubMaster.

Choices, each for a trap measured on this machine (see BUS_NOTES.md):
  - Every message is one zmq part, so a keep-latest (ZMQ_CONFLATE) subscriber is safe; conflate
    with multipart aborts the process.
  - Keep-latest is the default: a high-water mark alone still lets kernel buffers hold seconds of
    old messages. Subscribers that need every message (recorder, echo) ask for conflate=False and
    get the service's queue; past it the publisher drops, it never blocks.
  - Publishers are XPUB sockets: they see subscriptions arrive, so a caller can wait out the slow
    joiner (messages sent before a subscriber has connected are silently lost).
  - Small messages are received as bytes (copied, 8-byte aligned) because capnp refuses unaligned data.
"""
import contextlib
import os
import socket
import time

import capnp
import zmq

from ipc.health import ServiceHealth
from ipc.schema import Event
from ipc.services import get_service, endpoint, runtime_dir


class MessageError(ValueError):
  """Bytes that are not a well-formed Event of the expected kind."""


def new_message(service: str, valid: bool = True, **fields):
  """An Event builder for `service`, stamped with logMonoTime, its union member set from `fields`
  (e.g. new_message("robotState", vEgo=3.0)) or left empty to fill in: msg.robotState.vEgo = 3.0."""
  kind = get_service(service).kind
  msg = Event.new_message(logMonoTime=time.monotonic_ns(), valid=valid, **{kind: fields})
  return msg


@contextlib.contextmanager
def decode(service: str, data: bytes):
  """Parse `data` as an Event of `service`'s kind; MessageError if it is not capnp, truncated,
  or carries another or an unknown union member. The reader is valid inside the `with` only."""
  kind = get_service(service).kind
  with contextlib.ExitStack() as stack:
    try:
      event = stack.enter_context(Event.from_bytes(data))
      which = event.which()
      getattr(event, which)  # follows the member's pointer: catches one that points outside the message
    except (capnp.KjException, ValueError, TypeError) as e:
      raise MessageError(f"{service}: not a readable Event ({len(data)} bytes): {e}") from None
    if which != kind:
      raise MessageError(f"{service}: carries {which!r}, expected {kind!r}")
    yield event


def _listening(path: str) -> bool:
  """Whether a live process accepts connections on the unix socket at `path` (not a stale file)."""
  with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
    try:
      probe.connect(path)
      return True
    except (FileNotFoundError, ConnectionRefusedError):
      return False


def _context() -> zmq.Context:
  return zmq.Context.instance()


def sub_socket(service: str, conflate: bool = True) -> zmq.Socket:
  """A SUB socket connected to `service`: keep-latest, or queueing up to the service's queue size."""
  sock = _context().socket(zmq.SUB)
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
      sock = _context().socket(zmq.XPUB)
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
  sm[service], the newest message's union member (a default one before any arrives). Readers stay
  valid until the update that replaces them.
  """

  def __init__(self, services, poll: str | None = None, conflate: bool = True):
    self.services = list(services)
    for name in self.services:
      get_service(name)
    if poll is not None and poll not in self.services:
      raise ValueError(f"poll service {poll!r} is not among {self.services}")
    self.sockets = {name: sub_socket(name, conflate) for name in self.services}
    self.poller = zmq.Poller()
    for name in [poll] if poll else self.services:
      self.poller.register(self.sockets[name], zmq.POLLIN)
    self.frame = 0
    self.health = {name: ServiceHealth(get_service(name).rate_hz) for name in self.services}
    self.updated = dict.fromkeys(self.services, False)
    self.recv_frame = dict.fromkeys(self.services, 0)
    self.recv_time = dict.fromkeys(self.services, 0.0)
    self.logMonoTime = dict.fromkeys(self.services, 0)
    self.valid = dict.fromkeys(self.services, False)
    self.alive = dict.fromkeys(self.services, False)
    self.freq_ok = dict.fromkeys(self.services, False)
    self.errors = dict.fromkeys(self.services, 0)
    self._open = {}  # service -> (ExitStack keeping the newest reader valid, that reader)
    for name in self.services:
      self._store(name, new_message(name, valid=False).to_bytes())

  def __getitem__(self, service: str):
    event = self._open[service][1]
    return getattr(event, event.which())

  def update(self, timeout_ms: int = 100) -> bool:
    """Wait up to timeout_ms for the poll service (or any service), then take what has arrived.
    Never raises for bad messages. Returns whether anything new arrived."""
    self.frame += 1
    self.updated = dict.fromkeys(self.services, False)
    self.poller.poll(timeout_ms)
    now = time.monotonic()
    for name, sock in self.sockets.items():
      while True:
        try:
          data = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
          break
        self._receive(name, data, now)
    for name in self.services:
      self.alive[name] = self.health[name].alive(now)
      self.freq_ok[name] = self.health[name].freq_ok(now)
    return any(self.updated.values())

  def _receive(self, name, data, now):
    try:
      event = self._store(name, data)
    except MessageError:
      self.errors[name] += 1
      return
    self.updated[name] = True
    self.recv_frame[name] = self.frame
    self.recv_time[name] = now
    self.logMonoTime[name] = event.logMonoTime
    self.valid[name] = event.valid
    self.health[name].add(now, event.seq, event.logMonoTime)

  def _store(self, name, data):
    """Open `data` as the newest message of `name`, closing the one it replaces."""
    stack = contextlib.ExitStack()
    event = stack.enter_context(decode(name, data))
    if name in self._open:
      self._open[name][0].close()
    self._open[name] = (stack, event)
    return event

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
