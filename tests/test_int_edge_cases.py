"""Integer and cast edge cases against numpy: the values where C has undefined behaviour (INT_MIN negated, INT_MIN / -1,
a zero divisor, signed overflow, shifts past the bit width, out-of-range float-to-int casts) must give numpy's (or
ONNX's) answer on every driver. Tiny arrays: the Oclgrind job runs this file under a simulator.

Out-of-range float-to-int casts are where numpy itself is platform-specific: edgeml saturates to the type's min/max and
maps NaN to 0 (checked against that rule, not numpy)."""
import warnings
import numpy as np
import pyopencl as cl
import pytest
from onnx import TensorProto, helper
from compiled.device import default_device
from edgeml import Tensor
from edgeml.codegen import NotVectorizable, kernel_name, program_source, render_shape
from edgeml.opt import cpu_shapes
from edgeml.onnx import OnnxModel
from edgeml.realize import realize
from edgeml.schedule import schedule

pytestmark = pytest.mark.portable
SIGNED = [np.int8, np.int32, np.int64]
INTS = SIGNED + [np.uint8]


def same(got: Tensor, want: np.ndarray):
  got, want = got.numpy(), np.asarray(want)
  assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
  np.testing.assert_array_equal(got, want)


def extremes(dtype) -> np.ndarray:
  """A 2x4 array holding the type's min and max next to small values, min and max each in a different column."""
  i = np.iinfo(dtype)
  return np.array([[3, i.min, 7, i.max], [i.max, 1, i.min, 0]], dtype)


@pytest.mark.parametrize("dtype", INTS + [np.int16, np.uint32])
def test_min_max_argmin_argmax_with_the_extremes(dtype):
  a = extremes(dtype)
  for name in ("min", "max", "argmin", "argmax"):
    want = getattr(a, name)
    same(getattr(Tensor(a), name)(), np.asarray(want(), np.int32 if name.startswith("arg") else dtype))
    for axis in (0, 1):
      same(getattr(Tensor(a), name)(axis), want(axis).astype(np.int32 if name.startswith("arg") else dtype))


def test_bool_min_max_argmin_argmax():
  b = np.array([[True, False, True], [True, True, True]])
  for name in ("min", "max", "argmin", "argmax"):
    dtype = np.int32 if name.startswith("arg") else np.bool_
    same(getattr(Tensor(b), name)(), np.asarray(getattr(b, name)(), dtype))
    same(getattr(Tensor(b), name)(1), getattr(b, name)(1).astype(dtype))


def test_min_of_small_positive_ints():
  """The case NVIDIA's compiler got wrong when min was -max(-x): [3, 7, 1, 9].min() gave -3."""
  same(Tensor(np.array([3, 7, 1, 9], np.int32)).min(), np.int32(1))
  same(Tensor(np.array([[np.iinfo(np.int32).min, 5, -3]], np.int32)).min(1), np.array([np.iinfo(np.int32).min], np.int32))


@pytest.mark.parametrize("dtype", SIGNED)
def test_neg_abs_add_mul_sub_wrap_like_numpy(dtype):
  i = np.iinfo(dtype)
  a = np.array([i.min, i.max, i.min, -1, 5, i.max], dtype)
  b = np.array([-1, 1, i.min, i.min, i.max, i.max], dtype)
  same(-Tensor(a), -a)
  same(Tensor(a).abs(), np.abs(a))
  same(Tensor(a) + Tensor(b), a + b)
  same(Tensor(a) - Tensor(b), a - b)
  same(Tensor(a) * Tensor(b), a * b)
  same(Tensor(a).sum(), a.sum(dtype=dtype))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_unsigned_neg_sub_mul_wrap_like_numpy(dtype):
  """uint16 * uint16 is computed in int after C's promotion, where 65535 * 65535 overflows: it must not be."""
  m = np.iinfo(dtype).max
  a, b = np.array([0, 1, m, 200, m], dtype), np.array([1, 2, m, 3, m - 1], dtype)
  same(-Tensor(a), -a)
  same(Tensor(a) - Tensor(b), a - b)
  same(Tensor(a) * Tensor(b), a * b)


