"""One-way bus latency across two processes, each path beside its baseline in the same run.

  python -m tools.bench_bus [--rounds 100] [--warmup 10] [--gap-ms 50]

Cases, interleaved round by round so that every case sees the same machine noise:
  event  104 bytes through raw pyzmq PUB/SUB; a 104-byte Event through PubMaster.send -> SubMaster.update,
         timed like the raw bytes from a stamp written into the built message just before sending, and
         once more from new_message() on.
  frame  a 1928x1208 NV12 frame (3,493,536 bytes) as bytes through zmq (received with and without a
         copy); and through the frame pool, from publish() (the pixels already in the buffer, as a camera
         driver writes them) to the client's numpy views, and from the start of writing the pixels.
Latency is CLOCK_MONOTONIC when the receiver has the data minus the sender's stamp. The receiver
acknowledges each message on a side socket, so only one message is in flight at a time.
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np
import zmq

from ipc.framepool import FrameClient, FrameServer
from ipc.messaging import PubMaster, SubMaster, new_message
from ipc.services import runtime_dir
from ipc.testing import Child, isolated_bus

WIDTH, HEIGHT = 1928, 1208
FRAME_BYTES = WIDTH * HEIGHT * 3 // 2
EVENT_NAME = "b" * 32  # a heartbeat with this process name is a 104-byte Event
STAMP = struct.Struct("<Q")
LABELS = {
  "event raw": "event  raw pyzmq PUB/SUB",
  "event master": "event  PubMaster -> SubMaster",
  "event master+build": "event  same, timed from new_message()",
  "frame zmq": "frame  bytes through zmq",
  "frame zmq zero-copy": "frame  bytes through zmq, copy=False",
  "frame pool": "frame  pool: publish -> client view",
  "frame pool+write": "frame  pool: write pixels -> client view",
}
CASES = list(LABELS)
TARGETS = [("frame pool", "frame zmq", 0.2, "pooled frame / frame through zmq"),
           ("event master", "event raw", 1.5, "PubMaster/SubMaster / raw pyzmq")]
ALSO = [("frame pool", "frame zmq zero-copy", "pooled frame / zmq with copy=False")]


def address(name: str) -> str:
  return f"ipc://{runtime_dir()}/bench-{name}"


def raw_socket(kind, name):
  sock = zmq.Context.instance().socket(kind)
  sock.setsockopt(zmq.LINGER, 0)
  if kind == zmq.PUB:
    sock.bind(address(name))
  else:
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(address(name))
  return sock


def sender(rounds: int, gap_s: float) -> dict:
  """Runs the receiver as a child, sends every case once per round, returns its latencies (ns) per case."""
  os.makedirs(runtime_dir(), mode=0o700, exist_ok=True)
  event_pub, frame_pub = raw_socket(zmq.PUB, "event"), raw_socket(zmq.PUB, "frame")
  acks = zmq.Context.instance().socket(zmq.PULL)
  acks.bind(address("ack"))
  pm = PubMaster(["heartbeat"])
  server = FrameServer("road", WIDTH, HEIGHT, buffers=4)
  receiver = Child("-m", "tools.bench_bus", "--receive", str(rounds))
  try:
    receiver.expect("ready", timeout_s=30)
    if not (pm.wait_for_subscribers("heartbeat", 1, 10) and server.wait_for_client(10)):
      raise RuntimeError("the receiver did not subscribe")
    time.sleep(0.2)  # the raw SUB sockets connected with the others; let their handshakes finish too
    event = bytearray(len(new_message("heartbeat", process=EVENT_NAME).to_bytes()))
    frame = np.random.default_rng(0).integers(0, 255, FRAME_BYTES, np.uint8)
    for r in range(rounds):
      for case in CASES:
        frame[0] = r % 256
        t0 = time.monotonic_ns()
        if case == "event raw":
          STAMP.pack_into(event, 0, t0)
          event_pub.send(event)
        elif case == "event master":
          msg = new_message("heartbeat", process=EVENT_NAME, pid=r)
          msg.logMonoTime = t0 = time.monotonic_ns()  # built like the raw payload: stamp, then send
          pm.send("heartbeat", msg)
        elif case == "event master+build":
          pm.send("heartbeat", new_message("heartbeat", process=EVENT_NAME, pid=r))
        elif case.startswith("frame zmq"):
          frame[8:16].view(np.uint64)[0] = t0
          frame_pub.send(frame, copy=case == "frame zmq")
        else:
          buf = server.next_buffer()
          buf[:] = frame
          if case == "frame pool":
            t0 = time.monotonic_ns()  # the camera has written the frame: only publishing is timed
          server.publish(timestamp_eof=t0)
        if not acks.poll(5000):
          raise RuntimeError(f"no acknowledgement for {case!r} in round {r}: lost message")
        acks.recv()
        time.sleep(gap_s)
    return json.loads(receiver.expect("{", timeout_s=30))
  finally:
    receiver.kill()
    server.close()
    pm.close()
    for sock in (event_pub, frame_pub, acks):
      sock.close()


def check(ok: bool, case: str, r: int):
  if not ok:
    raise RuntimeError(f"{case!r}, round {r}: the receiver got another message than the one sent")


def receive(rounds: int):
  """The receiving process: one latency per case per round, printed as JSON at the end."""
  event_sub, frame_sub = raw_socket(zmq.SUB, "event"), raw_socket(zmq.SUB, "frame")
  ack = zmq.Context.instance().socket(zmq.PUSH)
  ack.setsockopt(zmq.LINGER, 1000)
  ack.connect(address("ack"))
  sm = SubMaster(["heartbeat"], poll="heartbeat")
  client = FrameClient("road", timeout_s=10)
  print("ready", flush=True)
  latencies = {case: [] for case in CASES}
  copies = 0
  for r in range(rounds):
    for case in CASES:
      if case == "event raw":
        data = event_sub.recv()
        t1 = time.monotonic_ns()
        t0 = STAMP.unpack_from(data)[0]
      elif case.startswith("event master"):
        deadline = time.monotonic() + 5
        while not sm.update(1000) and time.monotonic() < deadline:
          pass
        t1 = time.monotonic_ns()
        t0 = sm.logMonoTime["heartbeat"]
        check(sm["heartbeat"].pid == r, case, r)
      elif case.startswith("frame zmq"):
        view = np.frombuffer(frame_sub.recv(copy=case == "frame zmq"), np.uint8)
        t1 = time.monotonic_ns()
        t0 = int(view[8:16].view(np.uint64)[0])
        check(view[0] == r % 256, case, r)
      else:
        deadline, frame = time.monotonic() + 5, None
        while frame is None and time.monotonic() < deadline:
          frame = client.recv(1000)
        t1 = time.monotonic_ns()
        check(frame is not None and frame.y[0, 0] == r % 256, case, r)
        t0 = frame.timestamp_eof
        copies += frame.y.base is not client.pool.mm  # a view of the shared mapping, or a copy?
      latencies[case].append(t1 - t0)
      ack.send(b"")
  print(json.dumps({**latencies, "pool copies": copies}), flush=True)


def table(latencies: dict, warmup: int, rounds: int, gap_ms: float) -> str:
  rows = [f"one-way latency across two processes: {rounds - warmup} rounds after {warmup} warm-up, "
          f"one message every {gap_ms:g} ms, cases interleaved",
          f"{'case':42s} {'bytes':>9s} {'median':>9s} {'p99':>9s} {'max':>9s}"]
  medians = {}
  for case in CASES:
    ms = np.array(latencies[case][warmup:]) / 1e6
    medians[case] = np.median(ms)
    size = 104 if case.startswith("event") else FRAME_BYTES
    rows.append(f"{LABELS[case]:42s} {size:9d} {medians[case]:6.3f} ms {np.percentile(ms, 99):6.3f} ms "
                f"{ms.max():6.3f} ms")
  rows.append(f"pool frames reached through a copy: {latencies['pool copies']} (zero-copy views otherwise)")
  rows.append(f"{'ratio of medians':42s} {'measured':>9s} {'target':>9s}")
  for case, baseline, target, name in TARGETS:
    ratio = medians[case] / medians[baseline]
    rows.append(f"  {name:40s} {ratio:9.2f} {'<= ' + str(target):>9s}  {'met' if ratio <= target else 'MISSED'}")
  for case, baseline, name in ALSO:
    rows.append(f"  {name:40s} {medians[case] / medians[baseline]:9.2f}")
  return "\n".join(rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rounds", type=int, default=100, help="measured rounds (default 100)")
  parser.add_argument("--warmup", type=int, default=10, help="rounds first run and dropped (default 10)")
  parser.add_argument("--gap-ms", type=float, default=50.0, help="pause after each message (default 50: 20 Hz)")
  parser.add_argument("--receive", type=int, help=argparse.SUPPRESS)  # internal: be the receiving process
  args = parser.parse_args(argv)
  if args.receive:
    receive(args.receive)
    return 0
  with isolated_bus():  # a private bus: a live stack on this machine is neither disturbed nor measured
    latencies = sender(args.warmup + args.rounds, args.gap_ms / 1000)
  print(table(latencies, args.warmup, args.warmup + args.rounds, args.gap_ms))
  return 0


if __name__ == "__main__":
  sys.exit(main())
