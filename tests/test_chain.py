"""Chains (compiled/chain.py): runs of small kernels launched as one kernel of one work-group. The compiler chains the
small kernels of a squeeze-excite block and a head, a chain computes numpy's answer and what its kernels launched one
by one compute (each member reads what the work items of the member before it stored), inputs read in place by a
chain change from frame to frame, and the loader refuses chains of kernels that cannot run in one."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import compiled
from compiled.artifact import ArtifactError, read_artifact, validate, write_artifact
from compiled.device import default_device
from compiled.runtime import Program
from edgeml import Tensor
from edgeml.compile import compile_graph, placeholder
from tiny_program import tiny_spec


def rng(*shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def squeeze_excite_head(c: int, side: int, hidden: int, extra: int):
  """x (1, c, side, side) and v (1, extra) -> a 3x3 conv, a squeeze-excite block, global pooling, and a two-layer head
  over the pooled channels and v; with the numpy reference."""
  w, b = rng(c, c, 3, 3, seed=1) * 0.3, rng(c, seed=2)
  w1, b1, w2, b2 = rng(hidden, c, seed=3), rng(hidden, seed=4), rng(c, hidden, seed=5), rng(c, seed=6)
  h1, h2 = rng(c + extra, 16, seed=7) * 0.3, rng(16, 5, seed=8)
  x, v = placeholder("x", (1, c, side, side)), placeholder("v", (1, extra))
  y = x.conv2d(Tensor(w), Tensor(b), padding=1).relu()
  s = y.mean(axis=(2, 3))
  s = ((s @ Tensor(w1.T) + Tensor(b1)).relu() @ Tensor(w2.T) + Tensor(b2)).sigmoid()
  y = y * s.reshape(1, c, 1, 1)
  head = (y.mean(axis=(2, 3)).cat(v, axis=1) @ Tensor(h1)).relu() @ Tensor(h2)
  out = {"y": y, "p": head.softmax(-1)}

  def reference(xv: np.ndarray, vv: np.ndarray) -> dict:
    pad = np.pad(xv, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((1, c, side, side), np.float64)
    for i in range(3):
      for j in range(3): conv += np.einsum("oc,bchw->bohw", w[:, :, i, j], pad[:, :, i:i + side, j:j + side])
    yv = np.maximum(conv + b[None, :, None, None], 0)
    sv = np.maximum(yv.mean(axis=(2, 3)) @ w1.T + b1, 0) @ w2.T + b2
    yv = yv * (1 / (1 + np.exp(-sv)))[:, :, None, None]
    logits = np.maximum(np.concatenate([yv.mean(axis=(2, 3)), vv], 1) @ h1, 0) @ h2
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return {"y": yv, "p": e / e.sum(-1, keepdims=True)}
  return {"x": x, "v": v}, out, reference


def unchained(spec):
  return dataclasses.replace(spec, kernels=[dataclasses.replace(k, with_previous=False) for k in spec.kernels])


@settings(max_examples=6, deadline=None)
@given(c=st.sampled_from([3, 8, 12, 24]), side=st.sampled_from([1, 2, 5, 8]), hidden=st.sampled_from([1, 4, 6]),
       extra=st.sampled_from([1, 3]))
def test_chains_compute_what_their_kernels_compute_one_by_one(c, side, hidden, extra):
  inputs, outputs, reference = squeeze_excite_head(c, side, hidden, extra)
  spec = compile_graph(inputs, outputs, target="pocl").spec
  assert any(k.with_previous for k in spec.kernels), [(k.name, k.flops, k.bytes) for k in spec.kernels]
  chained, alone = Program(spec, default_device()), Program(unchained(spec), default_device())
  assert len(chained.kernels) < len(alone.kernels) == len(spec.kernels)
  for frame in range(2):   # new inputs each frame: inputs read in place are bound to each chain anew
    feeds = {"x": rng(1, c, side, side, seed=10 + frame), "v": rng(1, extra, seed=20 + frame)}
    got, want = chained.run(feeds), alone.run(feeds)
    for name, ref in reference(feeds["x"], feeds["v"]).items():
      np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=f"{name}, frame {frame}")
      np.testing.assert_allclose(got[name], ref, rtol=1e-4, atol=1e-5, err_msg=f"{name}, frame {frame}")


def test_chain_survives_the_artifact_and_is_one_launch(tmp_path):
  inputs, outputs, reference = squeeze_excite_head(16, 4, 4, 2)
  spec = compile_graph(inputs, outputs, target="pocl").spec
  write_artifact(spec, tmp_path / "m.edgeml")
  again = read_artifact(tmp_path / "m.edgeml")
  assert [k.with_previous for k in again.kernels] == [k.with_previous for k in spec.kernels]
  prog = compiled.load(tmp_path / "m.edgeml")
  chains = [k for k in prog.kernels if k.name.startswith("chain_")]
  members = sum(k.with_previous for k in spec.kernels)
  assert chains and len(prog.kernels) == len(spec.kernels) - members
  assert sum(k.flops for k in prog.kernels) == sum(k.flops for k in spec.kernels)
  feeds = {"x": rng(1, 16, 4, 4, seed=3), "v": rng(1, 2, seed=4)}
  np.testing.assert_allclose(prog.run(feeds)["p"], reference(feeds["x"], feeds["v"])["p"], rtol=1e-4, atol=1e-6)
  assert len(prog.last_kernel_times()) == len(prog.kernels)


def test_loader_refuses_chains_that_cannot_be():
  inputs, outputs, _ = squeeze_excite_head(8, 2, 2, 1)
  spec = compile_graph(inputs, outputs, target="pocl").spec
  validate(spec)
  first = [dataclasses.replace(spec.kernels[0], with_previous=True)] + spec.kernels[1:]
  with pytest.raises(ArtifactError, match=r"kernel 0 .* runs in one launch with the kernel before it, and there is none"):
    validate(dataclasses.replace(spec, kernels=first))
  n = next(i for i, k in enumerate(spec.kernels) if k.with_previous) - 1   # the first member of the first chain
  ids = "int gx = get_global_id(0), gy = get_global_id(1);"
  name = spec.kernels[n].name
  at = spec.source.index(ids, spec.source.index(f"void {name}("))
  for text, problem in (("int gy = get_global_id(1), gx = get_global_id(0);", "its body does not start with"),
                        (ids + " barrier(CLK_GLOBAL_MEM_FENCE);", "it uses barrier after its ids")):
    source = spec.source[:at] + text + spec.source[at + len(ids):]
    with pytest.raises(ArtifactError, match=rf"kernel {n} \('{name}'\) cannot run in a chain: {problem}"):
      validate(dataclasses.replace(spec, source=source))
  tiny = tiny_spec(target="pocl")
  second = dataclasses.replace(tiny.kernels[1], with_previous=True)
  scalar = dataclasses.replace(tiny, kernels=[tiny.kernels[0], second, tiny.kernels[2]])
  with pytest.raises(ArtifactError, match="kernel 0 .*cannot run in a chain: it takes scalar arguments"):
    validate(scalar)


def test_gpu_targets_keep_every_launch():
  """A chain runs on one compute unit: on a GPU that would serialize what a launch spreads over the chip."""
  inputs, outputs, _ = squeeze_excite_head(8, 2, 2, 1)
  for target in ("nvidia", "adreno"):
    assert not any(k.with_previous for k in compile_graph(inputs, outputs, target=target).spec.kernels)