def _trunc_div(a, b, dtype):
  """C's truncating division by Python ints, a zero divisor giving 0, wrapped into dtype (INT_MIN / -1 -> INT_MIN)."""
  info = np.iinfo(dtype)
  q = [0 if y == 0 else abs(x) // abs(y) * (1 if (x < 0) == (y < 0) else -1) for x, y in zip(a.tolist(), b.tolist())]
  return np.array([(v - info.min) % 2 ** info.bits + info.min for v in q], dtype)


@pytest.mark.parametrize("dtype", SIGNED)
def test_division_and_remainder_with_int_min_minus_one_zero_and_mixed_signs(dtype):
  i = np.iinfo(dtype)
  a = np.array([i.min, i.min, 7, -7, 7, -7, 5, -5, i.max, i.min, 0, 6], dtype)
  b = np.array([-1, 1, 2, 2, -2, -2, 0, 0, -1, 2, -3, 3], dtype)
  with np.errstate(all="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    same(Tensor(a) % Tensor(b), a % b)                 # floor modulo (sign of the divisor), 0 for a zero divisor
    same(Tensor(a).fmod(Tensor(b)), np.fmod(a, b))     # C remainder (sign of the dividend)
    same(Tensor(a) // Tensor(b), a // b)               # floor division; INT_MIN // -1 wraps to INT_MIN
  same(Tensor(a).idiv(Tensor(b)), _trunc_div(a, b, dtype))


def test_unsigned_division_and_remainder():
  a, b = np.array([255, 7, 0, 200, 9], np.uint8), np.array([2, 0, 3, 255, 9], np.uint8)
  with np.errstate(all="ignore"):
    same(Tensor(a) % Tensor(b), a % b)
    same(Tensor(a) // Tensor(b), a // b)
  same(Tensor(a).idiv(Tensor(b)), _trunc_div(a, b, np.uint8))


def test_float_floor_division_and_modulo():
  a, b = np.array([7.0, -7.0, 7.0, -7.0, 1.0, 0.5], np.float32), np.array([2.0, 2.0, -2.0, -2.0, 0.1, 0.25], np.float32)
  same(Tensor(a) // Tensor(b), a // b)
  same(Tensor(a) % Tensor(b), a % b)


IN_RANGE = np.array([-2.9, -1.5, -0.5, -0.0, 0.0, 0.4, 1.5, 2.9, 100.7, -100.7, 126.99], np.float32)


@pytest.mark.parametrize("dtype", INTS)
def test_float_to_int_casts_truncate_toward_zero(dtype):
  x = IN_RANGE if np.iinfo(dtype).min < 0 else IN_RANGE[IN_RANGE > -1]
  same(Tensor(x).cast(dtype), x.astype(dtype))


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint8])
def test_out_of_range_float_to_int_casts_saturate_and_nan_gives_zero(dtype):
  i = np.iinfo(dtype)
  x = np.array([1e10, -1e10, np.inf, -np.inf, np.nan, float(i.max) + 1000, 3.5], np.float32)
  same(Tensor(x).cast(dtype), np.array([i.max, i.min, i.max, i.min, 0, i.max, 3], dtype))


def test_int_to_float_and_int_to_int_casts():
  i32, i64 = np.iinfo(np.int32), np.iinfo(np.int64)
  a = np.array([i32.min, i32.max, 300, -129, -1, 0, 16777217], np.int32)
  for dtype in (np.float32, np.int8, np.uint8, np.int64, np.uint32):
    same(Tensor(a).cast(dtype), a.astype(dtype))
  same(Tensor(np.array([i64.min, i64.max, -1, 2 ** 40 + 7], np.int64)).cast(np.float32),
       np.array([i64.min, i64.max, -1, 2 ** 40 + 7], np.int64).astype(np.float32))
  same(Tensor(np.array([i64.min, i64.max, -1, 2 ** 40 + 7], np.int64)).cast(np.int32),
       np.array([i64.min, i64.max, -1, 2 ** 40 + 7], np.int64).astype(np.int32))
  u = np.array([0, 127, 128, 255], np.uint8)
  same(Tensor(u).cast(np.int8), u.astype(np.int8))
  same(Tensor(u.astype(np.int8)).cast(np.uint8), u)


def test_bool_casts():
  f = np.array([0.0, -0.0, 0.5, -1e-30, np.nan, -np.inf], np.float32)
  same(Tensor(f).cast(np.bool_), f.astype(np.bool_))
  i = np.array([0, np.iinfo(np.int32).min, 1, 256], np.int32)
  same(Tensor(i).cast(np.bool_), i.astype(np.bool_))
  same(Tensor(i).cast(np.uint8).cast(np.bool_), i.astype(np.uint8).astype(np.bool_))   # 256 -> 0 -> False
  b = np.array([True, False, True], np.bool_)
  for dtype in (np.int32, np.float32, np.uint8, np.int64):
    same(Tensor(b).cast(dtype), b.astype(dtype))


def test_bool_plus_bool_is_or():
  """Bools are stored as uchar 0/1: a plain add would make 2, which then compares unequal to True."""
  b = np.array([True, False, True])
  same((Tensor(b) + True).eq(True), (b + True) == True)
  same((Tensor(b) + Tensor(b)).eq(Tensor(b)), (b + b) == b)


@pytest.mark.parametrize("dtype,amounts", [(np.uint8, [0, 1, 7, 8, 9, 255]), (np.uint32, [0, 1, 31, 32, 33, 200]),
                                           (np.int32, [0, 1, 31, 32, 40, -1]), (np.int8, [0, 3, 7, 8, 100, -3])])
def test_shifts_including_amounts_past_the_bit_width(dtype, amounts):
  i = np.iinfo(dtype)
  x = np.array([1, i.max, i.min if i.min else 128, 3, -5 if i.min else 0xAA, 7], dtype)
  s = np.array(amounts, dtype)
  same(Tensor(x) << Tensor(s), np.left_shift(x, s))
  same(Tensor(x) >> Tensor(s), np.right_shift(x, s))


def _int_model(node, inputs, out_type=TensorProto.INT32):
  graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, t, [len(v)]) for n, (t, v) in inputs.items()],
                            [helper.make_tensor_value_info("z", out_type, None)])
  return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op,attrs", [("Mod", {"fmod": 0}), ("Mod", {"fmod": 1}), ("Div", {})])
