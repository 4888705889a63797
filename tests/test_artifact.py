"""The artifact file: round trip, determinism, atomic writes, and a clear error for every kind of bad file."""
import dataclasses
import hashlib
import os
import struct

import numpy as np

import pytest
from hypothesis import given, settings, strategies as st

from compiled import artifact
from compiled.artifact import ArtifactError, read_artifact, validate, write_artifact
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
  for text in (f"format {artifact.FORMAT_VERSION}", "test-0", read_artifact(path).target, artifact.artifact_facts(path).sha256, "dense_relu", "argmax", "arena",
               "'x'", "float32[1, 8]", "total"):
    assert text in out, text


def test_loadtime_demo_is_a_valid_artifact(tmp_path):
  from tools.loadtime import write_demo
  write_demo(str(tmp_path / "demo.edgeml"), layers=3, width=64)
  spec = read_artifact(tmp_path / "demo.edgeml")
  assert [k.name for k in spec.kernels] == ["dense0", "dense1", "dense2"] and len(spec.weights) == 3 * (4 * 64 * 64 + 1024)


# ---- the whole structure is checked: boundaries (exactly at a limit is valid, one past it is refused) -------------

def boundary(change):
  spec = tiny_spec()
  change(spec)
  return spec


def test_tensor_size_cap_boundary(path, monkeypatch):
  largest = max(b.nbytes for b in tiny_spec().buffers if b.kind in ("input", "output"))
  read_artifact(path, max_tensor_bytes=largest)
  with pytest.raises(ArtifactError, match=f"exceeds the cap of {largest - 1} bytes"):
    read_artifact(path, max_tensor_bytes=largest - 1)
  monkeypatch.setenv("EDGEML_MAX_TENSOR_BYTES", str(largest - 1))
  with pytest.raises(ArtifactError, match="EDGEML_MAX_TENSOR_BYTES"): read_artifact(path)
  monkeypatch.setenv("EDGEML_MAX_TENSOR_BYTES", str(largest))
  read_artifact(path)


def test_default_cap_refuses_a_consistent_one_gib_input(tmp_path):
  spec = tiny_spec()
  spec.inputs[0].shape, spec.buffers[0].nbytes = (1, 2**28), 2**30   # consistent with itself
  with pytest.raises(ArtifactError, match="buffer 0 \\(input\\) nbytes 1073741824 exceeds the cap of 268435456 bytes"):
    validate(spec)


@pytest.mark.parametrize("where", ["kernel argument", "output tensor"])
def test_buffer_index_boundary(tmp_path, where):
  def point(spec, index):
    if where == "kernel argument": spec.kernels[0].args[0] = ("buffer", index)   # the arena buffer h is the last one
    else: spec.outputs[1].buffer = index
  last = len(tiny_spec().buffers) - 1
  validate(boundary(lambda s: point(s, last if where == "kernel argument" else 2)))
  with pytest.raises(ArtifactError, match=f"refers to missing buffer {last + 1}"):
    validate(boundary(lambda s: point(s, last + 1)))


def test_weights_end_boundary():
  n = len(tiny_spec().weights)
  assert tiny_spec().buffers[4].offset + tiny_spec().buffers[4].nbytes == n   # b ends exactly at the weights' end
  validate(tiny_spec())
  with pytest.raises(ArtifactError, match=f"bytes 512..{n + 4} lie outside the weights \\({n} bytes\\)"):
    validate(boundary(lambda s: setattr(s.buffers[4], "nbytes", s.buffers[4].nbytes + 4)))


def test_arena_end_boundary():
  end = tiny_spec().buffers[5].offset + tiny_spec().buffers[5].nbytes
  validate(boundary(lambda s: setattr(s, "arena_size", end)))
  with pytest.raises(ArtifactError, match=f"lie outside the arena \\({end - 4} bytes\\)"):
    validate(boundary(lambda s: setattr(s, "arena_size", end - 4)))


def test_tensor_bytes_boundary():
  with pytest.raises(ArtifactError, match="needs 32 bytes but buffer 0 has 36"):
    validate(boundary(lambda s: setattr(s.buffers[0], "nbytes", 36)))
  with pytest.raises(ArtifactError, match="needs 32 bytes but buffer 0 has 28"):
    validate(boundary(lambda s: setattr(s.buffers[0], "nbytes", 28)))


