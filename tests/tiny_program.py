"""A hand-written three-kernel program for the artifact and runtime tests, and its numpy reference.

x[1,8] -> h[n_out] = relu(w @ x + b) (arena, at a nonzero offset) -> y = h * s (output) -> best = argmax(y) (int32 output).
"""
import numpy as np

from compiled.artifact import BufferSpec, KernelSpec, ProgramSpec, TensorSpec
from compiled.device import default_device

SOURCE = """
__kernel void dense_relu(__global float *h, __global const float *x, __global const float *w,
                         __global const float *b, int n) {
  int i = get_global_id(0);
  float acc = b[i];
  for (int k = 0; k < n; k++) acc += w[i * n + k] * x[k];
  h[i] = acc > 0.0f ? acc : 0.0f;
}
__kernel void scale(__global float *y, __global const float *h, float s) {
  int i = get_global_id(0);
  y[i] = h[i] * s;
}
__kernel void argmax(__global int *best, __global const float *y, int n) {
  int j = 0;
  for (int i = 1; i < n; i++) if (y[i] > y[j]) j = i;
  best[0] = j;
}
"""
N_IN, SCALE = 8, 1.5


def weights(n_out: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(n_out)
  return rng.standard_normal((n_out, N_IN), np.float32), rng.standard_normal(n_out, np.float32)


def tiny_spec(target: str | None = None, align: int = 512, n_out: int = 16) -> ProgramSpec:
  """n_out: a multiple of 8; target: default the default device's."""
  if target is None: target = default_device().target.name
  w, b = weights(n_out)
  b_at = -(-w.nbytes // 512) * 512
  return ProgramSpec(
    target=target, compiler_version="test-0", source=SOURCE, build_options="-cl-fast-relaxed-math",
    inputs=[TensorSpec("x", (1, N_IN), "float32", 0)],
    outputs=[TensorSpec("y", (1, n_out), "float32", 1), TensorSpec("best", (1,), "int32", 2)],
    buffers=[BufferSpec("input", 0, 4 * N_IN), BufferSpec("output", 0, 4 * n_out), BufferSpec("output", 0, 4),
             BufferSpec("weights", 0, w.nbytes), BufferSpec("weights", b_at, b.nbytes), BufferSpec("arena", 512, 4 * n_out)],
    kernels=[KernelSpec("dense_relu", (n_out,), (8,), [("buffer", 5), ("buffer", 0), ("buffer", 3), ("buffer", 4), ("int32", N_IN)],
                        flops=2 * N_IN * n_out, bytes=4 * (N_IN + N_IN * n_out + 2 * n_out)),
             KernelSpec("scale", (n_out,), None, [("buffer", 1), ("buffer", 5), ("float32", SCALE)], flops=n_out, bytes=8 * n_out),
             KernelSpec("argmax", (1,), (1,), [("buffer", 2), ("buffer", 1), ("int32", n_out)], flops=n_out, bytes=4 * n_out + 4)],
    arena_size=512 + 4 * n_out, align=align, weights=w.tobytes() + bytes(b_at - w.nbytes) + b.tobytes())


def reference(x: np.ndarray, n_out: int = 16) -> dict[str, np.ndarray]:
  w, b = weights(n_out)
  y = (np.maximum(w @ x[0] + b, 0) * np.float32(SCALE))[None]
  return {"y": y, "best": np.array([np.argmax(y)], np.int32)}
