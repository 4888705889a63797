"""Log files: entries come back byte for byte; foreign and cut-short files are refused clearly."""
import pytest

from ipc.logfile import HEADER, VERSION, LogWriter, read_log
from ipc.messaging import new_message


def test_entries_round_trip(tmp_path):
  path = tmp_path / "a.log"
  events = [("robotState", 10 + i, new_message("robotState", vEgo=i).to_bytes()) for i in range(5)]
  events.append(("liveCalibration", 99, new_message("liveCalibration", warpMatrix=[1.0] * 9).to_bytes()))
  with LogWriter(path) as log:
    for entry in events:
      log.write(*entry)
  assert list(read_log(path)) == events


def test_foreign_and_cut_files_are_refused(tmp_path):
  path = tmp_path / "b.log"
  path.write_bytes(b"not a log at all, no" * 4)
  with pytest.raises(ValueError, match=f"{path}: not an edgeml log: magic b'not a lo' at offset 0"):
    list(read_log(path))
  LogWriter(path).close()  # a header only
  raw = bytearray(path.read_bytes())
  raw[8:12] = (VERSION + 1).to_bytes(4, "little")
  path.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match=f"of version {VERSION + 1}; this reader reads version {VERSION}"):
    list(read_log(path))
  with LogWriter(path) as log:
    log.write("robotState", 1, new_message("robotState").to_bytes())
    log.write("robotState", 2, new_message("robotState").to_bytes())
  path.write_bytes(path.read_bytes()[:-8])
  entries = []
  with pytest.raises(ValueError, match="cut short after 1 entries"):
    for entry in read_log(path):
      entries.append(entry)
  assert [t for _, t, _ in entries] == [1]
  path.write_bytes(path.read_bytes()[:HEADER.size - 1])
  with pytest.raises(ValueError, match=f"too short for an edgeml log: {HEADER.size - 1} bytes"):
    list(read_log(path))