def test_launch_size_boundary():
  """dense_relu stores one element per work item: 16 items for 16 elements; one local size more is refused."""
  validate(boundary(lambda s: setattr(s.kernels[0], "local_size", (16,))))
  with pytest.raises(ArtifactError, match="global size \\[24\\] stores 24 x 1 elements of 'h', but buffer 5 holds 16"):
    validate(boundary(lambda s: setattr(s.kernels[0], "global_size", (24,))))
  with pytest.raises(ArtifactError, match="global size \\[8\\] stores 8 x 1"):
    validate(boundary(lambda s: setattr(s.kernels[0], "global_size", (8,))))
  with pytest.raises(ArtifactError, match="local size \\[32\\] does not divide global size \\[16\\]"):
    validate(boundary(lambda s: setattr(s.kernels[0], "local_size", (32,))))


def planes(plane: int, pitch: int, nbytes: int, buffer: int = 5):
  """tiny_spec with buffer `buffer` stored in planes (the arena grown to hold it)."""
  def change(s):
    b = s.buffers[buffer]
    b.plane_bytes, b.plane_pitch, b.nbytes = plane, pitch, nbytes
    s.arena_size = max(s.arena_size, b.offset + nbytes)
  return boundary(change)


def test_plane_layout_boundary():
  """dense_relu stores its 16 elements one after another: as 1 plane of 64 bytes (any pitch) that is every element,
  as 2 planes of 32 bytes 48 apart some stores land in the padding; a layout must be whole planes, arena only."""
  validate(planes(64, 64, 64))
  validate(planes(64, 128, 64))
  with pytest.raises(ArtifactError, match=r"does not store each of the 16 elements of 'h' \(buffer 5\) exactly once "
                                          r"outside the padding between its planes"):
    validate(planes(32, 48, 80))
  with pytest.raises(ArtifactError, match=r"buffer 5 \(arena\): 72 bytes are not planes of 32 bytes every 48 bytes"):
    validate(planes(32, 48, 72))
  with pytest.raises(ArtifactError, match=r"buffer 5 \(arena\): 64 bytes are not planes of 64 bytes every 32 bytes"):
    validate(planes(64, 32, 64))
  with pytest.raises(ArtifactError, match=r"buffer 1 \(output\): 64 bytes are not planes"):
    validate(planes(64, 64, 64, buffer=1))


STRUCTURE = {
  "argument 0 reads or writes buffer 2 as float, elsewhere it is int":
    lambda s: s.kernels[0].args.__setitem__(0, ("buffer", 2)),
  "argument 1 reads buffer 5, which overlaps buffer 5 it writes": lambda s: s.kernels[0].args.__setitem__(1, ("buffer", 5)),
  "argument 1 reads buffer 1 \\(output\\) before any kernel writes it": lambda s: s.kernels[0].args.__setitem__(1, ("buffer", 1)),
  "buffer 3 \\(weights\\) is read by no kernel": lambda s: s.kernels[0].args.__setitem__(2, ("buffer", 4)),
  "writes buffer 3 \\(weights\\); only arena and output buffers are written": lambda s: s.kernels[1].args.__setitem__(0, ("buffer", 3)),
  "argument 4 is float32, but parameter 'n' is int32": lambda s: s.kernels[0].args.__setitem__(4, ("float32", 8.0)),
  "weights are numbered and placed in the order kernels first read them":
    lambda s: s.buffers.__setitem__(slice(3, 5), [s.buffers[4], s.buffers[3]]),
  "buffer 5 \\(arena\\) is not written and then read": lambda s: s.kernels[1].args.__setitem__(1, ("buffer", 0)),
  "argument 0 reads or writes buffer 2 as int, elsewhere it is float": lambda s: setattr(s.outputs[1], "dtype", "float32"),
  "the buffers start with the inputs, then the outputs, in order":
    lambda s: (setattr(s.outputs[0], "buffer", 2), setattr(s.outputs[1], "buffer", 1)),
  "not the work-group size \\[8, 1, 1\\] the source requires": lambda s: setattr(
    s, "source", s.source.replace("__kernel void dense_relu", "__kernel __attribute__((reqd_work_group_size(8,1,1))) void dense_relu")) or
    setattr(s.kernels[0], "local_size", (16,)),
  "kernel 'scale' takes 3 arguments, the artifact gives 2": lambda s: s.kernels[1].args.pop(),
  "kernel 2 \\('argmax'\\) bytes 68 is not the bytes of its buffer arguments \\(36\\)":   # argmax reads x, not y
    lambda s: s.kernels[2].args.__setitem__(1, ("buffer", 0)),
  "'complex64', not a numpy dtype name the runtime supports": lambda s: setattr(s.outputs[0], "dtype", "complex64"),
}


