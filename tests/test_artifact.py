"""The artifact file: round trip, determinism, atomic writes, and a clear error for every kind of bad file."""
import dataclasses
import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from compiled import artifact
from compiled.artifact import ArtifactError, read_artifact, write_artifact
from tiny_program import tiny_spec


@pytest.fixture
def path(tmp_path):
  p = tmp_path / "tiny.edgeml"
  write_artifact(tiny_spec(), p)
  return p


def as_plain(spec):
  return dataclasses.replace(spec, weights=bytes(spec.weights))


def rewrite(path, offset: int, data: bytes):
  raw = bytearray(path.read_bytes())
  raw[offset:offset + len(data)] = data
  path.write_bytes(bytes(raw))


def test_round_trip(path):
  spec = read_artifact(path)
  assert as_plain(spec) == as_plain(tiny_spec())
  assert isinstance(spec.weights, memoryview) and spec.weights.readonly


def test_layout(path):
  facts = artifact.artifact_facts(path)
  raw = path.read_bytes()
  assert raw[:8] == artifact.MAGIC and facts.format_version == artifact.FORMAT_VERSION
  assert facts.weights_offset % 64 == 0 and facts.file_nbytes == len(raw)
  assert raw[facts.weights_offset:facts.weights_offset + facts.weights_nbytes] == tiny_spec().weights


def test_same_spec_same_bytes(tmp_path):
  write_artifact(tiny_spec(), tmp_path / "a")
  write_artifact(tiny_spec(), tmp_path / "b")
  assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
  def disk_full(fd): raise OSError("disk full")
  monkeypatch.setattr(os, "fsync", disk_full)
  with pytest.raises(OSError, match="disk full"): write_artifact(tiny_spec(), tmp_path / "new.edgeml")
  assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_artifact(path, monkeypatch):
  before = path.read_bytes()
  def disk_full(fd): raise OSError("disk full")
  monkeypatch.setattr(os, "fsync", disk_full)
  with pytest.raises(OSError): write_artifact(dataclasses.replace(tiny_spec(), compiler_version="other"), path)
  assert path.read_bytes() == before and list(path.parent.iterdir()) == [path]


@pytest.mark.parametrize("keep", [0, 10, 40, 100, -40, -1])
def test_truncated(path, keep):
  path.write_bytes(path.read_bytes()[:keep])
  with pytest.raises(ArtifactError, match="truncated") as e: read_artifact(path)
  assert str(path) in str(e.value)


def test_trailing_data(path):
  path.write_bytes(path.read_bytes() + b"\0")
  with pytest.raises(ArtifactError, match="trailing data"): read_artifact(path)


@settings(max_examples=40, deadline=None)
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_flipped_bit_is_caught(tmp_path_factory, where, bit):
  path = tmp_path_factory.mktemp("flip") / "a.edgeml"
  write_artifact(tiny_spec(), path)
  raw = bytearray(path.read_bytes())
  raw[int(where * len(raw))] ^= 1 << bit
  path.write_bytes(bytes(raw))
  with pytest.raises(ArtifactError, match=f"{path}: "): read_artifact(path)


@pytest.mark.parametrize("region", ["header", "weights", "digest"])
def test_checksum_mismatch(path, region):
  facts = artifact.artifact_facts(path)
  offset = {"header": artifact.PREFIX.size + 5, "weights": facts.weights_offset + 3, "digest": facts.file_nbytes - 1}[region]
  raw = bytearray(path.read_bytes())
  raw[offset] ^= 0xFF
  path.write_bytes(bytes(raw))
  with pytest.raises(ArtifactError, match="checksum mismatch"): read_artifact(path)


def test_wrong_magic(path):
  rewrite(path, 0, b"PK\3\4....")
  with pytest.raises(ArtifactError, match="not an edgeml artifact: magic b'PK"): read_artifact(path)


def test_newer_format(path):
  rewrite(path, 8, struct.pack("<I", artifact.FORMAT_VERSION + 1))
  with pytest.raises(ArtifactError, match=f"built by a newer edgeml: format {artifact.FORMAT_VERSION + 1}, "
                                          f"this runtime reads up to {artifact.FORMAT_VERSION}"):
    read_artifact(path)


BROKEN = {
  "unknown target": lambda s: setattr(s, "target", "metal"),
  "not a multiple of align": lambda s: setattr(s.buffers[5], "offset", 100),
  "outside the weights": lambda s: setattr(s.buffers[4], "nbytes", 4096),
  "refers to missing buffer 9": lambda s: s.kernels[1].args.__setitem__(0, ("buffer", 9)),
  "unknown kind 'int8'": lambda s: s.kernels[1].args.__setitem__(2, ("int8", 1)),
  "needs 32 bytes but buffer 0 has 4": lambda s: setattr(s.buffers[0], "nbytes", 4),
  "not a numpy dtype name": lambda s: setattr(s.inputs[0], "dtype", "f4"),
  "must live in an input buffer": lambda s: setattr(s.inputs[0], "buffer", 1),
  "kernel names are not unique": lambda s: setattr(s.kernels[1], "name", "argmax"),
}


@pytest.mark.parametrize("problem", BROKEN)
def test_inconsistent_spec_is_refused(tmp_path, problem):
  spec = tiny_spec()
  BROKEN[problem](spec)
  with pytest.raises(ArtifactError, match=problem): write_artifact(spec, tmp_path / "a")
  assert list(tmp_path.iterdir()) == []


def test_inspect(path, capsys):
  from tools.inspect_artifact import main
  main([str(path)])
  out = capsys.readouterr().out
  for text in ("format 1", "test-0", read_artifact(path).target, artifact.artifact_facts(path).sha256, "dense_relu", "argmax", "arena",
               "'x'", "float32[1, 8]", "total"):
    assert text in out, text


def test_loadtime_demo_is_a_valid_artifact(tmp_path):
  from tools.loadtime import write_demo
  write_demo(str(tmp_path / "demo.edgeml"), layers=3, width=64)
  spec = read_artifact(tmp_path / "demo.edgeml")
  assert [k.name for k in spec.kernels] == ["dense0", "dense1", "dense2"] and len(spec.weights) == 3 * (4 * 64 * 64 + 1024)
