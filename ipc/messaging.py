"""Typed pub/sub over pyzmq: new_message, PubMaster, SubMaster.

Choices, each for a trap measured on this machine (see BUS_NOTES.md) or found by an attacker (issue 10):
  - Every message is one zmq part. A multipart message is read whole and dropped as malformed (ZMQ_CONFLATE is not
    used: with a multipart message it aborts the process inside libzmq).
  - Keep-latest is the default, done by the reader: each read drains what has arrived (without blocking, at most
    about a queue's worth) and keeps the newest message that passes validation, so junk never displaces the
    latest valid message. A high-water mark alone would let kernel buffers hold seconds of old messages.
    Subscribers that need every message (recorder, echo) read sub_socket() as a queue, or use
    SubMaster(conflate=False); past it the publisher drops, it never blocks.
  - Every message is validated whole before anyone sees it (ipc/validate.py); a malformed one is counted, dropped
    and reported at a bounded rate, never raised into a consumer.
  - Each subscriber socket refuses messages over the service's max_bytes (ZMQ_MAXMSGSIZE) and holds at most
    Service.hwm of them: its memory is bounded in bytes.
  - ipc:// sockets live in a private runtime directory (ipc/rundir.py), checked by publishers and subscribers;
    tcp:// ones use CURVE with EDGEML_BUS_KEYS, and refuse a non-loopback bind without it (ipc/transport.py).
  - Publishers are XPUB sockets: they see subscriptions arrive, so a caller can wait out the slow
    joiner (messages sent before a subscriber has connected are silently lost).
  - Messages are received as bytes (copied, 8-byte aligned) because capnp refuses unaligned data.
  - The receive path is kept short: at 20 Hz the caches are cold at every message, and each layer
    of Python (a context manager, an exception for "no more messages") costs tens of microseconds.
"""
import os
import socket
import time

import zmq

from ipc.health import ServiceHealth
from ipc.rundir import private_dir
from ipc.schema import Event
from ipc.services import get_service, endpoint, runtime_dir
from ipc.transport import secure_publisher, secure_subscriber
from ipc.validate import DropLog, MessageError, parse

PUB_MAX_SUBSCRIPTION_BYTES = 4096  # what a publisher takes from a subscriber: subscriptions, CURVE handshake commands
FRAMING_SLACK = 256  # CURVE's per-message overhead, which ZMQ_MAXMSGSIZE counts too
__all__ = ["MessageError", "new_message", "decode", "parse", "recv_one", "recv_within", "drain", "sub_socket",
           "PubMaster", "SubMaster"]


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


def decode(service: str, data: bytes):
  """The Event reader for `data`, checked whole (ipc/validate.py) to be a capnp message carrying `service`'s kind;
  MessageError otherwise (not capnp, truncated, another or an unknown union member, a broken pointer inside)."""
  return parse(data, get_service(service).kind)[0]


def _ipc_ready(name: str) -> str:
  """The endpoint of `name`, its runtime directory created or checked first (ipc/rundir.py)."""
  address = endpoint(name)
  if address.startswith("ipc://"):
    private_dir(runtime_dir())
  return address


def _listening(path: str) -> bool:
  """Whether a live process accepts connections on the unix socket at `path` (not a stale file)."""
  with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
    try:
      probe.connect(path)
      return True
    except (FileNotFoundError, ConnectionRefusedError):
      return False


MULTIPART = b""  # what recv_one gives for a multipart message: parse() refuses it like any malformed one


def recv_one(sock: zmq.Socket, flags: int = 0) -> bytes:
  """The next message on `sock`; a multipart one has all its parts read and comes back as MULTIPART
  (zmq.Again as sock.recv raises it)."""
  data = sock.recv(flags)
  if not sock.getsockopt(zmq.RCVMORE):
    return data
  while sock.getsockopt(zmq.RCVMORE):
    sock.recv(zmq.NOBLOCK)  # the parts of a message arrive together
  return MULTIPART


def recv_within(sock: zmq.Socket, timeout_ms: int):
  """The next message on `sock` within timeout_ms (-1: no limit), or None. A blocking receive wakes
  sooner than zmq_poll followed by recv."""
  sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
  try:
    return recv_one(sock)
  except zmq.Again:
    return None


def drain(sock: zmq.Socket, limit: int) -> list:
  """The messages waiting on `sock`, oldest first, without blocking: at most `limit`, so that a flood cannot
  keep the reader here."""
  got = []
  while len(got) < limit and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
    got.append(recv_one(sock, zmq.NOBLOCK))
  return got


def drain_limit(service: str) -> int:
  return 2 * get_service(service).hwm + 16


