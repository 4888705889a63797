"""The project's own demo model (edgeml/demo_model.py): the same bytes for the same parameters, mini_drive's inputs,
outputs and operators, onnxruntime-valid, and the demo's build cache (compiled once, reused while nothing changed).
Its numerics through the compiler are checked in tests/test_compile.py, eagerly in tests/test_onnx_import.py."""
import collections
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from edgeml import demo_model


def test_same_parameters_give_the_same_bytes_and_others_differ(tmp_path):
  paths = {name: tmp_path / f"{name}.onnx" for name in ("a", "b", "seed1", "small")}
  demo_model.build(str(paths["a"]))
  demo_model.build(str(paths["b"]))
  demo_model.build(str(paths["seed1"]), seed=1)
  demo_model.build(str(paths["small"]), 64, 64, hidden=16)
  data = {name: p.read_bytes() for name, p in paths.items()}
  assert data["a"] == data["b"]
  assert data["a"] != data["seed1"] and len(data["a"]) == len(data["seed1"]) and data["a"] != data["small"]
  keys = {demo_model.cache_key(), demo_model.cache_key(seed=1), demo_model.cache_key(height=64, width=64, hidden=16)}
  assert len(keys) == 3 and demo_model.cache_key() == demo_model.cache_key()


def test_inputs_outputs_and_operators_are_mini_drives():
  model = demo_model.model()
  dims = lambda values: {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}
  assert dims(model.graph.input) == {"input_imgs": [1, 12, 128, 256], "desire": [1, 8], "state": [1, 256]}
  assert dims(model.graph.output) == {"plan": [1, 2480], "lane_lines": [1, 264], "lead": [1, 18], "state_out": [1, 256]}
  ops = collections.Counter(n.op_type for n in model.graph.node)
  for op in ("Conv", "Sigmoid", "Mul", "ReduceMean", "Add", "Relu", "Flatten", "Concat", "Gemm", "Elu", "GRU",
             "Reshape", "Slice", "Softmax", "Clip", "Exp"):
    assert ops[op], op
  groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
  assert sum(g > 1 for g in groups) == len(demo_model.BLOCKS)  # one depthwise conv per block
  weights = sum(np.prod(t.dims) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
  assert 1.4e6 < weights < 1.7e6  # mini_drive has 1.57 M float weights


def test_outputs_depend_on_the_image_and_the_state():
  """A model whose trunk had died (all-zero or saturated features) would hide compiler bugs in the convolutions."""
  import onnxruntime as ort
  session = ort.InferenceSession(demo_model.model(64, 128, hidden=32).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
  rng = np.random.default_rng(0)
  feeds = lambda: {"input_imgs": rng.integers(0, 256, (1, 12, 64, 128)).astype(np.float32),
                   "desire": np.zeros((1, 8), np.float32), "state": np.zeros((1, 32), np.float32)}
  a, b = feeds(), feeds()
  out_a, out_b = session.run(["state_out"], a)[0], session.run(["state_out"], b)[0]
  assert np.abs(out_a - out_b).mean() > 0.05 * np.abs(out_a).mean()
  a["state"] = out_a
  assert np.abs(session.run(["state_out"], a)[0] - out_a).mean() > 0.05 * np.abs(out_a).mean()
  assert np.all(np.isfinite(out_a)) and 0 < np.abs(out_a).max() < 1  # a GRU state: inside (-1, 1), not saturated


def test_sizes_that_do_not_fit_the_trunk_are_refused():
  with pytest.raises(ValueError, match="multiples of 64"): demo_model.model(100, 256)


def test_drive_model_tool_writes_a_model_and_its_config(tmp_path):
  from compiled.modelconfig import load_config
  from compiled.artifact import TensorSpec
  out = tmp_path / "drive.onnx"
  done = subprocess.run([sys.executable, "-m", "tools.drive_model", str(out), "--small", "--height", "16",
                         "--width", "32", "--hidden", "8"], capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  model = onnx.load(str(out))
  specs = lambda values: [TensorSpec(v.name, tuple(d.dim_value for d in v.type.tensor_type.shape.dim), "float32", 0)
                          for v in values]
  config = load_config(str(tmp_path / "drive.modeld.json"), specs(model.graph.input), specs(model.graph.output))
  assert config.recurrent == {"state": "state_out"} and config.zeros == ["desire"]
  assert json.loads((tmp_path / "drive.modeld.json").read_text()) == demo_model.CONFIG


def test_the_demo_compiles_once_and_reuses_the_artifact(tmp_path, monkeypatch, capsys):
  """tools/demo.py's cache: a second run with nothing changed reuses the artifact; a changed model recompiles."""
  from tools import demo
  monkeypatch.setattr(demo, "BUILD", tmp_path)
  model = tmp_path / "small.onnx"
  demo_model.build_small(str(model), 16, 32, hidden=8)
  artifact = demo.compiled_artifact(model)
  first = artifact.stat().st_mtime_ns
  assert "compiling" in capsys.readouterr().out and artifact.is_file()
  assert (tmp_path / "small.modeld.json").is_file()  # the config where modeld looks for it
  assert demo.compiled_artifact(model) == artifact and artifact.stat().st_mtime_ns == first
  assert "reusing" in capsys.readouterr().out
  demo_model.build_small(str(model), 16, 32, hidden=8, seed=1)
  demo.compiled_artifact(model)
  assert "compiling" in capsys.readouterr().out and artifact.stat().st_mtime_ns != first
