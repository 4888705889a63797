"""Squatting and hijack attempts by another local user: a runtime directory or pool file created first by someone
else, too open, or a symbolic link. Each is refused with one line naming the path; nothing another user owns is
used or removed. "Another user" is a chown to an unused uid (needs root; skipped otherwise)."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from ipc import framepool
from ipc.framepool import SHM_DIR, FrameClient, FrameServer, pointer_path, pool_name
from ipc.messaging import PubMaster, SubMaster, new_message
from ipc.rundir import UnsafePath
from ipc.services import runtime_dir
from ipc.testing import isolated_bus, update_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHER_UID = 4242
W, H = 16, 8
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="simulating another user needs chown (root)")


@pytest.fixture(autouse=True)
def bus(monkeypatch):
  monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
  with isolated_bus() as prefix:
    yield prefix


def squat_dir(mode=0o777, uid=OTHER_UID):
  os.makedirs(os.path.dirname(runtime_dir()), exist_ok=True)
  os.mkdir(runtime_dir())
  os.chmod(runtime_dir(), mode)
  os.chown(runtime_dir(), uid, -1)


def squat_file(path, mode=0o600, uid=OTHER_UID, data=b""):
  with open(path, "wb") as f:
    f.write(data)
  os.chmod(path, mode)
  os.chown(path, uid, -1)


def refusals(match):
  """Every way into the bus, each expected to refuse with UnsafePath matching `match`."""
  for start in (lambda: PubMaster(["robotState"]), lambda: SubMaster(["robotState"]),
                lambda: FrameServer("road", W, H), lambda: FrameClient("road", timeout_s=0.2)):
    with pytest.raises(UnsafePath, match=match):
      start()


def test_runtime_dir_is_never_in_a_shared_directory(monkeypatch):
  assert not runtime_dir().startswith("/tmp/") and runtime_dir().startswith(os.path.expanduser("~") + "/")
  monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
  assert runtime_dir().startswith("/run/user/1234/edgeml-")


@needs_root
def test_runtime_dir_of_another_user_is_refused():
  squat_dir()
  refusals(rf"{runtime_dir()} belongs to uid {OTHER_UID}, not to us")
  assert os.listdir(runtime_dir()) == []  # nothing bound or created in it


def test_runtime_dir_open_to_others_is_refused():
  squat_dir(mode=0o755, uid=os.geteuid())
  refusals("has mode 0755, open to other users")


def test_runtime_dir_that_is_a_symbolic_link_is_refused(tmp_path):
  os.makedirs(os.path.dirname(runtime_dir()), exist_ok=True)
  (tmp_path / "elsewhere").mkdir(mode=0o700)
  os.symlink(tmp_path / "elsewhere", runtime_dir())
  refusals("is a symbolic link")


@needs_root
def test_pool_files_of_another_user_are_neither_used_nor_removed():
  """A pool file named like ours (the old fixed name, or a random-looking one) planted by another user does not
  stop the server and is left alone; a pointer to it, or to any other file, is refused by clients."""
  planted = [os.path.join(SHM_DIR, pool_name("road")), os.path.join(SHM_DIR, pool_name("road") + "-" + "ab" * 8)]
  for path in planted:
    squat_file(path, mode=0o666)
  try:
    with FrameServer("road", W, H) as server, FrameClient("road") as client:
      assert server.wait_for_client(10)
      server.send(np.full(W * H * 3 // 2, 5, np.uint8))
      frame = client.recv(10000)
      assert frame is not None and frame.y[0, 0] == 5 and frame.pool.inode == server.pool.inode
    assert all(os.path.exists(p) for p in planted)
    for target, match in ((planted[1], f"belongs to uid {OTHER_UID}"), ("/etc/passwd", "not to a frame pool")):
      os.symlink(target, pointer_path("road"))
      with pytest.raises(UnsafePath, match=match):
        FrameClient("road", timeout_s=0.2)
      os.unlink(pointer_path("road"))
  finally:
    for path in planted:
      os.unlink(path)


def test_pool_file_open_to_others_or_a_link_is_refused():
  with FrameServer("road", W, H) as server:
    os.chmod(server.path, 0o644)
    with pytest.raises(UnsafePath, match="has mode 0644"):
      FrameClient("road", timeout_s=0.2)
    os.chmod(server.path, 0o600)
    link = os.path.join(SHM_DIR, pool_name("road") + "-" + "cd" * 8)
    os.symlink(server.path, link)
    try:
      os.unlink(pointer_path("road"))
      os.symlink(link, pointer_path("road"))
      with pytest.raises(UnsafePath, match="is a symbolic link"):
        FrameClient("road", timeout_s=0.2)
    finally:
      os.unlink(link)


def test_stale_socket_and_pool_files_of_ours_are_cleaned_at_start():
  os.makedirs(runtime_dir(), mode=0o700)
  stale_socket = os.path.join(runtime_dir(), "robotState")
  with socket.socket(socket.AF_UNIX) as s:
    s.bind(stale_socket)  # closed without unlink: what a killed publisher leaves
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  stale_pool = os.path.join(SHM_DIR, pool_name("road") + "-" + "ef" * 8)
  header = framepool.HEADER.pack(framepool.MAGIC, framepool.VERSION, 0, W, H, W, 4, framepool.PAGE, 1,
                                 int(dead.stdout))
  fd = os.open(stale_pool, os.O_CREAT | os.O_WRONLY, 0o600)
  os.write(fd, header)
  os.close(fd)
  with PubMaster(["robotState"]) as pm, SubMaster(["robotState"]) as sm:
    assert pm.wait_for_subscribers("robotState", 1, 10)
    pm.send("robotState", new_message("robotState", vEgo=2.0))
    assert update_until(sm, lambda: sm["robotState"].vEgo == 2.0)
  with FrameServer("road", W, H) as server:
    assert server.stale_removed == [stale_pool] and not os.path.exists(stale_pool)


@needs_root
def test_camerad_refuses_a_squatted_bus_in_one_line():
  squat_dir()
  done = subprocess.run([sys.executable, "-m", "tools.camerad", "--size", "16x8", "--frames", "1"], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
  assert done.returncode != 0 and "Traceback" not in done.stderr
  assert done.stderr.strip().splitlines() == [f"edgeml-camerad: {runtime_dir()} belongs to uid {OTHER_UID}, not to us "
                                              f"(uid {os.geteuid()}): refusing to use it (remove it)"]
