"""edgeml-camerad: publishes NV12 camera frames through the frame pool at a fixed rate.

  edgeml-camerad [--cameras road,wideRoad] [--rate 20] [--size 1928x1208] [--video clip.y4m | clip.nv12] [--frames N]

The default source is a synthetic moving scene, the same for a given (camera, frame id, size) in every run, so a test
can re-create any frame (`synthetic_frame`). A video file (.y4m 4:2:0, or raw NV12 frames of --size) plays in a loop.
Every camera publishes the same frame id per tick, with start- and end-of-frame timestamps. --skip lists frame ids
never published (an injected drop). SIGINT/SIGTERM stop it and remove its pools from /dev/shm.
"""
import argparse
import functools
import signal
import sys
import time

import numpy as np

from ipc.framepool import FrameServer

SCROLL = 7  # rows per frame the scene moves


def parse_size(text: str) -> tuple[int, int]:
  try:
    width, height = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None
  return width, height


@functools.cache
def _scene(camera: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
  """A tall Y texture (sky, road, two lines of lane dashes, noise) and UV texture that the frames scroll through."""
  rng = np.random.default_rng(sum(map(ord, camera)))
  rows, cols = np.mgrid[0:height + SCROLL * 128, 0:width].astype(np.float32)
  sky = rows < height * 0.4
  dash = ~sky & ((rows // 24) % 2 == 0) & (np.abs(np.abs(cols - width / 2) - width / 6) < width / 80)
  luma = np.where(sky, 170 + 40 * np.sin(cols / 37), np.where(dash, 230, 90 + 10 * np.sin(rows / 5)))
  y = np.clip(luma + rng.normal(0, 6, luma.shape), 0, 255).astype(np.uint8)
  uv = np.empty((rows.shape[0] // 2, width), np.uint8)
  uv[:, 0::2] = 128 + 20 * np.sin(rows[0::2, 0::2] / 29)
  uv[:, 1::2] = 128 + 20 * np.cos(cols[0::2, 0::2] / 41)
  return y, uv


def synthetic_frame(frame_id: int, width: int, height: int, camera: str = "road") -> np.ndarray:
  """Frame `frame_id` of the synthetic scene: NV12 bytes (Y rows, then interleaved UV rows), stride = width."""
  out = np.empty(width * height * 3 // 2, np.uint8)
  write_synthetic(out, frame_id, width, height, camera)
  return out


def write_synthetic(out: np.ndarray, frame_id: int, width: int, height: int, camera: str) -> None:
  y, uv = _scene(camera, width, height)
  shift = (frame_id * SCROLL) % (y.shape[0] - height) // 2 * 2  # even, so Y and UV stay aligned
  out[:width * height] = y[shift:shift + height].reshape(-1)
  out[width * height:] = uv[shift // 2:shift // 2 + height // 2].reshape(-1)


class VideoFile:
  """Frames of a .y4m (4:2:0) or raw NV12 file, as NV12, in a loop."""
  def __init__(self, path: str, size: tuple[int, int] | None):
    try: self.f = open(path, "rb")
    except OSError as e: raise SystemExit(f"edgeml-camerad: --video {path}: {e.strerror}") from None
    self.y4m = self.f.read(10) == b"YUV4MPEG2 "
    self.f.seek(0)
    if self.y4m:
      header = self.f.readline().split()
      fields = {t[:1]: t[1:] for t in header[1:]}
      if not fields.get(b"C", b"420").startswith(b"420"):
        raise SystemExit(f"edgeml-camerad: {path}: only 4:2:0 y4m is supported, not C{fields[b'C'].decode()}")
      self.width, self.height = int(fields[b"W"]), int(fields[b"H"])
    elif size is None:
      raise SystemExit("edgeml-camerad: a raw NV12 file needs --size WIDTHxHEIGHT")
    else:
      self.width, self.height = size
    self.start, self.nbytes = self.f.tell(), self.width * self.height * 3 // 2

  def read(self, out: np.ndarray) -> None:
    for _ in range(2):  # from the start once more when the file ends
      if self.y4m and not self.f.readline().startswith(b"FRAME"):
        self.f.seek(self.start)
        continue
      data = self.f.read(self.nbytes)
      if len(data) == self.nbytes: break
      self.f.seek(self.start)
    else:
      raise SystemExit("edgeml-camerad: the video holds no whole frame")
    pixels = np.frombuffer(data, np.uint8)
    area = self.width * self.height
    out[:area] = pixels[:area]
    if self.y4m:  # planar U then V -> interleaved UV
      chroma = out[area:].reshape(self.height // 2, self.width)
      chroma[:, 0::2] = pixels[area:area + area // 4].reshape(self.height // 2, self.width // 2)
      chroma[:, 1::2] = pixels[area + area // 4:].reshape(self.height // 2, self.width // 2)
    else:
      out[area:] = pixels[area:]


def main(argv=None):
  ap = argparse.ArgumentParser(prog="edgeml-camerad", description=__doc__.split("\n\n")[0])
  ap.add_argument("--cameras", default="road", help="comma-separated: road, wideRoad (default road)")
  ap.add_argument("--rate", type=float, default=20.0, help="frames per second (default 20)")
  ap.add_argument("--size", type=parse_size, help="WIDTHxHEIGHT (synthetic default 1928x1208)")
  ap.add_argument("--video", help="a .y4m or raw NV12 file, played in a loop (every camera shows it)")
  ap.add_argument("--frames", type=int, default=0, help="stop after this many frame ids (default: run until killed)")
  ap.add_argument("--skip", default="", help="comma-separated frame ids not to publish (injected drops)")
  ap.add_argument("--wait-client", type=float, default=0.0, metavar="S",
                  help="wait up to S seconds for a subscriber of every camera before the first frame")
  args = ap.parse_args(argv)
  if args.rate <= 0: ap.error(f"--rate must be positive, got {args.rate:g}")
  stop = []
  for sig in (signal.SIGINT, signal.SIGTERM): signal.signal(sig, lambda *_: stop.append(1))
  video = VideoFile(args.video, args.size) if args.video else None
  width, height = (video.width, video.height) if video else args.size or (1928, 1208)
  skip = {int(v) for v in args.skip.split(",") if v}
  servers = []
  try:
    for name in args.cameras.split(","): servers.append(FrameServer(name, width, height))
    if not video:
      for server in servers: _scene(server.camera, width, height)  # built now, not inside the first tick
    deadline = time.monotonic() + args.wait_client
    for server in servers if args.wait_client else ():
      if not server.wait_for_client(max(0.0, deadline - time.monotonic())):
        print(f"camerad: no subscriber of {server.camera} after {args.wait_client} s, publishing anyway",
              file=sys.stderr)
    print(f"camerad: {args.cameras} {width}x{height} at {args.rate} Hz, "
          f"{'video ' + args.video if video else 'synthetic scene'}", flush=True)
    period, start, frame_id, published = 1.0 / args.rate, time.monotonic(), 0, 0
    while not stop and (not args.frames or frame_id < args.frames):
      time.sleep(max(0.0, start + frame_id * period - time.monotonic()))
      if frame_id not in skip:
        for server in servers:
          sof = time.monotonic_ns()
          buf = server.next_buffer()
          if not video: write_synthetic(buf, frame_id, width, height, server.camera)
          elif server is servers[0]: video.read(buf)
          else: buf[:] = servers[0].pool.buffer(servers[0].index)
          server.publish(frame_id, timestamp_sof=sof)
        published += 1
      frame_id += 1
    print(f"camerad: published {published} frames", flush=True)
  except (ValueError, RuntimeError, OSError) as e:
    raise SystemExit(f"edgeml-camerad: {e}")
  finally:
    for server in servers: server.close()


if __name__ == "__main__":
  main()
