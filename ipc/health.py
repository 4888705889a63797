"""How a subscriber judges one service: alive (heard from lately) and freq_ok (publishing at its rate).

The rate is measured from the publisher's own stamps, (seq, logMonoTime), not from arrival times:
a keep-latest subscriber polled at 20 Hz sees only a fifth of a 100 Hz service, yet the seq
numbers it does see still say how many messages were sent in how long.
"""
ALIVE_PERIODS = 10        # alive: a message within this many periods
FREQ_TOLERANCE = 0.2      # freq_ok: measured rate within 0.8x..1.2x of the declared one


class ServiceHealth:
  """alive: now - recv_time < alive_s. freq_ok: alive and rate_ok. The rate is the average over the last
  whole window; each message costs a few comparisons, since this runs in every subscriber's receive path."""

  def __init__(self, rate_hz: float):
    self.rate_hz = rate_hz
    self.alive_s = ALIVE_PERIODS / rate_hz
    self.window_ns = int(max(1.0, 5.0 / rate_hz) * 1e9)  # at least five messages
    self.recv_time = -1e18  # time.monotonic() of the last message
    self.anchor = None      # (seq, logMonoTime) where the current window began
    self.rate = None        # messages per second over the last whole window
    self.rate_ok = False

  def add(self, recv_time: float, seq: int, log_mono_ns: int):
    self.recv_time = recv_time
    if self.anchor is None or seq <= self.anchor[0]:
      self.anchor, self.rate, self.rate_ok = (seq, log_mono_ns), None, False  # first, or the publisher restarted
    elif log_mono_ns - self.anchor[1] >= self.window_ns:
      self.rate = (seq - self.anchor[0]) * 1e9 / (log_mono_ns - self.anchor[1])
      self.rate_ok = abs(self.rate - self.rate_hz) <= FREQ_TOLERANCE * self.rate_hz
      self.anchor = (seq, log_mono_ns)
