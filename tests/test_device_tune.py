"""On-device tuning with the runtime alone (compiled/tune.py, edgeml-tune): the candidates the compiler puts in an
artifact, the choice table keyed by device and driver, the program binary left beside the artifact, and that the
tuner runs in a process where the compiler cannot be imported. Numerics are checked against numpy, and the ONNX path
against onnxruntime."""
import dataclasses
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import compiled
from compiled import artifact
from compiled.artifact import ArtifactError, ChoiceSpec, read_artifact, write_artifact
from compiled.device import default_device
from compiled.runtime import cache_beside
from compiled.tune import main as tune_main
from compiled.variants import device_key, function_span

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_COMPILER = "import sys; sys.modules['edgeml'] = None; sys.modules['onnx'] = None; "   # `import edgeml` fails


@pytest.fixture(scope="module")
def net(tmp_path_factory):
  """A conv + pool + matmul net (two kernels big enough to carry candidates), its artifact and a numpy reference."""
  from edgeml import Tensor
  from edgeml.compile import compile_graph, placeholder
  rng = np.random.default_rng(0)
  w1 = (rng.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32)
  w2 = (rng.standard_normal((32 * 8 * 8, 640)) * 0.05).astype(np.float32)
  x = placeholder("x", (1, 16, 16, 16))
  spec = compile_graph({"x": x}, {"y": x.conv2d(Tensor(w1), padding=1).relu().max_pool2d(2).flatten(1) @ Tensor(w2)}).spec
  path = tmp_path_factory.mktemp("tune") / "net.edgeml"
  write_artifact(spec, path)
  image = rng.standard_normal((1, 16, 16, 16)).astype(np.float32)
  conv, xp = np.zeros((1, 32, 16, 16)), np.pad(image, ((0, 0), (0, 0), (1, 1), (1, 1)))
  for i in range(3):
    for j in range(3): conv += np.einsum("nchw,oc->nohw", xp[:, :, i:i + 16, j:j + 16], w1[:, :, i, j])
  pooled = np.maximum(conv, 0).reshape(1, 32, 8, 2, 8, 2).max((3, 5))
  return path, {"x": image}, pooled.reshape(1, -1) @ w2


def _check(prog, feeds, want):
  np.testing.assert_allclose(prog.run(feeds)["y"], want, rtol=1e-4, atol=1e-4)


def _raw_write(spec, path):
  """The artifact layout of compiled/artifact.py written without validate: a corrupt file a reader must refuse."""
  header = artifact._header(spec)
  head = artifact.PREFIX.pack(artifact.MAGIC, artifact.FORMAT_VERSION, len(header), len(spec.weights)) + header
  head += bytes(artifact._padded(len(head)) - len(head))
  body = head + bytes(spec.weights)
  path.write_bytes(body + hashlib.sha256(body).digest())


def test_compiler_keeps_candidates_of_the_kernels_worth_tuning(net):
  from edgeml.candidates import MIN_FLOPS
  spec = read_artifact(net[0])
  assert sum(bool(k.candidates) for k in spec.kernels) == 2
  for k in spec.kernels:
    assert len(k.candidates) <= artifact.MAX_CANDIDATES
    if k.flops < MIN_FLOPS: assert not k.candidates
    for c in k.candidates:
      assert c.source != spec.source[slice(*function_span(spec.source, k.name))]
      assert function_span(c.source, k.name) == (0, len(c.source.rstrip()))


