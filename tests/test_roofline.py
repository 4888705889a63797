"""compiled/roofline.py: the measured peaks are positive and finite, the benchmark kernels compute what their FLOP and
byte counts claim (checked against numpy), the roofline arithmetic on known counts, and the per-device cache (written
once, read back, remeasured keeping the better figures, not used where the cache folder is not writable)."""
import json
import math

import numpy as np
import pyopencl as cl
import pytest

from compiled import roofline
from compiled.device import default_device


def test_measured_peaks_are_positive_and_finite():
  p = roofline.measure(default_device(), budget=0.05)
  assert math.isfinite(p.flops) and p.flops > 0 and math.isfinite(p.bandwidth) and p.bandwidth > 0


def test_benchmark_kernels_compute_what_they_count():
  dev = default_device()
  program, n, iters, b, c = dev.build(roofline.SOURCE, roofline.OPTIONS), 64, 5, np.float32(0.999), np.float32(0.001)
  out = cl.Buffer(dev.ctx, cl.mem_flags.WRITE_ONLY, n * 4)
  cl.Kernel(program, "fma_peak")(dev.queue, (n,), None, out, b, c, np.int32(iters))
  got = np.empty(n, np.float32)
  cl.enqueue_copy(dev.queue, got, out)
  a = (np.arange(n) * 1e-6)[:, None] + np.arange(roofline.CHAINS)[None, :]  # every lane of a chain starts alike
  for _ in range(iters): a = a * float(b) + float(c)
  np.testing.assert_allclose(got, a.sum(axis=1) * roofline.WIDTH, rtol=1e-5)

  src = np.random.default_rng(0).standard_normal(1024).astype(np.float32)
  dst = np.zeros_like(src)
  bufs = [cl.Buffer(dev.ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=h) for h in (dst, src)]
  cl.Kernel(program, "copy_peak")(dev.queue, (src.size // 4,), None, *bufs)
  cl.enqueue_copy(dev.queue, dst, bufs[0])
  np.testing.assert_array_equal(dst, src)

  flag = np.full(1, 7, np.float32)  # the read kernel writes only where a float4 sums to -1: here the 3rd one
  src[8:12] = [-4, 1, 1, 1]
  bufs = [cl.Buffer(dev.ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=h) for h in (flag, src)]
  cl.Kernel(program, "read_peak")(dev.queue, (src.size // 4,), None, *bufs)
  cl.enqueue_copy(dev.queue, flag, bufs[0])
  assert flag[0] == -4


def test_roofline_arithmetic():
  peaks = roofline.Peaks(flops=100e9, bandwidth=10e9)
  assert roofline.bound_seconds(2e9, 1e9, peaks) == pytest.approx(0.1)  # memory bound: 1 GB at 10 GB/s
  assert roofline.bound_seconds(4e10, 1e9, peaks) == pytest.approx(0.4)  # compute bound: 40 GFLOP at 100 GFLOP/s
  assert roofline.fraction(0.4, 2e9, 1e9, peaks) == pytest.approx(0.25)
  assert roofline.fraction(0.4, 4e10, 1e9, peaks) == pytest.approx(1.0)
  assert roofline.fraction(0.0, 1, 1, peaks) == 0.0
  assert roofline.limit(2e9, 1e9, peaks) == "mem" and roofline.limit(4e10, 1e9, peaks) == "flop"
  for bad in (0.0, -1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="positive finite"): roofline.Peaks(bad, 1.0)


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setattr(roofline, "cache_dir", lambda: str(tmp_path))
  monkeypatch.setattr(roofline, "cache_writable", lambda: True)
  calls = []
  def fake_measure(device, budget=0.2):
    calls.append(device)
    return roofline.Peaks(*[(50e9, 5e9), (40e9, 8e9)][min(len(calls) - 1, 1)])
  monkeypatch.setattr(roofline, "measure", fake_measure)
  return calls


def test_peaks_are_measured_once_and_cached(cache):
  dev = default_device()
  first = roofline.peaks(dev)
  path = roofline.cache_path(dev)
  record = json.loads(open(path).read())
  assert record["flops"] == first.flops == 50e9 and record["driver"] == dev.dev.driver_version
  assert roofline.peaks(dev) == first and len(cache) == 1  # read back, not measured again
  assert roofline.peaks(dev, remeasure=True) == roofline.Peaks(50e9, 8e9) and len(cache) == 2  # the better of each
  assert roofline.peaks(dev) == roofline.Peaks(50e9, 8e9)


def test_a_damaged_cache_entry_is_measured_again(cache):
  dev = default_device()
  path = roofline.cache_path(dev)
  roofline.peaks(dev)
  for junk in ("not json", '{"flops": -1, "bandwidth": 3}', '{"flops": 1}', "[]"):
    open(path, "w").write(junk)
    assert roofline.peaks(dev).flops > 0
  assert len(cache) == 5


def test_no_cache_where_the_folder_is_not_writable(cache, tmp_path, monkeypatch):
  monkeypatch.setattr(roofline, "cache_writable", lambda: False)
  dev = default_device()
  roofline.peaks(dev), roofline.peaks(dev)
  assert len(cache) == 2 and not list(tmp_path.iterdir())