@pytest.mark.parametrize("problem", STRUCTURE)
def test_structure_is_checked(problem):
  with pytest.raises(ArtifactError, match=problem): validate(boundary(STRUCTURE[problem]))


# ---- hostile bytes: only ArtifactError leaves read_artifact ------------------------------------------------------

def reassemble(path, header: bytes):
  """Rewrite `path` around `header` with a correct checksum (as anyone can)."""
  weights = bytes(read_artifact(path).weights)
  head = artifact.PREFIX.pack(artifact.MAGIC, artifact.FORMAT_VERSION, len(header), len(weights)) + header
  head += bytes(artifact._padded(len(head)) - len(head))
  path.write_bytes(head + weights + hashlib.sha256(head + weights).digest())


def test_bad_utf8_in_a_text_field(path):
  header = artifact._header(tiny_spec())
  at = header.index(b"dense_relu\0")
  reassemble(path, header[:at] + b"\xff" + header[at + 1:])
  with pytest.raises(ArtifactError, match="field kernels\\[0\\].name"): read_artifact(path)


def test_enum_out_of_range(path):
  with artifact.schema.Program.from_bytes(artifact._header(tiny_spec())) as msg: d = msg.to_dict()
  d["buffers"][3]["kind"] = 7
  reassemble(path, artifact.schema.Program.new_message(**d).to_bytes())
  with pytest.raises(ArtifactError, match="field buffers\\[3\\].kind"): read_artifact(path)


def test_weights_survive_the_file_being_truncated(path):
  spec = read_artifact(path)
  with open(path, "r+b") as f: f.truncate(0)
  assert bytes(spec.weights) == tiny_spec().weights


# ---- signatures ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
  from compiled.signing import generate_keypair
  d = tmp_path_factory.mktemp("keys")
  generate_keypair(d / "a.pem", d / "a.pub")
  generate_keypair(d / "b.pem", d / "b.pub")
  return d


def test_signed_round_trip(tmp_path, keys):
  p = tmp_path / "s.edgeml"
  write_artifact(tiny_spec(), p, sign_key=keys / "a.pem")
  spec = read_artifact(p, trusted_keys=[keys / "a.pub"], require_signature=True)
  assert as_plain(spec) == as_plain(tiny_spec())
  from compiled.signing import raw_public_key
  assert artifact.artifact_facts(p).signer == raw_public_key(keys / "a.pub").hex()
  read_artifact(p, trusted_keys=[raw_public_key(keys / "a.pub")], require_signature=True)   # raw 32-byte keys
  read_artifact(p)   # signed but nothing required: the signature is still checked against its own key
  read_artifact(p, trusted_keys=keys / "a.pub", require_signature=True)   # one key alone


def test_signatures_refused(tmp_path, keys, monkeypatch):
  p = tmp_path / "s.edgeml"
  write_artifact(tiny_spec(), p, sign_key=keys / "a.pem")
  with pytest.raises(ArtifactError, match="not among the 1 trusted keys"): read_artifact(p, trusted_keys=[keys / "b.pub"])
  monkeypatch.setenv("EDGEML_TRUSTED_KEYS", str(keys / "b.pub"))
  with pytest.raises(ArtifactError, match="not among the 1 trusted keys"): read_artifact(p)
  monkeypatch.setenv("EDGEML_TRUSTED_KEYS", os.pathsep.join([str(keys / "b.pub"), str(keys / "a.pub")]))
  read_artifact(p, require_signature=True)
  monkeypatch.delenv("EDGEML_TRUSTED_KEYS")
  with pytest.raises(ArtifactError, match="no key is trusted"): read_artifact(p, require_signature=True)
  raw = bytearray(p.read_bytes())
  raw[-1] ^= 1
  p.write_bytes(bytes(raw))
  with pytest.raises(ArtifactError, match="bad signature"): read_artifact(p)
  write_artifact(tiny_spec(), p)
  with pytest.raises(ArtifactError, match="unsigned, and signatures are required"):
    read_artifact(p, trusted_keys=[keys / "a.pub"], require_signature=True)
  read_artifact(p, trusted_keys=[keys / "a.pub"])   # unsigned still loads unless signatures are required


