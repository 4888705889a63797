"""The benchmark zoo (edgeml/model_zoo.py): each model is valid ONNX with its reference's parameter count, runs in
onnxruntime with live (finite, input-dependent, not vanishing) outputs, and compiles through edgeml to the same
outputs as onnxruntime. The compile tests use smaller inputs than the zoo's defaults (resnet18 and mobilenet at 64x64
and 96x96, yolov8n at 64x64): the time goes to rendering and building each kernel, about 50 s on two cores with
an empty kernel cache; every layer is the same."""
import collections

import numpy as np
import onnx
import pytest

import compiled
from edgeml import model_zoo
from edgeml.compile import compile_model

# Conv and Gemm weights and biases: the reference's parameter count less what folding BatchNorm removes
# (torchvision's resnet18 has 11,689,512 with 4,800 BN scales, mobilenet_v3_small 2,542,856 with 6,056;
# ultralytics' fused YOLOv8n 3,151,904 with the DFL's 16 fixed weights, which the zoo leaves out)
WEIGHTS = {"resnet18": 11_684_712, "mobilenet_v3_small": 2_536_800, "yolov8n": 3_151_888}
OUTPUT = {"resnet18": (1, 1000), "mobilenet_v3_small": (1, 1000), "yolov8n": (1, 144, 40 * 40 + 20 * 20 + 10 * 10)}
OPS = {"resnet18": {"Conv": 20, "MaxPool": 1, "Add": 8, "GlobalAveragePool": 1, "Gemm": 1},
       "mobilenet_v3_small": {"Conv": 52, "HardSwish": 19, "HardSigmoid": 9, "GlobalAveragePool": 10, "Gemm": 2},
       "yolov8n": {"Conv": 63, "Sigmoid": 57, "Split": 8, "MaxPool": 3, "Resize": 2, "Add": 6, "Concat": 17}}
SMALL = {"resnet18": 64, "mobilenet_v3_small": 96, "yolov8n": 64}


def _session(model):
  import onnxruntime
  return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _feeds(model, seed=0):
  shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
  return {model.graph.input[0].name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize("name", list(model_zoo.ZOO))
def test_models_are_valid_have_the_reference_structure_and_run_in_onnxruntime(name):
  model = model_zoo.ZOO[name]()
  onnx.checker.check_model(model, full_check=True)
  assert model.ir_version == 9 and [o.version for o in model.opset_import] == [17]
  sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
  weights = sum(sizes[i] for n in model.graph.node if n.op_type in ("Conv", "Gemm") for i in n.input[1:])
  assert weights == WEIGHTS[name]
  ops = collections.Counter(n.op_type for n in model.graph.node)
  assert {op: ops[op] for op in OPS[name]} == OPS[name]
  session = _session(model)
  a, b = (session.run(None, _feeds(model, seed))[0] for seed in (0, 1))
  assert a.shape == OUTPUT[name] and np.all(np.isfinite(a)) and np.all(np.isfinite(b))
  assert 0.1 < a.std() < 10  # activations neither vanished nor blew up through the network
  assert np.abs(a - b).mean() > 0.01 * np.abs(a).mean()  # the output depends on the input


def test_same_seed_same_bytes_and_bad_sizes_refused(tmp_path):
  assert model_zoo.resnet18(seed=3).SerializeToString() == model_zoo.resnet18(seed=3).SerializeToString()
  assert model_zoo.resnet18(seed=3).SerializeToString() != model_zoo.resnet18(seed=4).SerializeToString()
  path = model_zoo.write("mobilenet_v3_small", str(tmp_path / "m.onnx"), size=96)
  assert [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim] == [1, 3, 96, 96]
  with pytest.raises(ValueError, match="multiple of 32"): model_zoo.yolov8n(size=300)
  with pytest.raises(ValueError, match="unknown zoo model"): model_zoo.write("vgg", str(tmp_path / "v.onnx"))


@pytest.mark.parametrize("name", list(model_zoo.ZOO))
def test_edgeml_compiles_each_model_and_matches_onnxruntime(name, tmp_path):
  onnx_path = model_zoo.write(name, str(tmp_path / f"{name}.onnx"), size=SMALL[name])
  model = onnx.load(onnx_path)
  feeds = _feeds(model)
  want = _session(model).run(None, feeds)[0]
  compile_model(onnx_path, str(tmp_path / f"{name}.edgeml"), log=lambda *_: None)
  got = compiled.load(tmp_path / f"{name}.edgeml").run(feeds)[model.graph.output[0].name]
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
