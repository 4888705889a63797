"""Every shape edgeml/opt.py proposes for a kernel (tilings, vector lanes on outputs, output channels or the reduce
axis, stride-2 lanes; the CPU shapes and the GPU ones: flat launches, grouped reduces) must compute the same numbers:
the tuner may pick any of them. Each is rendered and run on the device against numpy."""
import numpy as np
import pyopencl as cl
import pytest
from compiled.device import default_device
from edgeml import Tensor
from compiled.targets import TARGETS
from edgeml.codegen import NotVectorizable, kernel_name, program_source, render_shape
from edgeml.host_eval import device_buffer
from edgeml.opt import KernelShape, candidates, reduce_length
from edgeml.realize import realize
from edgeml.schedule import schedule

pytestmark = pytest.mark.portable   # small and device-independent: the Oclgrind job runs these too


def conv_ref(x, w, stride, pad):
  n, c, h, wd = x.shape
  co, _, k, _ = w.shape
  xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
  out = np.zeros((n, co, oh, ow))
  for i in range(k):
    for j in range(k):
      out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride], w[:, :, i, j])
  return out


rng = np.random.default_rng(0)
X = rng.standard_normal((1, 4, 32, 48)).astype(np.float32)
W3 = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
A, B, V, WT = (rng.standard_normal(s).astype(np.float32) for s in [(16, 64), (64, 24), (1, 64), (96, 64)])
XS = rng.standard_normal((1, 4, 12, 16)).astype(np.float32)
XC = rng.standard_normal((1, 11, 32, 48)).astype(np.float32)
W11 = rng.standard_normal((16, 19, 1, 1)).astype(np.float32)
CASES = {
  "conv3x3_pad1_small": (lambda: Tensor(XS).conv2d(Tensor(W3), padding=1), lambda: conv_ref(XS, W3, 1, 1)),
  "pad_copy": (lambda: Tensor(X).pad([(0, 0), (0, 0), (1, 1), (2, 2)]).exp(),
               lambda: np.exp(np.pad(X, ((0, 0), (0, 0), (1, 1), (2, 2))))),
  "conv3x3_pad1": (lambda: Tensor(X).conv2d(Tensor(W3), padding=1).relu(), lambda: np.maximum(conv_ref(X, W3, 1, 1), 0)),
  "conv3x3_stride2": (lambda: Tensor(X).conv2d(Tensor(W3), stride=2, padding=1), lambda: conv_ref(X, W3, 2, 1)),
  "matmul_silu": (lambda: (Tensor(A) @ Tensor(B)).silu(), lambda: (A @ B) / (1 + np.exp(-(A @ B)))),
  "matvec": (lambda: Tensor(V).linear(Tensor(WT)), lambda: V @ WT.T),
  "maxpool": (lambda: Tensor(X).max_pool2d(2), lambda: X.reshape(1, 4, 16, 2, 24, 2).max((3, 5))),
  "concat_last_axis": (lambda: Tensor(A).cat(Tensor(A[:, :8]).exp(), Tensor(A[:, 8:16]) * 2, axis=1).relu(),
                       lambda: np.maximum(np.concatenate([A, np.exp(A[:, :8]), A[:, 8:16] * 2], 1), 0)),
  "conv1x1_of_concat": (lambda: Tensor(X).cat(Tensor(X).exp(), Tensor(XC), axis=1).conv2d(Tensor(W11)),
                        lambda: np.einsum("nchw,oc->nohw", np.concatenate([X, np.exp(X), XC], 1), W11[:, :, 0, 0])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_variant_computes_the_same(case):
  make, reference = CASES[case]
  out = make()
  items = schedule([out.node])
  realize([it.out for it in items[:-1]])          # inputs of the last kernel
  item = schedule([out.node])[-1]
  dev, want, tried, vector = default_device(), reference(), 0, 0
  shapes = list(dict.fromkeys(candidates(item, TARGETS["pocl"]) + candidates(item, TARGETS["nvidia"])))
  if reduce_length(item): shapes += [KernelShape(group=g, local=g) for g in (2, 64)]   # grouped reduce, forced
  for shape in shapes:
    try: k = render_shape(item, shape, kernel_name(item))
    except NotVectorizable: continue
    kernel = cl.Kernel(dev.build(program_source([k])), k.name)
    buf = dev.alloc(k.out.nbytes)
    kernel.set_args(buf, *[device_buffer(n) for n in k.loads])
    cl.enqueue_nd_range_kernel(dev.queue, kernel, k.global_size, k.local_size)
    got = dev.download(buf, k.out.shape, k.out.dtype).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{case} {shape}")
    tried += 1
    vector += shape.width > 1
  assert tried >= 2 and vector >= 1, (tried, vector)


@pytest.mark.parametrize("target", ["pocl", "nvidia", "adreno"])
@pytest.mark.parametrize("case", list(CASES))
def test_lazy_variants_keep_the_pickers_order(case, target):
  """codegen.Variants renders a shape's reduce loop only when needed; whatever is asked of it (the first kernel, a
  few, all of them) comes out as rendering every shape and sorting by statements per output (ties: opt's order)."""
  from edgeml.codegen import Variants, _render
  item = schedule([CASES[case][0]().node])[-1]
  ranked = []
  for i, shape in enumerate(candidates(item, TARGETS[target])):
    try: r, k = _render(item, shape, "k", None)
    except NotVectorizable: continue
    ranked.append((r.loop_statements / np.prod(list(shape.tiles.values()) or [1]) / shape.group, i, k.source))
  want = [source for *_, source in sorted(ranked)]
  first = Variants(item, "k", None, TARGETS[target])
  assert first[0].source == want[0]
  assert first.at_least(2) == (len(want) >= 2)
  assert [k.source for k in first] == want                       # iterating after a partial look
  assert [k.source for k in Variants(item, "k", None, TARGETS[target])][:3] == want[:3]
  every = Variants(item, "k", None, TARGETS[target])
  assert len(every) == len(want) and [k.source for k in every.kernels] == want


def test_lazy_variants_skip_loops_the_first_kernel_does_not_need():
  """Asking for the picked kernel of a 3x3 convolution leaves many shapes' reduce loops unrendered."""
  from edgeml.codegen import Variants
  item = schedule([CASES["conv3x3_pad1"][0]().node])[-1]
  v = Variants(item, "k", None, TARGETS["pocl"])
  total = len(v.waiting)
  v[0]
  assert total >= 4 and len(v.waiting) >= total // 3, (total, len(v.waiting))
