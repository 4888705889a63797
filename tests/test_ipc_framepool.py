"""Frame pool across processes: zero-copy views, buffer reuse caught, server restart and cleanup.
Children are this file run as a script (see the role at the bottom)."""
import glob
import os
import sys

import numpy as np
import pytest

from ipc.framepool import SHM_DIR, FrameClient, FrameServer, pointer_path, pool_name, pool_path
from ipc.messaging import decode, new_message, sub_socket
from ipc.testing import Children, isolated_bus, read_command

W, H = 64, 48
FRAME_BYTES = W * H * 3 // 2


@pytest.fixture(autouse=True)
def children():
  """Every test on a private bus; the child processes it starts are killed at its end."""
  with isolated_bus(), Children() as start:
    yield start


def frame_number(client, n, timeout_ms=10000):
  """Receive until the frame filled with the value n arrives; None if it does not."""
  for _ in range(timeout_ms // 100):
    frame = client.recv(100)
    if frame is not None and frame.y[0, 0] == n:
      return frame
  return None


def test_bad_arguments():
  with pytest.raises(ValueError, match="buffers"):
    FrameServer("road", W, H, buffers=3)
  with pytest.raises(ValueError, match="even"):
    FrameServer("road", W, H + 1)
  with pytest.raises(ValueError, match="'rgb'.*nv12"):
    FrameServer("road", W, H, fmt="rgb")
  with pytest.raises(ValueError, match="unknown camera 'back'"):
    FrameServer("back", W, H)


def test_client_without_server_says_so():
  with pytest.raises(TimeoutError, match="no frame pool for camera 'road'.*FrameServer running"):
    FrameClient("road", timeout_s=0.1)


def test_notice_naming_no_buffer_is_counted_not_raised():
  with FrameServer("road", W, H, buffers=4) as server, FrameClient("road") as client:
    assert server.wait_for_client(10)
    bad = new_message(server.service, camera="road", poolId=server.pool.pool_id, bufferIndex=4, bufferSeq=1)
    server.pm.send(server.service, bad)
    assert client.recv(10000) is None and client.errors == 1
    server.send(np.full(FRAME_BYTES, 3, np.uint8))
    assert frame_number(client, 3) is not None


def test_notices_of_unknown_pools_do_not_remap_the_pool(monkeypatch):
  """A flood of notices naming pools that do not exist costs a stat each, not a mapping of the whole pool."""
  import ipc.framepool as framepool
  maps = []
  real_pool = framepool.Pool
  monkeypatch.setattr(framepool, "Pool", lambda *a, **k: maps.append(a) or real_pool(*a, **k))
  with FrameServer("road", W, H, buffers=4) as server, FrameClient("road") as client:
    assert server.wait_for_client(10)
    maps.clear()
    for pool_id in range(1, 21):
      server.pm.send(server.service, new_message(server.service, camera="road", poolId=pool_id, bufferIndex=0,
                                                 bufferSeq=1))
    assert client.recv(2000) is None and client.errors == 20 and maps == []
    server.send(filled(4))
    assert frame_number(client, 4) is not None


def filled(n):
  return np.full(FRAME_BYTES, n, np.uint8)


def all_arrived(service, count):
  """A queueing probe socket of `service`, returned once it has received `count` messages: the keep-latest
  sockets of this process, served by the same publisher, have them too by then."""
  probe = sub_socket(service)
  return probe, lambda: all(probe.poll(10000) and probe.recv() for _ in range(count))


def test_recv_gives_the_newest_frame_not_the_oldest_queued():
  with FrameServer("road", W, H, buffers=4) as server, FrameClient("road") as client:
    probe, arrived = all_arrived(server.service, 3)
    assert server.wait_for_client(10) and server.pm.wait_for_subscribers(server.service, 2, 10)
    for n in (1, 2, 3):  # three buffers of four: every one of them still holds its frame
      server.send(filled(n))
    assert arrived()
    assert client.sock.poll(10000)
    frame = client.recv(10000)
    assert frame is not None and frame.frame_id == 3 and frame.y[0, 0] == 3
    assert client.recv(0) is None  # the older two were superseded, not queued behind it
    probe.close()


def test_still_valid_turns_false_as_soon_as_the_server_starts_rewriting():
  with FrameServer("road", W, H, buffers=4) as server, FrameClient("road") as client:
    assert server.wait_for_client(10)
    server.send(filled(1))
    first = frame_number(client, 1)
    for n in (2, 3, 4):
      server.send(filled(n))
    assert first.still_valid()
    server.next_buffer()[:] = 9  # back at the first buffer: being rewritten, its end sequence still the old one
    assert not first.still_valid()
    assert first.y[0, 0] == 9


def test_view_refuses_a_notice_whose_buffer_was_reused():
  """A notice read late (its buffer rewritten since) gives no frame: never frame 1's id with frame 5's pixels."""
  with FrameServer("road", W, H, buffers=4) as server, FrameClient("road") as client:
    probe, arrived = all_arrived(server.service, 1)
    assert server.wait_for_client(10) and server.pm.wait_for_subscribers(server.service, 2, 10)
    server.send(filled(1))
    assert probe.poll(10000)
    late_notice = decode(server.service, probe.recv()).cameraFrame
    assert client.view(late_notice) is not None
    for n in (2, 3, 4, 5):
      server.send(filled(n))
    assert client.view(late_notice) is None and client.overwritten == 1
    probe.close()


def test_zero_copy_views_and_reuse_detected(children):
  server = children(__file__, "serve")
  server.expect("ready")
  with FrameClient("road") as client:
    server.tell("1")
    first = frame_number(client, 1)
    assert first is not None and first.still_valid()
    assert (first.y == 1).all() and (first.uv == 1).all() and first.y.shape == (H, W) and first.uv.shape == (H // 2, W)
    assert not first.y.flags.writeable and not first.y.flags.owndata
    for n in (2, 3, 4):  # the other three buffers
      server.tell(str(n))
      server.expect(f"sent {n}")
    assert first.still_valid()
    server.tell("5")  # back to the first buffer
    server.expect("sent 5")
    assert not first.still_valid()
    assert first.y[0, 0] == 5  # the view is the shared buffer itself: no copy was made


def test_restart_reattaches_and_clean_exit_removes_pool(children):
  crashed = children(__file__, "serve")
  crashed.expect("ready")
  with FrameClient("road") as client:
    crashed.tell("1")
    old = frame_number(client, 1)
    assert old is not None
    path = pool_path("road")
    with pytest.raises(RuntimeError, match="already served by pid"):
      FrameServer("road", W, H)
    crashed.kill()  # SIGKILL: no cleanup runs
    assert os.path.exists(path)  # a crash leaves the pool behind...
    restarted = children(__file__, "serve")
    restarted.expect("ready")  # ...and the next server removes it, in a pool of a new name
    assert not os.path.exists(path) and pool_path("road") != path
    restarted.tell("7")
    new = frame_number(client, 7)
    assert new is not None and new.pool is not old.pool and new.pool.pool_id != old.pool.pool_id
    assert old.y[0, 0] == 1  # the old frame still reads its own (now unlinked) pool
    assert restarted.stop() == 0
    assert not os.path.lexists(pointer_path("road"))
    assert glob.glob(os.path.join(SHM_DIR, pool_name("road") + "*")) == []


def serve():
  """A FrameServer for 'road'; each line n from the parent sends a frame filled with n."""
  server = FrameServer("road", W, H, buffers=4)
  print("ready", flush=True)
  server.wait_for_client(10)
  while True:
    if (line := read_command(10)) is not None:
      server.send(np.full(FRAME_BYTES, int(line), np.uint8))
      print(f"sent {line}", flush=True)


if __name__ == "__main__":
  {"serve": serve}[sys.argv[1]](*sys.argv[2:])
