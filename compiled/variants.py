"""Kernel candidates and the choice table: which rendering of each kernel a device runs.

An artifact may carry, for each kernel worth tuning, up to three other renderings (compiled/artifact.py
CandidateSpec: the whole `__kernel` function under the same name and its launch sizes) and a table of choices keyed
by (device name, driver version) that edgeml-tune (compiled/tune.py) measured on that device. `variant` gives the
program a device runs: the artifact's source with each picked candidate's function spliced in place of the kernel's,
and the kernels with the candidate's launch sizes. A device without a choice runs the artifact's own source.
"""
import re
from dataclasses import replace

from compiled.artifact import ChoiceSpec, KernelSpec, ProgramSpec

_HEAD = r"\b(?:__)?kernel\s+(?:__attribute__\s*\(\([^;{{]*?\)\)\s*)*void\s+{name}\s*\("


def device_key(dev) -> tuple[str, str]:
  """(device name, driver version) of a pyopencl device: the key of the choice table."""
  from compiled.device import describe
  return describe(dev), dev.driver_version


def function_span(source: str, name: str) -> tuple[int, int] | None:
  """(start, end) of the `__kernel` function `name` in `source`: from its qualifier to its closing brace."""
  m = re.search(_HEAD.format(name=re.escape(name)), source)
  if m is None: return None
  depth, at = 0, source.find("{", m.end())
  if at < 0: return None
  for b in re.finditer(r"[{}]", source[at:]):
    depth += 1 if b.group() == "{" else -1
    if depth == 0: return m.start(), at + b.end()
  return None


def choice_for(spec: ProgramSpec, key: tuple[str, str]) -> ChoiceSpec | None:
  """The recorded choice of the device `key` (device_key), or None."""
  return next((c for c in spec.choices if (c.device, c.driver) == key), None)


def variant(spec: ProgramSpec, picks: list[int]) -> tuple[str, list[KernelSpec]]:
  """The program source and kernels with kernel i replaced by its candidate picks[i] (0: the kernel itself)."""
  source, kernels = spec.source, list(spec.kernels)
  for i, (pick, k) in enumerate(zip(picks, spec.kernels)):
    if not pick: continue
    c = k.candidates[pick - 1]
    start, end = function_span(source, k.name)
    source = source[:start] + c.source.strip() + source[end:]
    kernels[i] = replace(k, global_size=c.global_size, local_size=c.local_size)
  return source, kernels


def record(spec: ProgramSpec, choice: ChoiceSpec) -> ProgramSpec:
  """`spec` with `choice` replacing any choice of the same (device, driver); the table sorted by that key, so
  tuning again gives the same layout."""
  others = [c for c in spec.choices if (c.device, c.driver) != (choice.device, choice.driver)]
  return replace(spec, choices=sorted([*others, choice], key=lambda c: (c.device, c.driver)))
