"""The adreno target: float weights read through image2d_t (RGBA, 4 elements per texel, 64-byte row pitch), float32 or
float16 texels, math in float32. No Adreno here: generated and run on PoCL, which supports images."""
import dataclasses
from pathlib import Path
import numpy as np
import pyopencl as cl
import pytest
import compiled
from compiled.artifact import ArtifactError, IMAGE_FORMATS, read_artifact, validate, write_artifact
from compiled.device import default_device
from compiled.targets import TARGETS
from edgeml import Tensor
from edgeml.compile import IMAGE_WIDTH, compile_graph, placeholder

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"


def _image_problem() -> str | None:
  dev = default_device()
  if not dev.dev.image_support: return f"{dev.name} has no image support"
  formats = {(f.channel_order, f.channel_data_type) for f in
             cl.get_supported_image_formats(dev.ctx, cl.mem_flags.READ_ONLY, cl.mem_object_type.IMAGE2D)}
  for channel in (cl.channel_type.FLOAT, cl.channel_type.HALF_FLOAT):
    if (cl.channel_order.RGBA, channel) not in formats: return f"{dev.name} lacks RGBA images of channel type {channel}"
  if dev.dev.image2d_max_width < IMAGE_WIDTH: return f"{dev.name} images are at most {dev.dev.image2d_max_width} wide"
  return None


pytestmark = pytest.mark.skipif(_image_problem() is not None, reason=str(_image_problem()))


def _weights(rng):
  return dict(w1=rng.standard_normal((8, 3, 3, 3)).astype(np.float32), b1=rng.standard_normal(8).astype(np.float32),
              w2=(rng.standard_normal((128, 200)) / 8).astype(np.float32), b2=rng.standard_normal(200).astype(np.float32),
              w3=(rng.standard_normal((200, 200)) / 8).astype(np.float32))   # 10000 texels: more than one row


def _net(w):
  x = placeholder("image", (1, 3, 8, 8))
  h = x.conv2d(Tensor(w["w1"]), Tensor(w["b1"]), padding=1).relu().max_pool2d(2)
  hidden = (h.flatten(1) @ Tensor(w["w2"]) + Tensor(w["b2"])).relu()
  return {"image": x}, {"out": hidden @ Tensor(w["w3"]), "pooled": h}


