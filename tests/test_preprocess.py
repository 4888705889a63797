"""The NV12 -> model-input warp kernels against the numpy reference, the frame history on the device, and the
runtime hooks modeld uses (device_buffer, feed_on_device)."""
import numpy as np
import pyopencl as cl
import pytest

from compiled.device import default_device
from compiled.preprocess import FrameWarp, image_size, reference
from compiled.runtime import Program
from tiny_program import tiny_spec

WIDTH, HEIGHT, STRIDE = 100, 60, 112
MATRICES = {"identity": np.eye(3),
            "zoom and shift": np.array([[0.5, 0, -3], [0, 0.5, -2], [0, 0, 1]]),
            "perspective": np.array([[0.9, 0.1, 3], [-0.05, 1.1, 2], [0.0005, 0.0002, 1]]),
            "outside the frame": np.array([[1, 0, -500], [0, 1, 40], [0, 0, 1]])}


def nv12_frame(seed: int):
  """(flat NV12 bytes with row padding, Y view, UV view)."""
  data = np.random.default_rng(seed).integers(0, 256, STRIDE * HEIGHT * 3 // 2, dtype=np.uint8)
  y = data[:STRIDE * HEIGHT].reshape(HEIGHT, STRIDE)[:, :WIDTH]
  uv = data[STRIDE * HEIGHT:].reshape(HEIGHT // 2, STRIDE)[:, :WIDTH]
  return data, y, uv


def warp_frames(layout, shape, matrix, seeds):
  dev = default_device()
  out = dev.alloc(int(np.prod(shape)) * 4)
  warp = FrameWarp(dev, layout, shape, out)
  warp.set_matrix(matrix)
  for seed in seeds:
    warp.load(nv12_frame(seed)[0], WIDTH, HEIGHT, STRIDE)
    warp.warp()
  return dev.download(out, shape, np.float32)[0]


@pytest.mark.parametrize("matrix", MATRICES.values(), ids=MATRICES.keys())
@pytest.mark.parametrize("layout,shape", [("yuv6", (1, 6, 16, 32)), ("rgb", (1, 3, 24, 40))])
def test_warp_matches_numpy(layout, shape, matrix):
  got = warp_frames(layout, shape, matrix, [1])
  _, y, uv = nv12_frame(1)
  np.testing.assert_allclose(got, reference(y, uv, matrix, layout, shape), rtol=0, atol=1e-3)


@pytest.mark.parametrize("layout,shape", [("yuv6", (1, 18, 8, 12)), ("rgb", (1, 6, 10, 14))])
def test_history_keeps_the_last_frames_oldest_first(layout, shape):
  got = warp_frames(layout, shape, MATRICES["perspective"], [1, 2, 3, 4])
  frames = image_size(layout, shape)[0]
  expected = [reference(*nv12_frame(seed)[1:], MATRICES["perspective"], layout, shape) for seed in range(5 - frames, 5)]
  np.testing.assert_allclose(got, np.concatenate(expected), rtol=0, atol=1e-3)


def test_identity_yuv6_is_a_subsampled_crop():
  got = warp_frames("yuv6", (1, 6, 16, 32), np.eye(3), [7])
  _, y, uv = nv12_frame(7)
  np.testing.assert_array_equal(got[0], y[0:32:2, 0:64:2])
  np.testing.assert_array_equal(got[3], y[1:32:2, 1:64:2])
  np.testing.assert_array_equal(got[4], uv[:16, 0:64:2])
  np.testing.assert_array_equal(got[5], uv[:16, 1:64:2])


def test_bad_layouts_say_what_fits():
  with pytest.raises(ValueError, match="not one of yuv6, rgb"):
    image_size("bgr", (1, 3, 8, 8))
  with pytest.raises(ValueError, match=r"\(1, 6\*frames, h, w\)"):
    image_size("yuv6", (1, 8, 8, 8))


def test_device_fed_input_is_not_overwritten_by_execute():
  prog = Program(tiny_spec(), default_device())
  x = np.arange(8, dtype=np.float32).reshape(1, 8)
  expected = prog.run({"x": x})
  prog.feed_on_device("x")
  prog.input_buffer("x")[:] = 0  # ignored from now on
  cl.enqueue_copy(prog.device.queue, prog.device_buffer("x"), x)
  prog.execute()
  for name, value in expected.items():
    np.testing.assert_array_equal(prog.output_buffer(name), value)
  assert [k.name for k, start, end in prog.last_kernel_times() if end >= start] == [k.name for k in prog.kernels]
