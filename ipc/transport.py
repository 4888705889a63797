"""Security of the TCP transport (EDGEML_BUS_HOST): CURVE with key files, no open bind without being told.

EDGEML_BUS_KEYS names a private directory (ours, mode 0700) made by `edgeml-bus keys DIR` (create_keys):
    server.key, server.key_secret   the publishers' keypair; subscribers read server.key
    client.key, client.key_secret   the subscribers' keypair
With it, every TCP socket speaks CURVE (pyzmq's built-in): messages are encrypted, and a publisher accepts only
clients whose public key is a *.key file in that directory (a ZAP handler thread per process). Without it, a
publisher refuses to bind anything but a loopback address unless EDGEML_BUS_INSECURE=1.

Every TCP publisher closes a connection that has not finished its handshake within HANDSHAKE_MS, and the process's
open-file limit is raised to its hard limit, so a flood of idle connections cannot use up the descriptors that real
subscribers need.
"""
import atexit
import ipaddress
import os
import resource
import threading

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from ipc.rundir import UnsafePath, private_dir

HANDSHAKE_MS = 2000
_lock = threading.Lock()
_authenticator = None


def keys_dir() -> str | None:
  return os.environ.get("EDGEML_BUS_KEYS") or None


def insecure() -> bool:
  return os.environ.get("EDGEML_BUS_INSECURE", "") not in ("", "0")


def is_loopback(host: str) -> bool:
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host.strip("[]")).is_loopback
  except ValueError:
    return False  # a host name: it may resolve to anything


def create_keys(folder: str) -> None:
  """Make the key directory (mode 0700) with a server and a client keypair."""
  private_dir(os.path.abspath(folder))
  for name in ("server", "client"):
    zmq.auth.create_certificates(folder, name)
    os.chmod(os.path.join(folder, f"{name}.key_secret"), 0o600)


def _keypair(folder: str, name: str):
  try:
    public, secret = zmq.auth.load_certificate(os.path.join(folder, f"{name}.key_secret"))
  except (OSError, ValueError) as e:
    raise UnsafePath(f"EDGEML_BUS_KEYS={folder}: no {name} keypair ({e}); make one with `edgeml-bus keys {folder}`")
  return public, secret


def _checked_keys() -> str | None:
  folder = keys_dir()
  if folder is not None:
    private_dir(os.path.abspath(folder))  # refuses a key directory that others can read or that is not ours
  return folder


def _raise_file_limit() -> None:
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  if hard == resource.RLIM_INFINITY or soft < hard:
    try:
      resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 65536), hard))
    except (ValueError, OSError):
      pass


def secure_publisher(sock: zmq.Socket, address: str) -> None:
  """Set up a publisher socket about to bind `address` (tcp://HOST:PORT); UnsafePath if it may not."""
  global _authenticator
  host = address.removeprefix("tcp://").rsplit(":", 1)[0]
  folder = _checked_keys()
  if folder is None and not is_loopback(host) and not insecure():
    raise UnsafePath(f"refusing to publish on {address} without authentication: anyone who reaches it could read "
                     f"the bus and send on it. Set EDGEML_BUS_KEYS to a key directory (edgeml-bus keys DIR), "
                     f"or EDGEML_BUS_INSECURE=1 on a network you trust")
  sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
  _raise_file_limit()
  if folder is None:
    return
  public, secret = _keypair(folder, "server")
  with _lock:
    if _authenticator is None:
      _authenticator = ThreadAuthenticator(zmq.Context.instance())
      _authenticator.start()
      atexit.register(_authenticator.stop)  # before pyzmq terminates the context at exit
    _authenticator.configure_curve(domain="*", location=os.path.abspath(folder))  # the keys as they are now
  sock.curve_server = True
  sock.curve_publickey, sock.curve_secretkey = public, secret


def secure_subscriber(sock: zmq.Socket) -> None:
  """Set up a subscriber socket about to connect over TCP: CURVE when EDGEML_BUS_KEYS is set."""
  folder = _checked_keys()
  if folder is None:
    return
  try:
    server_public, _ = zmq.auth.load_certificate(os.path.join(folder, "server.key"))
  except (OSError, ValueError) as e:
    raise UnsafePath(f"EDGEML_BUS_KEYS={folder}: no server public key ({e}); make one with `edgeml-bus keys {folder}`")
  sock.curve_serverkey = server_public
  sock.curve_publickey, sock.curve_secretkey = _keypair(folder, "client")