def test_onnx_integer_mod_and_div_against_onnxruntime(op, attrs):
  ort = pytest.importorskip("onnxruntime")
  i = np.iinfo(np.int32)
  x = np.array([7, -7, 7, -7, i.min, i.max, 0, 5, i.min + 1], np.int32)   # no zero divisor, no INT_MIN / -1: UB in ORT
  y = np.array([2, 2, -2, -2, 3, -5, 3, -3, 7], np.int32)
  model = _int_model(helper.make_node(op, ["x", "y"], ["z"], **attrs), {"x": (TensorProto.INT32, x), "y": (TensorProto.INT32, y)})
  want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x, "y": y})[0]
  same(OnnxModel(model)({"x": Tensor(x), "y": Tensor(y)})["z"], want)


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_onnx_bitshift_against_onnxruntime(direction):
  ort = pytest.importorskip("onnxruntime")
  x, s = np.array([1, 0x80000000, 0xFFFFFFFF, 12345, 7], np.uint32), np.array([0, 1, 31, 4, 30], np.uint32)
  model = _int_model(helper.make_node("BitShift", ["x", "s"], ["z"], direction=direction),
                     {"x": (TensorProto.UINT32, x), "s": (TensorProto.UINT32, s)}, TensorProto.UINT32)
  want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x, "s": s})[0]
  same(OnnxModel(model)({"x": Tensor(x), "s": Tensor(s)})["z"], want)