def sub_socket(service: str) -> zmq.Socket:
  """A SUB socket connected to `service`, holding at most the service's hwm messages of at most its max_bytes.
  Keep-latest is the reader's part: SubMaster and FrameClient drain the socket on every read; a plain recv() reads
  it as a queue."""
  info = get_service(service)
  address = _ipc_ready(service)
  sock = zmq.Context.instance().socket(zmq.SUB)
  try:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, info.hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, info.max_bytes + FRAMING_SLACK)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    if address.startswith("tcp://"):
      secure_subscriber(sock)
    sock.connect(address)
  except BaseException:
    sock.close()
    raise
  return sock


class PubMaster:
  """Publishes services. send() never blocks: a subscriber that falls `queue` messages behind loses
  the newest ones (keep-latest subscribers never fall behind). lossless=True is for offline producers
  such as replay: send() waits for such a subscriber instead."""

  def __init__(self, services, lossless: bool = False):
    self.sockets, self.seq, self.subscriptions = {}, {}, {}
    self.send_flags = 0 if lossless else zmq.NOBLOCK
    try:
      for name in services:
        self._bind(name)
    except BaseException:
      self.close()  # the sockets made so far
      raise

  def _bind(self, name):
    service = get_service(name)
    address = _ipc_ready(name)
    if address.startswith("ipc://"):
      path = address.removeprefix("ipc://")
      if _listening(path):  # binding would silently steal the path
        raise RuntimeError(f"{name} is already published by another process ({address})")
      if os.path.lexists(path):
        os.unlink(path)  # a stale socket of ours: nobody listens on it
    sock = zmq.Context.instance().socket(zmq.XPUB)
    try:
      sock.setsockopt(zmq.LINGER, 0)
      sock.setsockopt(zmq.SNDHWM, service.queue)
      sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscriber, not only the first
      sock.setsockopt(zmq.XPUB_NODROP, self.send_flags == 0)
      sock.setsockopt(zmq.MAXMSGSIZE, PUB_MAX_SUBSCRIPTION_BYTES)
      if address.startswith("tcp://"):
        secure_publisher(sock, address)
      sock.bind(address)
    except BaseException:
      sock.close()
      raise
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
    if len(msg) > (limit := get_service(service).max_bytes):
      raise ValueError(f"a {len(msg)}-byte {service} message is over the service's max_bytes ({limit}): "
                       f"subscribers would drop it and their connection")
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
  sm[service], the newest valid message's union member (a default one before any arrives).
  Keep-latest (the default) drains each socket on every update and keeps the newest message that passes
  validation; conflate=False takes every message in order (up to the queue, a flood cannot hold update()).
  """

  def __init__(self, services, poll: str | None = None, conflate: bool = True):
    self.services = list(services)
    self.kinds = {name: get_service(name).kind for name in self.services}
    if poll is not None and poll not in self.services:
      raise ValueError(f"poll service {poll!r} is not among {self.services}")
    self.poll, self.conflate = poll, conflate
    self.sockets = {}
    try:
      for name in self.services:
        self.sockets[name] = sub_socket(name)
    except BaseException:
      self.close()
      raise
    self.names = {sock: name for name, sock in self.sockets.items()}
    self.limits = {name: drain_limit(name) for name in self.services}
    self.poll_items = [(sock, zmq.POLLIN) for sock in self.sockets.values()]
    self.health = {name: ServiceHealth(get_service(name).rate_hz) for name in self.services}
    self.drops = DropLog("SubMaster")
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
      self._take(self.poll, [first, *drain(self.sockets[self.poll], self.limits[self.poll])], now)
    if first is None or len(self.sockets) > 1:  # the poll socket alone was just drained
      for sock, _ in zmq.zmq_poll(self.poll_items, 0):  # one call for all sockets, faster than get(EVENTS)
        name = self.names[sock]
        self._take(name, drain(sock, self.limits[name]), now)
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

  def _take(self, name, batch, now):
    """Keep-latest: the newest valid message of `batch` (older ones are superseded unread); queueing: each in order."""
    for data in reversed(batch) if self.conflate else batch:
      try:
        event, member = parse(data, self.kinds[name])
      except MessageError as e:
        self.errors[name] += 1
        self.drops.drop(name, str(e))
        continue
      self.data[name] = member
      self.updated[name] = True
      self.recv_frame[name] = self.frame
      self.recv_time[name] = now
      self.logMonoTime[name] = event.logMonoTime
      self.valid[name] = event.valid
      self.health[name].add(now, event.seq, event.logMonoTime)
      if self.conflate:
        return

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
