"""compiled: the lean device runtime (numpy + pyopencl + pycapnp only; never imports the compiler).

    prog = compiled.load("model.edgeml")
    outputs = prog.run({"x": x})

`load` is imported on first use, so `import compiled` (done by anything importing compiled.device) stays cheap.
"""
__all__ = ["load"]


def __getattr__(name: str):
  if name == "load":
    from compiled.runtime import load
    return load
  raise AttributeError(f"module 'compiled' has no attribute {name!r}")
