"""How a subscriber judges one service: alive (heard from lately) and freq_ok (publishing at its rate).

The rate is measured from the publisher's own stamps, (seq, logMonoTime), not from arrival times:
a keep-latest subscriber polled at 20 Hz sees only a fifth of a 100 Hz service, yet the seq
numbers it does see still say how many messages were sent in how long.
"""
from collections import deque

ALIVE_PERIODS = 10        # alive: a message within this many periods
FREQ_TOLERANCE = 0.2      # freq_ok: measured rate within 0.8x..1.2x of the declared one
MIN_SAMPLES = 3


class ServiceHealth:
  def __init__(self, rate_hz: float):
    self.rate_hz = rate_hz
    self.window_s = max(1.0, 5.0 / rate_hz)
    self.samples = deque()  # (recv_time_s, seq, log_mono_ns) of messages received within the window
    self.recv_time = 0.0

  def add(self, recv_time: float, seq: int, log_mono_ns: int):
    self.recv_time = recv_time
    if self.samples and seq <= self.samples[-1][1]:
      self.samples.clear()  # the publisher restarted: its counter began again
    self.samples.append((recv_time, seq, log_mono_ns))
    while recv_time - self.samples[0][0] > self.window_s:
      self.samples.popleft()

  def alive(self, now: float) -> bool:
    return self.recv_time > 0 and now - self.recv_time < ALIVE_PERIODS / self.rate_hz

  def measured_rate(self) -> float | None:
    """Messages per second the publisher sent over the window, or None before enough were seen."""
    if len(self.samples) < MIN_SAMPLES:
      return None
    (_, seq0, t0), (_, seq1, t1) = self.samples[0], self.samples[-1]
    return (seq1 - seq0) * 1e9 / (t1 - t0) if t1 > t0 else None

  def freq_ok(self, now: float) -> bool:
    rate = self.measured_rate()
    low, high = (1 - FREQ_TOLERANCE) * self.rate_hz, (1 + FREQ_TOLERANCE) * self.rate_hz
    return self.alive(now) and rate is not None and low <= rate <= high
