"""edgeml-bus: look at the bus, record it, play it back.

  edgeml-bus list                 live services and their measured rates
  edgeml-bus hz SERVICE           the measured rate of one service, once a second
  edgeml-bus echo SERVICE         its messages as text
  edgeml-bus record FILE          logged services (or --services) into a log file
  edgeml-bus keys DIR             make a CURVE key directory for the TCP bus (then EDGEML_BUS_KEYS=DIR)
  edgeml-bus replay FILE          publish a log again, at its recorded timing or --fast
                                  (in place of the live publishers of its services: stop those first)

The bus is the one EDGEML_PREFIX (and EDGEML_BUS_HOST) name. Subscribers here queue rather than keep the
latest, so they see every message up to each service's queue size.
"""
import argparse
import glob
import os
import re
import signal
import sys
import time

import numpy as np
import zmq

from ipc.logfile import LogWriter, read_log
from ipc.messaging import MULTIPART, MessageError, PubMaster, decode, recv_one, sub_socket
from ipc.services import SERVICES, get_service, prefix, runtime_dir
from ipc.tensors import get_outputs
from ipc.transport import create_keys


def receive(services, seconds=None):
  """Yield (service, recv_mono_ns, bytes) for every message of `services`, for `seconds` or forever. A multipart
  message (never sent on this bus) is skipped whole; other malformed ones are yielded as they came."""
  poller, names = zmq.Poller(), {}
  for name in services:
    sock = sub_socket(name)
    poller.register(sock, zmq.POLLIN)
    names[sock] = name
  end = None if seconds is None else time.monotonic() + seconds
  while end is None or time.monotonic() < end:
    left_ms = 100 if end is None else max(0, min(100, int((end - time.monotonic()) * 1000)))
    for sock, _ in poller.poll(left_ms):
      if (data := recv_one(sock)) is not MULTIPART:
        yield names[sock], time.monotonic_ns(), data


def list_services(args):
  counts = dict.fromkeys(SERVICES, 0)
  for name, _, _ in receive(SERVICES, args.time):
    counts[name] += 1
  live = [name for name, count in counts.items() if count]
  print(f"bus EDGEML_PREFIX={prefix()}")
  if not live:
    print(f"no live services (listened {args.time} s)")
    folders = glob.glob(os.path.join(os.path.dirname(runtime_dir()), "edgeml-*"))
    others = sorted(os.path.basename(p)[7:] for p in folders if os.path.isdir(p) and p != runtime_dir())
    if others:
      print(f"other buses here: {', '.join(others)} (for example: EDGEML_PREFIX={others[0]} edgeml-bus list)")
  for name in live:
    s = SERVICES[name]
    print(f"{name:24s} {s.kind:12s} declared {s.rate_hz:6.1f} Hz  measured {counts[name] / args.time:6.1f} Hz")


def hz(args):
  sock = sub_socket(args.service)
  end = None if args.time is None else time.monotonic() + args.time
  count, start = 0, time.monotonic()
  while end is None or time.monotonic() < end:
    if sock.poll(50):
      count += recv_one(sock) is not MULTIPART
    if (elapsed := time.monotonic() - start) >= args.interval:
      print(f"{args.service}: {count / elapsed:.1f} Hz (declared {get_service(args.service).rate_hz:g})", flush=True)
      count, start = 0, time.monotonic()


def event_text(event) -> str:
  """The event as capnp text, with each modelOutput tensor's bytes shown as its float32 numbers."""
  text = str(event)
  if event.which() != "modelOutput": return text
  arrays = iter(get_outputs(event.modelOutput).values())
  as_numbers = lambda _: "data = " + np.array2string(next(arrays).reshape(-1), separator=", ", threshold=12,
                                                      edgeitems=4, max_line_width=10 ** 6,
                                                      formatter={"float_kind": lambda v: f"{v:.6g}"})
  return re.sub(r'data = "(?:[^"\\]|\\.)*"', as_numbers, text)