@pytest.mark.parametrize("folded", [False, True])
def test_onnx_div_mod_cast_give_the_same_answers_folded_and_on_the_device(folded):
  """Constant inputs are folded with numpy at import; both paths must agree on the cases onnxruntime leaves undefined
  (INT_MIN / -1, a zero divisor, out-of-range and NaN float-to-int casts)."""
  i = np.iinfo(np.int32)
  feeds = {"x": np.array([i.min, i.min, -7, 7, 5, i.min, -7], np.int32), "y": np.array([-1, 2, 2, -2, 0, 3, 0], np.int32),
           "f": np.array([1e10, -1e10, np.nan, -2.7, 2.7, np.inf, -0.5], np.float32)}
  types = {"x": TensorProto.INT32, "y": TensorProto.INT32, "f": TensorProto.FLOAT}
  nodes = [helper.make_node("Div", ["x", "y"], ["div"]), helper.make_node("Mod", ["x", "y"], ["mod"]),
           helper.make_node("Mod", ["x", "y"], ["fmod"], fmod=1), helper.make_node("Cast", ["f"], ["cast"], to=TensorProto.INT32)]
  inputs = [] if folded else [helper.make_tensor_value_info(k, types[k], [7]) for k in feeds]
  inits = [helper.make_tensor(k, types[k], [7], v.tolist()) for k, v in feeds.items()] if folded else []
  outputs = [helper.make_tensor_value_info(k, TensorProto.INT32, None) for k in ("div", "mod", "fmod", "cast")]
  model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits), ir_version=8,
                            opset_imports=[helper.make_opsetid("", 17)])
  outs = OnnxModel(model)({} if folded else {k: Tensor(v) for k, v in feeds.items()})
  got = {k: v.numpy() if isinstance(v, Tensor) else np.asarray(v) for k, v in outs.items()}
  x, y = feeds["x"], feeds["y"]
  with np.errstate(all="ignore"):
    want = {"div": _trunc_div(x, y, np.int32), "mod": x % y, "fmod": np.fmod(x, y),
            "cast": np.array([i.max, i.min, 0, -2, 2, i.max, 0], np.int32)}
  for k in want: np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _every_variant(out: Tensor, want: np.ndarray) -> int:
  """Runs every rendering of out's last kernel against want; the number of vector-lane variants run."""
  items = schedule([out.node])
  realize([it.out for it in items[:-1]])
  item = schedule([out.node])[-1]
  dev, lanes = default_device(), 0
  for shape in cpu_shapes(item):
    try: k = render_shape(item, shape, kernel_name(item))
    except NotVectorizable: continue
    buf = dev.alloc(k.out.nbytes)
    args = [n.buffer if isinstance(n.buffer, cl.MemoryObjectHolder) else dev.upload(np.ascontiguousarray(n.buffer))
            for n in k.loads]   # a Tensor's data may still be on the host
    cl.Kernel(dev.build(program_source([k])), k.name)(dev.queue, k.global_size, k.local_size, buf, *args)
    got = dev.download(buf, k.out.shape, k.out.dtype).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{shape}")
    lanes += shape.width > 1
  return lanes


def test_padded_computed_value_on_vector_lanes():
  """exp computed lane by lane and then padded: the lanes in the padding must be 0, not exp of whatever lies there."""
  x = np.random.default_rng(0).uniform(-2, 2, (3, 13)).astype(np.float32)
  want = np.pad(np.exp(x.astype(np.float64)), ((0, 0), (1, 2)))
  assert _every_variant(Tensor(x).exp().pad([(0, 0), (1, 2)]), want) >= 1


def test_conv_over_a_padded_computed_value_on_vector_lanes():
  x = np.random.default_rng(1).uniform(-1, 1, (1, 2, 4, 16)).astype(np.float32)
  w = np.random.default_rng(2).uniform(-1, 1, (2, 2, 3, 3)).astype(np.float32)
  e = np.pad(np.exp(x.astype(np.float64)), ((0, 0), (0, 0), (1, 1), (1, 1)))
  want = sum(np.einsum("nchw,oc->nohw", e[:, :, i:i + 4, j:j + 16], w[:, :, i, j]) for i in range(3) for j in range(3))
  assert _every_variant(Tensor(x).exp().conv2d(Tensor(w), padding=1), want) >= 1