def test_signature_covers_every_checked_byte(tmp_path, keys):
  """Any byte before the trailer changed (checksum recomputed, signature kept) is refused."""
  p = tmp_path / "s.edgeml"
  write_artifact(tiny_spec(), p, sign_key=keys / "a.pem")
  raw = p.read_bytes()
  from compiled.signing import TRAILER
  body, trailer = raw[:-TRAILER - 32], raw[-TRAILER:]
  for at in range(0, len(body), 97):
    changed = bytearray(body)
    changed[at] ^= 0x20
    p.write_bytes(bytes(changed) + hashlib.sha256(changed).digest() + trailer)
    with pytest.raises(ArtifactError): read_artifact(p, trusted_keys=[keys / "a.pub"])


def test_bad_key_files(tmp_path, keys):
  (tmp_path / "junk.pub").write_text("not a key")
  write_artifact(tiny_spec(), tmp_path / "s.edgeml", sign_key=keys / "a.pem")
  with pytest.raises(ArtifactError, match="junk.pub is neither a PEM public key nor 32 raw bytes"):
    read_artifact(tmp_path / "s.edgeml", trusted_keys=[tmp_path / "junk.pub"])
  with pytest.raises(ArtifactError, match="missing.pem"):
    write_artifact(tiny_spec(), tmp_path / "t.edgeml", sign_key=tmp_path / "missing.pem")
  with pytest.raises(ArtifactError, match="not an unencrypted PEM private key"):
    write_artifact(tiny_spec(), tmp_path / "t.edgeml", sign_key=keys / "a.pub")


def test_keygen_and_compile_sign_flag(tmp_path, capsys):
  from tools.keygen import main as keygen
  keygen([str(tmp_path / "k.pem")])
  assert (tmp_path / "k.pub").exists() and os.stat(tmp_path / "k.pem").st_mode & 0o077 == 0
  with pytest.raises(SystemExit, match="exists; not overwriting"): keygen([str(tmp_path / "k.pem")])
  from tools.compile import main as compile_main
  (tmp_path / "m.onnx").write_bytes(b"")
  with pytest.raises(SystemExit, match="--sign: .*not an unencrypted PEM private key"):
    compile_main([str(tmp_path / "m.onnx"), "--sign", str(tmp_path / "k.pub")])


def test_load_with_signatures(tmp_path, keys):
  import compiled
  p = tmp_path / "s.edgeml"
  write_artifact(tiny_spec(), p, sign_key=keys / "a.pem")
  prog = compiled.load(p, trusted_keys=[keys / "a.pub"], require_signature=True)
  assert prog.run({"x": np.ones((1, 8), np.float32)})["best"].shape == (1,)
  with pytest.raises(ArtifactError, match="not among"): compiled.load(p, trusted_keys=[keys / "b.pub"])


def test_device_limits_are_checked_before_anything_runs():
  from compiled.device import default_device
  from compiled.runtime import Program
  dev = default_device()
  n = 2 * dev.dev.max_work_group_size
  spec = tiny_spec(n_out=n)
  spec.kernels[0].local_size = (n,)
  with pytest.raises(ArtifactError, match="CL_DEVICE_MAX_WORK_GROUP_SIZE"): Program(spec, dev)


def test_compile_sign_end_to_end(tmp_path, keys, capsys):
  import onnx
  from onnx import TensorProto, helper
  import compiled
  from tools.compile import main as compile_main
  graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
  model.ir_version = 9
  onnx.save(model, tmp_path / "relu.onnx")
  compile_main([str(tmp_path / "relu.onnx"), "-o", str(tmp_path / "relu.edgeml"), "--sign", str(keys / "a.pem")])
  prog = compiled.load(tmp_path / "relu.edgeml", trusted_keys=[keys / "a.pub"], require_signature=True)
  x = np.array([[-1, 2, -3, 4]], np.float32)
  np.testing.assert_array_equal(prog.run({"x": x})["y"], np.maximum(x, 0))
  with pytest.raises(ArtifactError, match="not among"): compiled.load(tmp_path / "relu.edgeml", trusted_keys=[keys / "b.pub"])
