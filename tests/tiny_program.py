"""A hand-written three-kernel program for the artifact and runtime tests, and its numpy reference.

x[1,8] -> h = relu(w @ x + b) (arena, at a nonzero offset) -> y = h * s (output) -> best = argmax(y) (int32 output).
"""
import numpy as np

from compiled.artifact import BufferSpec, KernelSpec, ProgramSpec, TensorSpec

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
N_IN, N_OUT, SCALE = 8, 16, 1.5


def weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return rng.standard_normal((N_OUT, N_IN), np.float32), rng.standard_normal(N_OUT, np.float32)


def tiny_spec(target: str = "pocl", align: int = 512) -> ProgramSpec:
  w, b = weights()
  blob = w.tobytes() + bytes(512 - w.nbytes) + b.tobytes()  # w at 0, b at 512
  return ProgramSpec(
    target=target, compiler_version="test-0", source=SOURCE, build_options="-cl-fast-relaxed-math",
    inputs=[TensorSpec("x", (1, N_IN), "float32", 0)],
    outputs=[TensorSpec("y", (1, N_OUT), "float32", 1), TensorSpec("best", (1,), "int32", 2)],
    buffers=[BufferSpec("input", 0, 4 * N_IN), BufferSpec("output", 0, 4 * N_OUT), BufferSpec("output", 0, 4),
             BufferSpec("weights", 0, w.nbytes), BufferSpec("weights", 512, b.nbytes), BufferSpec("arena", 512, 4 * N_OUT)],
    kernels=[KernelSpec("dense_relu", (N_OUT,), (8,), [("buffer", 5), ("buffer", 0), ("buffer", 3), ("buffer", 4), ("int32", N_IN)],
                        flops=2 * N_IN * N_OUT, bytes=4 * (N_IN + N_IN * N_OUT + 2 * N_OUT)),
             KernelSpec("scale", (N_OUT,), None, [("buffer", 1), ("buffer", 5), ("float32", SCALE)], flops=N_OUT, bytes=8 * N_OUT),
             KernelSpec("argmax", (1,), (1,), [("buffer", 2), ("buffer", 1), ("int32", N_OUT)], flops=N_OUT, bytes=4 * N_OUT + 4)],
    arena_size=512 + 4 * N_OUT, align=align, weights=blob)


def reference(x: np.ndarray) -> dict[str, np.ndarray]:
  w, b = weights()
  y = (np.maximum(w @ x[0] + b, 0) * np.float32(SCALE))[None]
  return {"y": y, "best": np.array([np.argmax(y)], np.int32)}
