"""The model config: how modeld fills each input of an artifact. A JSON file next to it (NAME.json for NAME.edgeml):

  {"inputs": {"input_imgs": {"source": "road", "layout": "yuv6", "frames": 2},   # camera frames, warped on device
              "desire":     {"source": "zeros"},                                 # held at zero
              "state":      {"recurrent": "state_out"}},                         # last frame's output, on device
   "requires_calibration": false}                                                # outputs invalid until calibrated

An image input's resolution comes from its shape: (1, 12, 128, 256) in yuv6 is two frames of a 256x512 warped image
(compiled/preprocess.py has the layouts). "frames" may be left out; when given it must match the shape.
"""
import json
import os
from dataclasses import dataclass, field

from compiled.preprocess import LAYOUTS, image_size
from ipc.services import camera_service


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


def config_path(artifact: str) -> str:
  return os.path.splitext(artifact)[0] + ".json"


def load_config(path: str, inputs, outputs) -> ModelConfig:
  """Read and check the config at `path` against the program's input and output TensorSpecs; ValueError says what
  does not fit."""
  try:
    with open(path) as f: raw = json.load(f)
  except FileNotFoundError:
    raise ValueError(f"no model config at {path}; write one, for example:\n{json.dumps(_example(inputs), indent=1)}")
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
      out = outs.get(entry["recurrent"])
      if out is None or out.shape != spec.shape or out.dtype != spec.dtype:
        raise ValueError(f"{where}: recurrent output {entry['recurrent']!r} must be an output of the same shape "
                         f"and dtype {spec.dtype}{list(spec.shape)}; outputs: {list(outs)}")
      config.recurrent[name] = entry["recurrent"]
    elif entry.get("source") == "zeros":
      config.zeros.append(name)
    elif "source" in entry:
      try:
        camera_service(entry["source"])
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
