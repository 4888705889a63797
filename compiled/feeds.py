"""Reproducible random inputs for an artifact's (or a model's) input specs: what edgeml-validate and the tests feed
a model when no recorded inputs are given. numpy only, so the compiler, the runtime side and the tools can share it."""
import numpy as np


def random_feeds(specs, seed: int = 0) -> dict:
  """{name: array} for specs with .name, .shape, .dtype: floats standard normal, bools fair coins, ints in 0..9."""
  rng = np.random.default_rng(seed)
  feeds = {}
  for s in specs:
    dtype = np.dtype(s.dtype)
    if dtype.kind == "f": feeds[s.name] = rng.standard_normal(s.shape).astype(dtype)
    elif dtype.kind == "b": feeds[s.name] = rng.random(s.shape) < 0.5
    else: feeds[s.name] = rng.integers(0, 10, s.shape).astype(dtype)
  return feeds