def test_tune_without_the_compiler_records_this_device_and_matches_numpy(net, tmp_path):
  path, feeds, want = net
  out = tmp_path / "tuned.edgeml"
  run = subprocess.run([sys.executable, "-c", NO_COMPILER + "from compiled.tune import main; sys.exit(main())",
                        str(path), "-o", str(out), "--runs", "2"], cwd=ROOT, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  assert "[2/2]" in run.stderr   # plain progress lines: stderr is not a terminal
  spec, original = read_artifact(out), read_artifact(path)
  key = device_key(default_device().dev)
  assert [(c.device, c.driver) for c in spec.choices] == [key]
  picks = spec.choices[0].picks
  assert len(picks) == len(spec.kernels) and all(p == 0 for p, k in zip(picks, spec.kernels) if not k.candidates)
  assert dataclasses.replace(spec, choices=[], weights=b"") == dataclasses.replace(original, weights=b"")
  prog = compiled.load(out)
  assert prog.picks == picks
  _check(prog, feeds, want)
  binaries = os.listdir(cache_beside(out))   # tuning leaves the chosen program's binary beside the artifact
  assert binaries == [default_device().binary_name(prog.source, spec.build_options)]

  again = tmp_path / "again.edgeml"   # tuning the tuned artifact: the same table layout, only the picks may differ
  assert tune_main([str(out), "-o", str(again), "--runs", "1", "-q"]) == 0
  respec = read_artifact(again)
  assert [(c.device, c.driver, len(c.picks)) for c in respec.choices] == [(*key, len(spec.kernels))]
  assert os.path.getsize(again) == os.path.getsize(out)


def _forced(spec, key):
  """Each kernel with candidates set to its last candidate, recorded for the device `key`."""
  picks = [len(k.candidates) for k in spec.kernels]
  return dataclasses.replace(spec, choices=[ChoiceSpec(*key, picks)]), picks


def test_forced_choice_is_the_program_built(net, tmp_path):
  path, feeds, want = net
  spec = read_artifact(path)
  forced, picks = _forced(spec, device_key(default_device().dev))
  write_artifact(forced, tmp_path / "forced.edgeml")
  prog = compiled.load(tmp_path / "forced.edgeml")
  assert prog.picks == picks and any(picks)
  for k, pick in zip(spec.kernels, picks):
    if not pick: continue
    chosen, default = k.candidates[pick - 1], spec.source[slice(*function_span(spec.source, k.name))]
    assert chosen.source.strip() in prog.source and default not in prog.source
    launched = next(l for l in prog.kernels if l.name == k.name)
    assert (launched.global_size, launched.local_size) == (chosen.global_size, chosen.local_size)
  _check(prog, feeds, want)


def test_inspect_shows_candidates_and_choices(net, tmp_path, capsys):
  from tools.inspect_artifact import main as inspect
  spec = read_artifact(net[0])
  forced, picks = _forced(spec, ("Some Vendor / Some GPU (GPU)", "9.9"))
  write_artifact(forced, tmp_path / "forced.edgeml")
  inspect([str(tmp_path / "forced.edgeml")])
  out = capsys.readouterr().out
  assert f"candidates for edgeml-tune: {sum(picks)} in 2 kernels" in out
  assert "tuned on Some Vendor / Some GPU (GPU) (driver 9.9): " + ", ".join(
      f"{k.name} -> {p}" for k, p in zip(spec.kernels, picks) if p) in out


def test_choice_for_another_device_is_ignored(net, tmp_path):
  path, feeds, want = net
  spec = read_artifact(path)
  other, _ = _forced(spec, ("Some Vendor / Some GPU (GPU)", "9.9"))
  write_artifact(other, tmp_path / "other.edgeml")
  prog = compiled.load(tmp_path / "other.edgeml")
  assert prog.picks == [0] * len(spec.kernels) and prog.source == spec.source
  _check(prog, feeds, want)


def test_corrupt_choice_or_candidate_is_one_artifact_error(net, tmp_path):
  spec = read_artifact(net[0])
  n = next(i for i, k in enumerate(spec.kernels) if k.candidates)
  picks = [0] * len(spec.kernels)
  picks[n] = len(spec.kernels[n].candidates) + 1   # one past the last candidate
  bad = dataclasses.replace(spec, choices=[ChoiceSpec("dev", "1", picks)])
  with pytest.raises(ArtifactError, match=rf"picks candidate {picks[n]} for kernel {n}"): write_artifact(bad, tmp_path / "x.edgeml")
  _raw_write(bad, tmp_path / "bad.edgeml")
  with pytest.raises(ArtifactError, match="picks candidate"): compiled.load(tmp_path / "bad.edgeml")
  short = dataclasses.replace(spec, choices=[ChoiceSpec("dev", "1", [0])])
  _raw_write(short, tmp_path / "short.edgeml")
  with pytest.raises(ArtifactError, match="1 picks for"): read_artifact(tmp_path / "short.edgeml")
  twice = dataclasses.replace(spec, choices=[ChoiceSpec("dev", "1", [0] * len(spec.kernels))] * 2)
  _raw_write(twice, tmp_path / "twice.edgeml")
  with pytest.raises(ArtifactError, match="a second choice"): read_artifact(tmp_path / "twice.edgeml")

  k = spec.kernels[n]
  c = k.candidates[0]
  for name, changed, problem in [
      ("comment", dataclasses.replace(c, source="/* x */" + c.source), "no comments"),
      ("define", dataclasses.replace(c, source="#define data0 data1\n" + c.source), "preprocessor"),
      ("extra", dataclasses.replace(c, source=c.source + "\nint more(int a) { return a; }"), "exactly the function"),
      ("renamed", dataclasses.replace(c, source=c.source.replace(k.name, k.name + "x", 1)), "exactly the function"),
      ("launch", dataclasses.replace(c, global_size=(c.global_size[0] * 2, *c.global_size[1:])), "candidate 1"),
  ]:
    kernels = list(spec.kernels)
    kernels[n] = dataclasses.replace(k, candidates=[changed, *k.candidates[1:]])
    _raw_write(dataclasses.replace(spec, kernels=kernels), tmp_path / f"{name}.edgeml")
    with pytest.raises(ArtifactError, match=problem): read_artifact(tmp_path / f"{name}.edgeml")


def test_signed_artifact_is_refused_unless_resigned(net, tmp_path, capsys):
  from compiled.signing import generate_keypair
  generate_keypair(tmp_path / "key.pem", tmp_path / "key.pub")
  signed = tmp_path / "signed.edgeml"
  write_artifact(read_artifact(net[0]), signed, tmp_path / "key.pem")
  before = signed.read_bytes()
  assert tune_main([str(signed), "-q"]) == 1
  assert "--sign KEY" in capsys.readouterr().err and signed.read_bytes() == before
  assert tune_main([str(signed), "-q", "--runs", "1", "--sign", str(tmp_path / "key.pem")]) == 0
  prog = compiled.load(signed, trusted_keys=[tmp_path / "key.pub"], require_signature=True)
  assert read_artifact(signed).choices and prog.picks == read_artifact(signed).choices[0].picks
  _check(prog, *net[1:])


def test_prebuild_leaves_a_binary_the_loader_uses_and_ignores_a_bad_one(net, tmp_path):
  path, feeds, want = net
  copy = tmp_path / "copy.edgeml"
  assert tune_main([str(path), "--prebuild", "-o", str(copy), "-q"]) == 0
  assert copy.read_bytes() == path.read_bytes()
  (binary,) = (tmp_path / "copy.edgeml.cache").iterdir()
  assert binary.name == default_device().binary_name(read_artifact(path).source, read_artifact(path).build_options)
  _check(compiled.load(copy), feeds, want)
  binary.write_bytes(b"not a program binary")   # a driver that rejects it: the source is built instead
  from compiled.device import Device
  from compiled.runtime import Program
  prog = Program(read_artifact(copy), Device(default_device().dev), str(copy), beside=cache_beside(copy))
  _check(prog, feeds, want)


def test_bad_input_is_one_line(tmp_path, capsys):
  assert tune_main([str(tmp_path / "missing.edgeml")]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "missing.edgeml" in err


def test_mutated_candidates_and_choices_are_refused_or_run_correctly(net, tmp_path):
  """Seeded mutations of the candidates and of a choice for this device (picks, launch sizes, sources swapped
  between kernels), written as a corrupt file would be: each is one ArtifactError or runs and matches numpy."""
  path, feeds, want = net
  spec, key = read_artifact(path), device_key(default_device().dev)
  tunable = [i for i, k in enumerate(spec.kernels) if k.candidates]
  rng = np.random.default_rng(20261130)
  outcomes = {"refused": 0, "match": 0}
  for case in range(30):
    kernels = [dataclasses.replace(k, candidates=list(k.candidates)) for k in spec.kernels]
    picks = [int(rng.integers(0, len(k.candidates) + 1)) for k in kernels]
    n = int(rng.choice(tunable))
    j = int(rng.integers(0, len(kernels[n].candidates)))
    c = kernels[n].candidates[j]
    what = case % 5
    if what == 0: picks[n] = int(rng.integers(len(kernels[n].candidates) + 1, 256))
    elif what == 1:
      g = list(c.global_size)
      g[int(rng.integers(0, len(g)))] = int(rng.choice([1, 2 * max(g), max(1, g[0] // 2), g[0] + 1]))
      kernels[n].candidates[j] = dataclasses.replace(c, global_size=tuple(g))
    elif what == 2:
      kernels[n].candidates[j] = dataclasses.replace(c, local_size=tuple(int(rng.choice([1, 2, 4, 8, 64])) for _ in c.global_size))
    elif what == 3:
      other = kernels[[i for i in tunable if i != n][0]]
      kernels[n].candidates[j] = other.candidates[int(rng.integers(0, len(other.candidates)))]
    picks[n] = picks[n] if what == 0 else j + 1
    mutated = dataclasses.replace(spec, kernels=kernels, choices=[ChoiceSpec(*key, picks)])
    file = tmp_path / f"case{case}.edgeml"
    _raw_write(mutated, file)
    try: prog = compiled.load(file)
    except ArtifactError: outcomes["refused"] += 1; continue
    _check(prog, feeds, want)
    assert prog.picks == picks
    outcomes["match"] += 1
  assert outcomes["refused"] >= 12 and outcomes["match"] >= 6, outcomes


def test_tuned_onnx_model_matches_onnxruntime(tmp_path):
  """The whole path users take: ONNX -> edgeml-compile -> edgeml-tune (no compiler in that process) -> load and run,
  against onnxruntime on the same ONNX model."""
  import onnx
  import onnxruntime
  from onnx import TensorProto, helper, numpy_helper
  from edgeml.compile import compile_model
  rng = np.random.default_rng(5)
  w1 = (rng.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32)
  w2 = (rng.standard_normal((32 * 8 * 8, 640)) * 0.05).astype(np.float32)
  nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
           helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
           helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "w2"], ["y"])]
  graph = helper.make_graph(nodes, "tune", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16, 16])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 640])],
                            [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
  model = tmp_path / "net.onnx"
  onnx.save(helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)]), str(model))
  compile_model(str(model), str(tmp_path / "net.edgeml"), log=lambda *_: None)
  out = tmp_path / "tuned.edgeml"
  run = subprocess.run([sys.executable, "-c", NO_COMPILER + "from compiled.tune import main; sys.exit(main())",
                        str(tmp_path / "net.edgeml"), "-o", str(out), "--runs", "2"], cwd=ROOT, capture_output=True,
                       text=True)
  assert run.returncode == 0, run.stderr
  assert read_artifact(out).choices, "edgeml-tune recorded no choice"
  x = rng.standard_normal((1, 16, 16, 16)).astype(np.float32)
  [want] = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})
  np.testing.assert_allclose(compiled.load(out).run({"x": x})["y"], want, rtol=1e-4, atol=1e-4)