def echo(args):
  shown = 0
  for name, _, data in receive([args.service], args.time):
    try:
      print(event_text(decode(name, data)), flush=True)
    except MessageError as e:
      print(f"malformed: {e}", file=sys.stderr)
    shown += 1
    if shown == args.count:
      break


def record(args):
  services = args.services.split(",") if args.services else [n for n, s in SERVICES.items() if s.logged]
  for name in services:
    get_service(name)
  with LogWriter(args.file) as log:
    print(f"recording {', '.join(services)} to {args.file}", flush=True)
    try:
      for name, recv_ns, data in receive(services, args.time):
        log.write(name, recv_ns, data)
        if log.count == args.count:
          break
    finally:
      print(f"recorded {log.count} events", flush=True)


def replay(args):
  entries = list(read_log(args.file))
  services = sorted({name for name, _, _ in entries})
  pm = PubMaster(services, lossless=True)  # waits for a recorder that falls behind, even with --fast
  deadline = time.monotonic() + args.wait
  for name in services:
    pm.wait_for_subscribers(name, 1, max(0.0, deadline - time.monotonic()))
  start = time.monotonic()
  for name, recv_ns, data in entries:
    if not args.fast:
      time.sleep(max(0.0, start + (recv_ns - entries[0][1]) / 1e9 / args.speed - time.monotonic()))
    pm.send(name, data)
  pm.close(linger_ms=2000)
  zmq.Context.instance().term()  # returns once the queued messages are out
  print(f"replayed {len(entries)} events", flush=True)


def keys(args):
  create_keys(args.folder)
  print(f"keys in {args.folder}: give it (mode 0700) to every process of the bus as EDGEML_BUS_KEYS={args.folder}")


def service_name(name: str) -> str:
  try:
    return get_service(name).name
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="edgeml-bus", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("list", help="live services and their measured rates")
  p.add_argument("--time", type=float, default=2.0, help="seconds to listen (default 2)")
  p.set_defaults(run=list_services)
  p = sub.add_parser("hz", help="measured rate of one service")
  p.add_argument("service", type=service_name)
  p.add_argument("--time", type=float, help="stop after this many seconds (default: Ctrl-C)")
  p.add_argument("--interval", type=float, default=1.0, help="seconds between reports (default 1)")
  p.set_defaults(run=hz)
  p = sub.add_parser("echo", help="messages of one service as text")
  p.add_argument("service", type=service_name)
  p.add_argument("-n", "--count", type=int, help="stop after this many messages")
  p.add_argument("--time", type=float, help="stop after this many seconds")
  p.set_defaults(run=echo)
  p = sub.add_parser("record", help="record services into a log file")
  p.add_argument("file")
  p.add_argument("--services", help="comma-separated (default: every logged service)")
  p.add_argument("-n", "--count", type=int, help="stop after this many events")
  p.add_argument("--time", type=float, help="stop after this many seconds")
  p.set_defaults(run=record)
  p = sub.add_parser("keys", help="make a CURVE key directory for the TCP bus")
  p.add_argument("folder")
  p.set_defaults(run=keys)
  p = sub.add_parser("replay", help="publish a log file again")
  p.add_argument("file")
  p.add_argument("--fast", action="store_true", help="as fast as possible, not at the recorded timing")
  p.add_argument("--speed", type=float, default=1.0, help="timing factor, 2 = twice as fast (default 1)")
  p.add_argument("--wait", type=float, default=2.0, help="seconds to wait for subscribers first (default 2)")
  p.set_defaults(run=replay)
  args = parser.parse_args(argv)
  signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends a recording as cleanly as Ctrl-C
  try:
    args.run(args)
  except KeyboardInterrupt:
    pass
  except (ValueError, RuntimeError) as e:  # a bad service name or log file; a service already published
    print(f"edgeml-bus: {e}", file=sys.stderr)
    return 1
  except BrokenPipeError:  # the reader went away (edgeml-bus echo ... | head): stop quietly, as a SIGPIPE'd command
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141
  except OSError as e:  # a log file that is missing or cannot be read or written
    print(f"edgeml-bus: {e.filename}: {e.strerror}" if e.filename else f"edgeml-bus: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
