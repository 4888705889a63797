"""Camera frame -> model input, on the device: a perspective warp of an NV12 frame into the model's input layout.

The calibration matrix M maps camera pixels to model-input pixels (3x3, row-major); each output pixel (x, y) samples
the camera at M^-1 (x, y, 1), bilinearly, clamped to the frame's edge. Chroma is sampled from the half-resolution UV
plane at half those coordinates. Layouts (C is the input's channel count, K the number of stacked frames):

  yuv6: (1, 6K, H/2, W/2) from a warped H x W image: per frame Y[0::2, 0::2], Y[0::2, 1::2], Y[1::2, 0::2],
        Y[1::2, 1::2], U, V (the openpilot driving-model layout), values 0..255
  rgb:  (1, 3K, H, W) planar R, G, B (BT.601 full range), values 0..255

The input holds the last K frames, oldest first: each new frame shifts the older slots down by one on the device
(buffer-to-buffer copies) and is warped into the last slot. Nothing crosses back to the host.

`reference` is the same computation in numpy, float32 operation for operation (the kernel is built without
contraction into fma and with correctly rounded division), so on the same inputs the two agree to the last bit on
most devices. Imports numpy and pyopencl only.
"""
import numpy as np
import pyopencl as cl

LAYOUTS = {"yuv6": 6, "rgb": 3}  # channels per frame
BUILD_OPTIONS = "-cl-fp32-correctly-rounded-divide-sqrt"
HALF = np.diag([0.5, 0.5, 1.0])  # full-resolution pixel -> UV-plane sample

SOURCE = r"""
#pragma OPENCL FP_CONTRACT OFF

float2 project(__global const float *m, float x, float y) {
  float w = m[6] * x + m[7] * y + m[8];
  return (float2)((m[0] * x + m[1] * y + m[2]) / w, (m[3] * x + m[4] * y + m[5]) / w);
}

/* bilinear sample of a w x h uint8 plane: `pitch` bytes per row, `step` bytes per sample (2 in interleaved UV) */
float sample(__global const uchar *p, int pitch, int step, int w, int h, float2 s) {
  float fx0 = floor(s.x), fy0 = floor(s.y);
  float fx = s.x - fx0, fy = s.y - fy0;
  int ix = (int)clamp(fx0, -1.0f, (float)w), iy = (int)clamp(fy0, -1.0f, (float)h);
  int x0 = clamp(ix, 0, w - 1) * step, x1 = clamp(ix + 1, 0, w - 1) * step;
  int y0 = clamp(iy, 0, h - 1) * pitch, y1 = clamp(iy + 1, 0, h - 1) * pitch;
  float top = (float)p[y0 + x0] * (1.0f - fx) + (float)p[y0 + x1] * fx;
  float bottom = (float)p[y1 + x0] * (1.0f - fx) + (float)p[y1 + x1] * fx;
  return top * (1.0f - fy) + bottom * fy;
}

/* one work item per 2x2 block of the warped image: four Y samples, one U, one V */
__kernel void warp_yuv6(__global const uchar *src, int width, int height, int stride,
                        __global const float *m, __global float *out, int offset) {
  int x = get_global_id(0), y = get_global_id(1), w2 = get_global_size(0), plane = w2 * get_global_size(1);
  __global float *o = out + offset + y * w2 + x;
  for (int dy = 0; dy < 2; dy++)
    for (int dx = 0; dx < 2; dx++)
      o[(2 * dy + dx) * plane] = sample(src, stride, 1, width, height,
                                        project(m, (float)(2 * x + dx), (float)(2 * y + dy)));
  __global const uchar *uv = src + stride * height;
  float2 s = project(m + 9, (float)x, (float)y);
  o[4 * plane] = sample(uv, stride, 2, width / 2, height / 2, s);
  o[5 * plane] = sample(uv + 1, stride, 2, width / 2, height / 2, s);
}

__kernel void warp_rgb(__global const uchar *src, int width, int height, int stride,
                       __global const float *m, __global float *out, int offset) {
  int x = get_global_id(0), y = get_global_id(1), plane = get_global_size(0) * get_global_size(1);
  __global float *o = out + offset + y * get_global_size(0) + x;
  float luma = sample(src, stride, 1, width, height, project(m, (float)x, (float)y));
  __global const uchar *uv = src + stride * height;
  float2 s = project(m + 9, (float)x, (float)y);
  float u = sample(uv, stride, 2, width / 2, height / 2, s) - 128.0f;
  float v = sample(uv + 1, stride, 2, width / 2, height / 2, s) - 128.0f;
  o[0] = clamp(luma + 1.402f * v, 0.0f, 255.0f);
  o[plane] = clamp(luma - 0.344136f * u - 0.714136f * v, 0.0f, 255.0f);
  o[2 * plane] = clamp(luma + 1.772f * u, 0.0f, 255.0f);
}
"""


