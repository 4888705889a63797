"""The candidates an artifact carries for on-device tuning (edgeml-tune, compiled/tune.py).

`Recorder` wraps render's `choose` hook: it sees every kernel's rendered variants, lets the wrapped chooser (the
compile-time tuner, or none: the code generator's first) pick, and keeps for each kernel worth tuning (the
compile-time tuner's MIN_FLOPS rule) up to MAX_CANDIDATES others, in the code generator's order.
"""
from compiled.artifact import MAX_CANDIDATES, CandidateSpec
from edgeml.codegen import uses_long_helpers

MIN_FLOPS = 2_000_000   # kernels worth tuning (here and in edgeml/tune.py); smaller ones are not worth a build



class Recorder:
  def __init__(self, choose=None):
    self.choose = choose
    self.seen: dict[str, tuple[list, int]] = {}   # kernel name -> (its variants, the index chosen)

  def __call__(self, kernels) -> int:
    """`kernels`: render's variants in order (codegen's lazy Variants: only the variants that `candidates` looks at
    get rendered, unless a wrapped chooser is given: it gets them all, as a list, when there are two or more)."""
    if self.choose is not None: kernels = list(kernels)
    index = self.choose(kernels) if self.choose is not None and len(kernels) > 1 else 0
    self.seen[kernels[index].name] = (kernels, index)
    return index

  def candidates(self, kernel, program_source: str) -> list[CandidateSpec]:
    """The other variants of `kernel` worth carrying (none for a small kernel), each one that builds in a program
    whose helpers are those of `program_source`."""
    variants, index = self.seen.get(kernel.name, ([], 0))
    if kernel.flops < MIN_FLOPS: return []
    out = []
    for i, k in enumerate(variants):
      if i == index or k.source == kernel.source: continue
      if uses_long_helpers(k.source) and not uses_long_helpers(program_source): continue
      out.append(CandidateSpec(k.source, tuple(k.global_size), tuple(k.local_size) if k.local_size else None))
      if len(out) == MAX_CANDIDATES: break
    return out
