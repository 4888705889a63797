"""Whole-message validation of received bytes, before any consumer sees them.

capnp readers are lazy: a broken pointer deep inside a message only raises when a consumer reads that field.
parse() therefore walks every pointer the schema says the message has (texts, data, lists, structs, the set union
member; enum values must name an enumerant, text must be UTF-8) on a reader whose traversal limit is a few times
the message's own size, so a message of overlapping pointers or of a huge list of empty elements is refused too.
What passes can be read field by field, printed, or turned into a dict without raising; a modelOutput's tensors
also hold exactly the bytes their shapes need (MEANING), so get_outputs cannot fail on it. The consumer gets a second
reader of the same bytes with capnp's default limit (a Data field read more than once is charged every time).

DropLog reports dropped messages to stderr at a bounded rate: the first one at once, then at most one line a
minute per service with the count since.
"""
import struct
import sys
import time

import capnp

from ipc.schema import Event

MAX_SEGMENTS = 512
TRAVERSAL_FACTOR = 4   # the validating reader may read 4x the message (plus a little) before giving up
POINTER_KINDS = {"text", "data", "list", "struct", "anyPointer", "enum", "interface"}
NO_DISCRIMINANT = 0xFFFF


class MessageError(ValueError):
  """Bytes that are not a well-formed Event of the expected kind."""


def segments(data: bytes):
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
  view, parts = memoryview(data), []
  for size in sizes:
    parts.append(view[header:header + 8 * size])
    header += 8 * size
  return parts


def _compile(schema):
  """How to walk a struct of `schema`: (whether it has a union, [(field, discriminant, walk or None)]) for each
  field whose read can fail; walk(value) checks what the value holds (None: reading it was the check)."""
  fields = []
  for field in schema.fields_list:
    proto = field.proto
    if proto.which() == "group":
      fields.append((proto.name, proto.discriminantValue, _struct_walker(field.schema)))
      continue
    type_ = proto.slot.type
    kind = type_.which()
    if kind == "struct":
      fields.append((proto.name, proto.discriminantValue, _struct_walker(field.schema)))
    elif kind == "list":
      fields.append((proto.name, proto.discriminantValue, _list_walker(field.schema, type_.list.elementType)))
    elif kind == "enum":
      fields.append((proto.name, proto.discriminantValue, str))  # RuntimeError for a value naming no enumerant
    elif kind in POINTER_KINDS:
      fields.append((proto.name, proto.discriminantValue, None))
  return bool(schema.union_fields), fields


def _struct_walker(schema):
  has_union, fields = _compile(schema)

  def walk(reader):
    active = reader.which() if has_union else None
    for name, discriminant, check in fields:
      if discriminant == NO_DISCRIMINANT or name == active:
        value = getattr(reader, name)
        if check is not None:
          check(value)
  return walk


def _list_walker(list_schema, element_type):
  kind = element_type.which()
  if kind == "struct":
    check = _struct_walker(list_schema.elementType)
  elif kind == "list":
    check = _list_walker(list_schema.elementType, element_type.list.elementType)
  elif kind == "enum":
    check = str
  elif kind in ("text", "data"):
    check = None
  else:
    return len  # primitives: the list pointer's element size was checked when it was read

  def walk(value):
    for item in value:
      if check is not None:
        check(item)
  return walk


_has_union, _fields = _compile(Event.schema)
assert not [f for f in _fields if f[1] == NO_DISCRIMINANT], "Event's own pointer fields would go unchecked"
_walk_member = {name: check for name, _, check in _fields}  # the walk of each union member's struct


def _tensors_fit(model_output) -> None:
  """Each output tensor's data holds exactly its shape's float32s (what get_outputs reshapes)."""
  for tensor in model_output.outputs:
    count = 1
    for size in tensor.shape:
      count *= size
    if 4 * count != len(tensor.data):
      raise MessageError(f"output {tensor.name!r}: shape {list(tensor.shape)} needs {4 * count} bytes of float32, "
                         f"the data has {len(tensor.data)}")


MEANING = {"modelOutput": _tensors_fit}  # checks beyond the schema, by union member


def parse(data: bytes, kind: str):
  """(event, its `kind` member) for `data`, checked whole; MessageError for anything else (not capnp,
  truncated, another or an unknown union member, a broken pointer anywhere, bad text or enum)."""
  try:
    parts = segments(data)
    limit = TRAVERSAL_FACTOR * len(data) // 8 + 64
    member = getattr(Event.from_segments(parts, traversal_limit_in_words=limit), kind)
    _walk_member[kind](member)
    if kind in MEANING:
      MEANING[kind](member)
    event = Event.from_segments(parts)  # a reader that keeps `data` alive, unlike from_bytes
    return event, getattr(event, kind)  # raises unless `kind` is the member set
  except MessageError:
    raise
  except (capnp.KjException, UnicodeDecodeError, RuntimeError, ValueError, TypeError, IndexError) as e:
    raise MessageError(f"not a readable Event carrying {kind!r} ({len(data)} bytes): "
                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


class DropLog:
  """Counts dropped messages per service and writes a line about them at most every `interval_s`."""

  def __init__(self, who: str, interval_s: float = 60.0, stream=None):
    self.who, self.interval_s, self.stream = who, interval_s, stream
    self.last, self.pending = {}, {}

  def drop(self, service: str, reason: str) -> None:
    self.pending[service] = self.pending.get(service, 0) + 1
    now = time.monotonic()
    if now - self.last.get(service, -1e18) >= self.interval_s:
      count, self.pending[service], self.last[service] = self.pending[service], 0, now
      try: print(f"{self.who}: dropped {count} malformed {service} message{'s' * (count > 1)}, the last: {reason}",
                 file=self.stream or sys.stderr, flush=True)
      except (OSError, ValueError): pass   # stderr closed: the count still goes on; a log line never stops a reader