def image_size(layout: str, shape) -> tuple[int, int, int]:
  """(frames, height, width) of the warped image behind an input of `shape` (1, C, h, w) in `layout`."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
  if len(shape) != 4 or shape[0] != 1 or shape[1] % LAYOUTS[layout]:
    raise ValueError(f"a {layout} input is (1, {LAYOUTS[layout]}*frames, h, w), got {tuple(shape)}")
  scale = 2 if layout == "yuv6" else 1
  return shape[1] // LAYOUTS[layout], shape[2] * scale, shape[3] * scale


def sampling_matrices(layout: str, camera_to_model) -> np.ndarray:
  """The two float32 3x3 matrices the kernel samples with, flattened: output pixel -> camera pixel (for Y), and
  output sample -> UV-plane sample (an output pixel for rgb, a half-resolution pixel for yuv6)."""
  inverse = np.linalg.inv(np.asarray(camera_to_model, np.float64).reshape(3, 3))
  chroma = HALF @ inverse @ (np.linalg.inv(HALF) if layout == "yuv6" else np.eye(3))
  return np.concatenate([inverse.ravel(), chroma.ravel()]).astype(np.float32)


class FrameWarp:
  """Warps NV12 frames into one input buffer of a program, keeping its last `frames` frames there.

  load(nv12, width, height, stride) copies a frame to the device (blocking, so the caller may then check that the
  pool buffer was not overwritten meanwhile); warp() shifts the history and warps the loaded frame into the newest
  slot, returning the kernel's event. set_matrix(M) changes the calibration for the following frames.
  """
  def __init__(self, device, layout: str, shape, target: cl.Buffer):
    self.device, self.layout, self.target = device, layout, target
    self.frames, self.height, self.width = image_size(layout, shape)
    self.slot = LAYOUTS[layout] * shape[2] * shape[3]  # floats per frame
    self.global_size = (shape[3], shape[2])
    self.kernel = cl.Kernel(device.build(SOURCE, BUILD_OPTIONS), f"warp_{layout}")
    self.matrices = np.empty(18, np.float32)  # the host copy must outlive a non-blocking upload: reused
    self.matrix_buf = device.alloc(self.matrices.nbytes)
    self.source, self.source_shape = None, None
    self.set_matrix(np.eye(3))
    self.load(np.zeros(6, np.uint8), 2, 2, 2)  # warm-up on a black 2x2 frame: machine code is made at first enqueue
    self.warp().wait()

  def set_matrix(self, camera_to_model) -> None:
    self.matrices[:] = sampling_matrices(self.layout, camera_to_model)
    cl.enqueue_copy(self.device.queue, self.matrix_buf, self.matrices, is_blocking=True)

  def load(self, nv12: np.ndarray, width: int, height: int, stride: int) -> None:
    if self.source_shape != (nv12.nbytes, width, height, stride):
      self.source, self.source_shape = self.device.alloc(nv12.nbytes), (nv12.nbytes, width, height, stride)
      self.kernel.set_args(self.source, np.int32(width), np.int32(height), np.int32(stride), self.matrix_buf,
                           self.target, np.int32((self.frames - 1) * self.slot))
    cl.enqueue_copy(self.device.queue, self.source, nv12, is_blocking=True)

  def warp(self) -> cl.Event:
    queue, nbytes = self.device.queue, self.slot * 4
    for k in range(self.frames - 1):  # oldest first: slot k takes slot k + 1
      cl.enqueue_copy(queue, self.target, self.target, byte_count=nbytes, src_offset=(k + 1) * nbytes,
                      dst_offset=k * nbytes)
    return cl.enqueue_nd_range_kernel(queue, self.kernel, self.global_size, None)


# ---- the numpy reference ---------------------------------------------------------------------------------------

def _project(m, x, y):
  w = m[6] * x + m[7] * y + m[8]
  return (m[0] * x + m[1] * y + m[2]) / w, (m[3] * x + m[4] * y + m[5]) / w


def _sample(plane: np.ndarray, sx, sy) -> np.ndarray:
  h, w = plane.shape
  fx0, fy0 = np.floor(sx), np.floor(sy)
  fx, fy = sx - fx0, sy - fy0
  ix = np.clip(fx0, -1, w).astype(np.int64)
  iy = np.clip(fy0, -1, h).astype(np.int64)
  x0, x1 = np.clip(ix, 0, w - 1), np.clip(ix + 1, 0, w - 1)
  y0, y1 = np.clip(iy, 0, h - 1), np.clip(iy + 1, 0, h - 1)
  p = plane.astype(np.float32)
  one = np.float32(1)
  top = p[y0, x0] * (one - fx) + p[y0, x1] * fx
  bottom = p[y1, x0] * (one - fx) + p[y1, x1] * fx
  return top * (one - fy) + bottom * fy


def reference(y: np.ndarray, uv: np.ndarray, camera_to_model, layout: str, shape) -> np.ndarray:
  """One frame's channels of an input of `shape` in `layout`, float32 (LAYOUTS[layout], h, w): the warp in numpy.
  `y` is the (height, width) luma plane, `uv` the (height/2, width) interleaved chroma plane."""
  _, height, width = image_size(layout, shape)
  m = sampling_matrices(layout, camera_to_model)
  u_plane, v_plane = uv[:, 0::2], uv[:, 1::2]
  rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
  luma = _sample(y, *_project(m[:9], cols, rows))
  if layout == "yuv6":
    r2, c2 = np.mgrid[0:height // 2, 0:width // 2].astype(np.float32)
    s = _project(m[9:], c2, r2)
    return np.stack([luma[0::2, 0::2], luma[0::2, 1::2], luma[1::2, 0::2], luma[1::2, 1::2],
                     _sample(u_plane, *s), _sample(v_plane, *s)])
  s = _project(m[9:], cols, rows)
  u, v = _sample(u_plane, *s) - np.float32(128), _sample(v_plane, *s) - np.float32(128)
  lo, hi = np.float32(0), np.float32(255)
  return np.stack([np.clip(luma + np.float32(1.402) * v, lo, hi),
                   np.clip(luma - np.float32(0.344136) * u - np.float32(0.714136) * v, lo, hi),
                   np.clip(luma + np.float32(1.772) * u, lo, hi)])
