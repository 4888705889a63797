"""ONNX front end: an ONNX graph becomes a lazy edgeml Tensor graph.

Values flow through the graph as numpy arrays while they depend only on constants (initializers, Constant nodes,
shapes), and as Tensors once they touch a graph input. Nodes whose inputs are all constant are evaluated with numpy
when the model is loaded, so Reshape/Slice/Pad and friends see static arguments. One rewrite runs on the numpy
weights: a BatchNormalization after a Conv whose output nothing else reads is folded into the Conv's weights.

The op implementations live in edgeml/onnx_ops.py (a dispatch table from op type to a short function).
"""
from __future__ import annotations
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np
import onnx
from onnx import numpy_helper
from edgeml.tensor import Tensor
from edgeml.onnx_ops import OPS, Call, NotFoldable, attribute_value, onnx_dtype


@dataclass
class GraphNode:
  op: str
  name: str
  inputs: list
  outputs: list
  attrs: dict = field(default_factory=dict)


class OnnxModel:
  """Load an ONNX model (path or ModelProto); `shapes` fixes the dims of graph inputs that are symbolic."""

  def __init__(self, model, shapes: dict | None = None):
    if isinstance(model, (str, Path)): model = onnx.load(str(model))
    self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    graph = model.graph
    self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    self.inputs = [_input_spec(i, (shapes or {}).get(i.name)) for i in graph.input if i.name not in self.consts]
    unknown = set(shapes or {}) - {name for name, _, _ in self.inputs}
    if unknown: raise ValueError(f"shapes given for {sorted(unknown)}, which are not graph inputs "
                                 f"(inputs: {[name for name, _, _ in self.inputs]})")
    self.outputs = [o.name for o in graph.output]
    self.nodes = [GraphNode(n.op_type, n.name or f"{n.op_type}_{i}", list(n.input), list(n.output),
                            {a.name: attribute_value(a) for a in n.attribute}) for i, n in enumerate(graph.node)]
    for n in self.nodes:
      if n.op not in OPS: raise NotImplementedError(f"ONNX op {n.op} (node {n.name!r}, opset {self.opset}) is not supported")
    self._fold_constants()
    fold_batchnorm(self.nodes, self.consts, set(self.outputs))

  def _fold_constants(self) -> None:
    """Evaluate with numpy every node whose inputs are all constant; keep the rest for run time."""
    kept = []
    for n in self.nodes:
      if all(i == "" or i in self.consts for i in n.inputs):
        try:
          outs = self._run(n, [self.consts.get(i) for i in n.inputs], fold=True)
          self.consts.update((name, v) for name, v in zip(n.outputs, outs) if name)
          continue
        except NotFoldable: pass
      kept.append(n)
    self.nodes = kept

  def _run(self, n: GraphNode, values: list, fold: bool = False) -> list:
    named = max((i + 1 for i, o in enumerate(n.outputs) if o), default=0)
    try: outs = OPS[n.op](Call(n.op, n.name, values, dict(n.attrs), self.opset, named, fold))
    except (NotImplementedError, ValueError, TypeError, IndexError) as e:
      where = f"ONNX {n.op} node {n.name!r} (opset {self.opset})"
      raise (NotImplementedError if isinstance(e, NotImplementedError) else ValueError)(f"{where}: {e}") from e
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    # plain numpy for constants, and for empty tensors too: nothing to compute
    outs = [o if o is None or isinstance(o, Tensor) and o.size else np.asarray(o) if not isinstance(o, Tensor)
            else np.zeros(o.shape, o.dtype) for o in outs]
    return outs + [None] * (len(n.outputs) - len(outs))

  def __call__(self, feeds: dict) -> dict:
    """feeds: input name -> Tensor or numpy array. Returns output name -> lazy Tensor."""
    env: dict = dict(self.consts)
    for name, shape, dtype in self.inputs:
      if name not in feeds: raise ValueError(f"missing input {name!r} (expects shape {shape}, dtype {dtype})")
      x = feeds[name]
      if tuple(x.shape) != shape: raise ValueError(f"input {name!r} has shape {tuple(x.shape)}, the model expects {shape}")
      env[name] = x if isinstance(x, Tensor) else Tensor(np.asarray(x, dtype=dtype))
    for n in self.nodes:
      env.update(zip(n.outputs, self._run(n, [env[i] if i else None for i in n.inputs])))
    return {o: env[o] if isinstance(env[o], Tensor) else Tensor(np.require(env[o], requirements='C')) for o in self.outputs}


def _input_spec(value_info, given) -> tuple:
  name, ttype = value_info.name, value_info.type.tensor_type
  if value_info.type.WhichOneof("value") != "tensor_type":
    raise NotImplementedError(f"input {name!r} is a {value_info.type.WhichOneof('value')}, only tensors are supported")
  dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim] if ttype.HasField("shape") else None
  if given is not None:
    given = tuple(int(s) for s in given)
    if dims is None: dims = [None] * len(given)
    if len(given) != len(dims) or any(d is not None and d != g for d, g in zip(dims, given)):
      raise ValueError(f"shape {given} given for input {name!r} does not fit its declared shape "
                       f"{tuple(d if d is not None else '?' for d in dims)}")
    dims = list(given)
  if dims is None: raise ValueError(f"input {name!r} has no declared shape; give it with shapes={{{name!r}: (...)}}")
  if None in dims:
    raise ValueError(f"input {name!r} has unknown dims {tuple(d if d is not None else '?' for d in dims)}; "
                     f"fix them with shapes={{{name!r}: (...)}}")
  return name, tuple(dims), onnx_dtype(ttype.elem_type)


def fold_batchnorm(nodes: list, consts: dict, graph_outputs: set) -> None:
  """Conv -> BatchNormalization (inference, constant parameters, Conv output read only by the BN) becomes one Conv
  with scaled weights and a shifted bias."""
  readers: dict[str, int] = {}
  for n in nodes:
    for i in n.inputs: readers[i] = readers.get(i, 0) + 1
  producer = {n.outputs[0]: n for n in nodes if n.op == "Conv"}
  for bn in list(nodes):
    if bn.op != "BatchNormalization" or len([o for o in bn.outputs if o]) != 1 or bn.attrs.get("training_mode", 0): continue
    conv = producer.get(bn.inputs[0])
    if conv is None or readers.get(conv.outputs[0]) != 1 or conv.outputs[0] in graph_outputs: continue
    if not all(i in consts for i in conv.inputs[1:] + bn.inputs[1:5] if i): continue
    w = consts[conv.inputs[1]]
    bias = consts[conv.inputs[2]] if len(conv.inputs) > 2 and conv.inputs[2] else np.zeros(w.shape[0], w.dtype)
    scale, shift, mean, var = (consts[i] for i in bn.inputs[1:5])
    k = scale / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
    consts[bn.outputs[0] + "::folded_w"] = (w * k.reshape(-1, *[1] * (w.ndim - 1))).astype(w.dtype)
    consts[bn.outputs[0] + "::folded_b"] = ((bias - mean) * k + shift).astype(w.dtype)
    conv.inputs = [conv.inputs[0], bn.outputs[0] + "::folded_w", bn.outputs[0] + "::folded_b"]
    conv.outputs = [bn.outputs[0]]
    nodes.remove(bn)
