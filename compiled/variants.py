"""Kernel candidates and the choice table: which rendering of each kernel a device runs.

An artifact may carry, for each kernel worth tuning, up to three other renderings (compiled/artifact.py
CandidateSpec: the whole `__kernel` function under the same name and its launch sizes) and a table of choices keyed
by (device name, driver version) that edgeml-tune (compiled/tune.py) measured on that device. `variant` gives the
program a device runs: the artifact's source with each picked candidate's function spliced in place of the kernel's,
and the kernels with the candidate's launch sizes. A device without a choice runs the artifact's own source.
"""
from dataclasses import replace

from compiled.artifact import ChoiceSpec, KernelSpec, ProgramSpec
from compiled.kernelsig import function_span


def device_key(dev) -> tuple[str, str]:
  """(device name, driver version) of a pyopencl device: the key of the choice table."""
  from compiled.device import describe
  return describe(dev), dev.driver_version


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