def _numpy(image, w):
  xp = np.pad(image.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
  conv = np.zeros((1, 8, 8, 8))
  for i in range(3):
    for j in range(3): conv += np.einsum("nchw,oc->nohw", xp[:, :, i:i + 8, j:j + 8], w["w1"][:, :, i, j])
  pooled = np.maximum(conv + w["b1"].reshape(1, -1, 1, 1), 0).reshape(1, 8, 4, 2, 4, 2).max((3, 5))
  hidden = np.maximum(pooled.reshape(1, -1) @ w["w2"] + w["b2"], 0)
  return {"out": hidden @ w["w3"], "pooled": pooled}


@pytest.mark.parametrize("fp16", [False, True])
def test_adreno_reads_weights_through_images_and_matches_numpy(tmp_path, fp16):
  rng = np.random.default_rng(1)
  w = _weights(rng)
  spec = compile_graph(*_net(w), target="adreno", fp16=fp16).spec
  assert "image2d_t" in spec.source and "read_imagef" in spec.source and "weights_sampler" in spec.source
  assert "texel_lane(read_imagef(" in spec.source      # components that vary at run time (the conv's window)
  path = tmp_path / "net.edgeml"
  write_artifact(spec, path)
  back = read_artifact(path)
  images = [b for b in back.buffers if b.kind == "image"]
  assert [b for b in back.buffers if b.kind == "weights"] == []          # every float weight is an image
  assert len(images) == len(w) and images == [b for b in spec.buffers if b.kind == "image"]
  fmt = "float16" if fp16 else "float32"
  for b in images:
    assert b.image_format == fmt and 0 < b.image_width <= IMAGE_WIDTH
    assert b.pitch % 64 == 0 and b.pitch >= b.image_width * IMAGE_FORMATS[fmt] and b.nbytes == b.image_height * b.pitch
  assert max(b.image_height for b in images) == 3                       # w3: 10000 texels in rows of 4096
  prog = compiled.load(path, allow_target_mismatch=True)
  image = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
  got = prog.run({"image": image})
  exact = _numpy(image, {k: v.astype(np.float16).astype(np.float32) if fp16 else v for k, v in w.items()})
  for name in ("out", "pooled"):
    np.testing.assert_allclose(got[name], exact[name], rtol=1e-4, atol=1e-4, err_msg=name)
  if fp16:   # and not far from the float32 weights either
    loose = _numpy(image, w)
    for name in ("out", "pooled"): np.testing.assert_allclose(got[name], loose[name], rtol=2e-2, atol=2e-2, err_msg=name)


def test_vector_reads_take_whole_texels(tmp_path):
  """The CPU-shaped kernels (vector lanes along W's rows) with image weights: a texel-aligned vector read."""
  rng = np.random.default_rng(2)
  wv = rng.standard_normal((64, 32)).astype(np.float32)
  x = placeholder("x", (4, 64))
  cpu_like_adreno = dataclasses.replace(TARGETS["adreno"], gpu=False)
  spec = compile_graph({"x": x}, {"y": x @ Tensor(wv)}, target=cpu_like_adreno).spec
  assert "(float8)(read_imagef(" in spec.source, spec.source   # 8 lanes of W's row: two texels
  write_artifact(spec, tmp_path / "v.edgeml")
  xv = rng.standard_normal((4, 64)).astype(np.float32)
  got = compiled.load(tmp_path / "v.edgeml", allow_target_mismatch=True).run({"x": xv})["y"]
  np.testing.assert_allclose(got, xv @ wv, rtol=1e-4, atol=1e-4)


def test_other_targets_keep_plain_buffers():
  w = _weights(np.random.default_rng(3))
  spec = compile_graph(*_net(w), target="pocl").spec
  assert "image2d_t" not in spec.source and "weights_sampler" not in spec.source
  assert all(b.kind != "image" for b in spec.buffers)


def test_validate_refuses_unpitched_images():
  spec = compile_graph(*_net(_weights(np.random.default_rng(4))), target="adreno").spec
  i = next(i for i, b in enumerate(spec.buffers) if b.kind == "image" and b.nbytes >= 128)
  bad = dataclasses.replace(spec, buffers=list(spec.buffers))
  bad.buffers[i] = dataclasses.replace(spec.buffers[i], nbytes=spec.buffers[i].nbytes - 32)
  with pytest.raises(ArtifactError, match="pitch"): validate(bad)
  bad.buffers[i] = dataclasses.replace(spec.buffers[i], image_format="rgb")
  with pytest.raises(ArtifactError, match="format"): validate(bad)


@pytest.mark.parametrize("name", ["demo_drive", *[n for n in ("tiny_detector",) if (MODELS / f"{n}.onnx").exists()]])
def test_driving_models_for_adreno_match_reference(name, tmp_path):
  """The demo model (depthwise and pointwise convs, Gemm and GRU weights through images) at a small input size against
  onnxruntime; ../shared's tiny_detector, when present, against its stored outputs."""
  import onnxruntime as ort
  from edgeml.demo_model import build
  from edgeml.compile import compile_model
  onnx_path = tmp_path / f"{name}.onnx" if name == "demo_drive" else MODELS / f"{name}.onnx"
  if name == "demo_drive": build(str(onnx_path), 64, 64, hidden=32)
  path = tmp_path / f"{name}.edgeml"
  compile_model(str(onnx_path), str(path), target="adreno", log=lambda *_: None)
  spec = read_artifact(path)
  assert any(b.kind == "image" for b in spec.buffers) and "read_imagef" in spec.source
  prog = compiled.load(path, allow_target_mismatch=True)
  if name == "demo_drive":
    rng = np.random.default_rng(0)
    feeds = {s.name: (rng.random(s.shape) * 255 if s.name == "input_imgs" else rng.standard_normal(s.shape) * 0.5)
             .astype(np.float32) for s in prog.inputs}
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = dict(feeds, **dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds))))
  else:
    ref = dict(np.load(MODELS / f"{name}.npz"))
  got = prog.run({s.name: ref[s.name] for s in prog.inputs})
  for s in prog.outputs:
    np.testing.assert_allclose(got[s.name], ref[s.name], rtol=1e-3, atol=1e-4, err_msg=s.name)
