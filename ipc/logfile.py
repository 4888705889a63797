"""Log files of bus events: a 24-byte header, then a stream of capnp LogEntry messages.

Header: magic b"EDGEMLOG", version (uint32), reserved (uint32), the schema file id (uint64), little-endian.
Each LogEntry holds the service name, the recorder's receive time and the Event bytes exactly as
they were on the bus, so a replay sends identical bytes.
"""
import struct

import capnp

from ipc.schema import SCHEMA_ID, LogEntry

MAGIC = b"EDGEMLOG"
VERSION = 1
HEADER = struct.Struct("<8sIIQ")


class LogWriter:
  def __init__(self, path: str):
    self.file = open(path, "wb")
    self.file.write(HEADER.pack(MAGIC, VERSION, 0, SCHEMA_ID))
    self.count = 0

  def write(self, service: str, recv_mono_ns: int, event: bytes):
    entry = LogEntry.new_message(service=service, recvMonoTime=recv_mono_ns, event=memoryview(event))
    self.file.write(entry.to_bytes())
    self.count += 1

  def close(self):
    self.file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_log(path: str):
  """Yield (service, recv_mono_ns, event bytes) for each entry; ValueError for a file that is not
  a log of this schema, or one cut short (after yielding the entries before the cut)."""
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < HEADER.size:
    raise ValueError(f"{path}: too short for an edgeml log: {len(data)} bytes, less than its {HEADER.size}-byte header")
  magic, version, _, schema_id = HEADER.unpack_from(data)
  if magic != MAGIC:
    raise ValueError(f"{path}: not an edgeml log: magic {magic!r} at offset 0, expected {MAGIC!r}")
  if version != VERSION:
    raise ValueError(f"{path}: an edgeml log of version {version}; this reader reads version {VERSION}")
  if schema_id != SCHEMA_ID:
    raise ValueError(f"{path}: recorded with schema {schema_id:#x}, this is {SCHEMA_ID:#x}")
  count = 0
  try:
    for entry in LogEntry.read_multiple_bytes(memoryview(data)[HEADER.size:]):
      yield entry.service, entry.recvMonoTime, entry.event
      count += 1
  except capnp.KjException:
    raise ValueError(f"{path}: cut short after {count} entries") from None
