"""The model config: how modeld fills each input of an artifact. A JSON file next to it (NAME.modeld.json for
NAME.edgeml; docs/modeld.md):

  {"inputs": {"input_imgs": {"source": "road", "layout": "yuv6", "frames": 2},   # camera frames, warped on device
              "desire":     {"source": "zeros"},                                 # held at zero
              "state":      {"recurrent": "state_out"}},                         # last frame's output, on device
   "requires_calibration": false}                                                # outputs invalid until calibrated

An image input's resolution comes from its shape: (1, 12, 128, 256) in yuv6 is two frames of a 256x512 warped image
(compiled/preprocess.py has the layouts). "frames" may be left out; when given it must match the shape.

The default name was NAME.json until it met the natural trace name of `edgeml-profile --trace NAME.json`; that name is
no longer read (a trace would be taken for a broken config): a missing config whose old name exists says to rename it.
Device-side and bus-free: the camera names a source may use are given by the caller (modeld passes the bus's).
"""
import json
import os
from dataclasses import dataclass, field
from typing import Iterable

from compiled.preprocess import LAYOUTS, image_size

SUFFIX = ".modeld.json"
LEGACY_SUFFIX = ".json"


@dataclass(frozen=True)
class ImageInput:
  name: str
  camera: str
  layout: str
  shape: tuple[int, ...]


@dataclass
class ModelConfig:
  images: list[ImageInput] = field(default_factory=list)
  zeros: list[str] = field(default_factory=list)
  recurrent: dict[str, str] = field(default_factory=dict)  # input name -> the output fed back into it
  requires_calibration: bool = False

  @property
  def cameras(self) -> list[str]:
    """The cameras read, each once, in the order of first use (the first one paces the daemon)."""
    return list(dict.fromkeys(i.camera for i in self.images))


def config_path(artifact: str | os.PathLike) -> str:
  """The default config of an artifact (or of the model it is compiled from): model.edgeml -> model.modeld.json."""
  return os.path.splitext(os.fspath(artifact))[0] + SUFFIX


def load_config(path: str | os.PathLike, inputs, outputs, cameras: Iterable[str] | None = None) -> ModelConfig:
  """Read and check the config at `path` against the program's input and output TensorSpecs; ValueError says what
  does not fit. `cameras`: the camera names a source may use (None: any name)."""
  path, cameras = os.fspath(path), None if cameras is None else list(cameras)
  try:
    with open(path) as f: raw = json.load(f)
  except FileNotFoundError:
    legacy = path.removesuffix(SUFFIX) + LEGACY_SUFFIX
    if path.endswith(SUFFIX) and os.path.exists(legacy):
      raise ValueError(f"no model config at {path}; {legacy} is there, but that old default name is no longer read "
                       f"(it is also what `edgeml-profile --trace` writes): rename it to {path} or pass "
                       f"--config {legacy}") from None
    raise ValueError(f"no model config at {path}; write one, for example:\n"
                     f"{json.dumps(_example(inputs), indent=1)}") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: cannot read the model config: {e}") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not JSON: {e}") from None
  if not isinstance(raw, dict) or not isinstance(raw.get("inputs", {}), dict):
    raise ValueError(f'{path}: expected an object {{"inputs": {{INPUT: ENTRY, ...}}, ...}}, as in:\n'
                     f'{json.dumps(_example(inputs), indent=1)}')
  entries, specs, outs = raw.get("inputs", {}), {t.name: t for t in inputs}, {t.name: t for t in outputs}
  if missing := [n for n in specs if n not in entries]: raise ValueError(f"{path}: no entry for inputs {missing}")
  if extra := [n for n in entries if n not in specs]:
    raise ValueError(f"{path}: the artifact has no inputs {extra}; it has {list(specs)}")
  config = ModelConfig(requires_calibration=bool(raw.get("requires_calibration", False)))
  for name, entry in entries.items():
    spec, where = specs[name], f"{path}: input {name!r}"
    if not isinstance(entry, dict): raise ValueError(f"{where}: the entry must be an object, not {entry!r}")
    if "recurrent" in entry:
      out = outs.get(entry["recurrent"]) if isinstance(entry["recurrent"], str) else None
      if out is None or out.shape != spec.shape or out.dtype != spec.dtype:
        raise ValueError(f"{where}: recurrent output {entry['recurrent']!r} must be an output of the same shape "
                         f"and dtype {spec.dtype}{list(spec.shape)}; outputs: {list(outs)}")
      config.recurrent[name] = entry["recurrent"]
    elif entry.get("source") == "zeros":
      config.zeros.append(name)
    elif "source" in entry:
      if cameras is not None and entry["source"] not in cameras:
        raise ValueError(f"{where}: unknown camera {entry['source']!r}; known cameras: {', '.join(cameras)}")
      try:
        frames, _, _ = image_size(entry.get("layout", ""), spec.shape)
      except ValueError as e: raise ValueError(f"{where}: {e}") from None
      if entry.get("frames", frames) != frames:
        raise ValueError(f"{where}: frames={entry['frames']}, but the shape {spec.shape} holds {frames}")
      if spec.dtype != "float32": raise ValueError(f"{where}: an image input must be float32, not {spec.dtype}")
      config.images.append(ImageInput(name, entry["source"], entry["layout"], tuple(spec.shape)))
    else:
      raise ValueError(f"{where}: give a camera source with a layout ({', '.join(LAYOUTS)}), source 'zeros', "
                       f"or recurrent: OUTPUT")
  if not config.images: raise ValueError(f"{path}: no input reads a camera")
  return config


def _example(inputs) -> dict:
  return {"inputs": {t.name: {"source": "road", "layout": "yuv6"} if len(t.shape) == 4 else {"source": "zeros"}
                     for t in inputs}, "requires_calibration": False}
