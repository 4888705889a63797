"""Hostile bus messages for tests, seeded: what another process could publish to a subscriber.

broken_pointers(good) breaks the pointers inside a valid message in ways whose damage only shows when a field is
read (wrong element size, a count or offset past the segment, a far pointer to a missing segment, a struct where a
list should be); mutate() changes, cuts or extends bytes at random; hostile() mixes those with garbage, empty and
multipart messages. Each case comes as a list of zmq parts.
"""
import random
import struct

WORD = 8


def _words(data: bytes):
  """(offset of the first segment's words in `data`, word count) for a single-segment message."""
  if len(data) < 8 or data[:4] != b"\0\0\0\0":
    raise ValueError("a single-segment message is needed")
  return 8, int.from_bytes(data[4:8], "little")


def _list_pointers(data: bytes):
  """Offsets of the words in the first segment that look like list pointers into the segment (kind 1)."""
  start, count = _words(data)
  found = []
  for i in range(count):
    lo, hi = struct.unpack_from("<iI", data, start + WORD * i)
    if lo & 3 == 1 and hi and 0 <= i + 1 + (lo >> 2) < count:
      found.append(start + WORD * i)
  return found


def _int32(value: int) -> int:
  return (value + (1 << 31)) % (1 << 32) - (1 << 31)


def broken_pointers(good: bytes) -> list:
  """Copies of `good` with one list pointer broken in each way; ValueError if `good` has no list pointer."""
  pointers = _list_pointers(good)
  if not pointers:
    raise ValueError("the message has no list pointer to break")
  out = []
  for at in pointers:
    lo, hi = struct.unpack_from("<iI", good, at)
    count, size, index = hi >> 3, hi & 7, (at - 8) // WORD
    for new_lo, new_hi in [
        (lo, (count << 3) | (6 if size != 6 else 2)),    # element size: pointers where numbers are, or the reverse
        (lo, (count << 3) | 7),                            # a struct list without its tag word
        (lo, (0x1FFFFFFF << 3) | size),                    # count far past the segment
        (((1 << 29) - 1) << 2 | 1, hi),                    # offset past the segment
        ((-index - 5) << 2 | 1, hi),                       # offset before the segment
        (2 | (1 << 3), 7),                                 # far pointer into a segment that does not exist
        (lo & ~3, hi),                                     # a struct pointer where a list should be
        (3, 0)]:                                           # a capability
      data = bytearray(good)
      struct.pack_into("<iI", data, at, _int32(new_lo), new_hi & 0xFFFFFFFF)
      out.append(bytes(data))
  return out


def amplified(good: bytes, count: int = 1 << 22) -> bytes:
  """`good` with its first struct list made a list of `count` empty structs: a few bytes that a reader with capnp's
  default traversal limit walks element by element (a Python loop of `count`)."""
  for at in _list_pointers(good):
    lo, hi = struct.unpack_from("<iI", good, at)
    if hi & 7 == 7:
      data = bytearray(good)
      struct.pack_into("<iI", data, at, lo, 7)  # no words of content
      struct.pack_into("<iI", data, at + WORD + (lo >> 2) * WORD, count << 2, 0)  # the tag: count elements, 0 words
      return bytes(data)
  raise ValueError("the message has no struct list")


def mutate(good: bytes, rng: random.Random) -> bytes:
  """`good` with 1-4 bytes changed, or cut, or extended, or its segment table edited."""
  data = bytearray(good)
  how = rng.random()
  if how < 0.6:
    for _ in range(rng.randint(1, 4)):
      data[rng.randrange(len(data))] = rng.randrange(256)
  elif how < 0.75:
    del data[rng.randrange(len(data)):]
  elif how < 0.9:
    data += bytes(rng.randrange(256) for _ in range(rng.choice((1, 7, 8, 64))))
  else:
    struct.pack_into("<I", data, rng.choice((0, 4)), rng.choice((1, 2, 511, 0xFFFFFFFF, len(data))))
  return bytes(data)


def hostile(goods: list, rng: random.Random, count: int):
  """`count` cases as lists of parts: mutations and broken pointers of the `goods` (valid messages), garbage,
  empty and multipart messages."""
  broken = [b for good in goods for b in _safe_broken(good)]
  for _ in range(count):
    pick = rng.random()
    if pick < 0.5:
      yield [mutate(rng.choice(goods), rng)]
    elif pick < 0.7 and broken:
      yield [rng.choice(broken)]
    elif pick < 0.8:
      yield [bytes(rng.randrange(256) for _ in range(rng.choice((0, 3, 8, 48, 200))))]
    else:
      parts = rng.choice((2, 3, 17))
      yield [rng.choice(goods) if rng.random() < 0.5 else mutate(rng.choice(goods), rng) for _ in range(parts)]


def _safe_broken(good: bytes) -> list:
  try:
    return broken_pointers(good)
  except ValueError:
    return []
