"""ONNX front end: an ONNX graph becomes a lazy edgeml Tensor graph.

Values flow through the graph as numpy arrays while they depend only on constants (initializers, Constant nodes,
shapes), and as Tensors once they touch a graph input. Nodes whose inputs are all constant are evaluated with numpy
when the model is loaded, so Reshape/Slice/Pad and friends see static arguments. One rewrite runs on the numpy
weights: a BatchNormalization after a Conv whose output nothing else reads is folded into the Conv's weights.

Control flow runs here: an If on a constant condition is replaced by its branch at load time (one on a run-time
condition computes both branches and selects, when they agree in shape and dtype); Loop and Scan are unrolled, so
their trip counts must be known when the model is loaded. `consts` fixes graph inputs (sample rates, mode switches,
shape parameters) to values, which then fold like weights.

The op implementations live in edgeml/onnx_ops.py (a dispatch table from op type to a short function).
"""
from __future__ import annotations
import math
from collections import ChainMap
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np
import onnx
from onnx import numpy_helper
from edgeml.tensor import Tensor
from edgeml.onnx_ops import OPS, Call, NotFoldable, as_tensor, attribute_value, onnx_dtype


@dataclass
class GraphNode:
  op: str
  name: str
  inputs: list
  outputs: list
  attrs: dict = field(default_factory=dict)
  captured: list = field(default_factory=list)   # outer values its subgraphs (If/Loop bodies) read by name


CONTROL = ("If", "Loop", "Scan")   # ops run here (they hold subgraphs), not in the OPS table
MAX_UNROLL = 4096          # iterations a Loop may be unrolled into


def graph_nodes(graph, opset: int, prefix: str = "") -> list[GraphNode]:
  """The nodes of a GraphProto, each op checked as supported (subgraphs too, recursively)."""
  nodes = []
  for i, n in enumerate(graph.node):
    node = GraphNode(n.op_type, n.name or f"{prefix}{n.op_type}_{i}", list(n.input), list(n.output),
                     {a.name: attribute_value(a) for a in n.attribute})
    if node.op not in OPS and node.op not in CONTROL:
      raise NotImplementedError(f"ONNX op {node.op} (node {node.name!r}, opset {opset}) is not supported")
    for key in ("then_branch", "else_branch", "body"):
      if key in node.attrs:
        node.attrs[key] = (node.attrs[key], graph_nodes(node.attrs[key], opset, f"{node.name}/"))
        node.captured += [v for v in _captured(node.attrs[key][0]) if v not in node.captured]
    nodes.append(node)
  return nodes


def _captured(graph) -> list[str]:
  """Names a subgraph reads from its enclosing scopes (not its own inputs, initializers or node outputs)."""
  local = {v.name for v in graph.input} | {t.name for t in graph.initializer}
  out = []
  for n in graph.node:
    reads = list(n.input) + [v for a in n.attribute if a.type == onnx.AttributeProto.GRAPH for v in _captured(a.g)]
    out += [v for v in reads if v and v not in local and v not in out]
    local.update(n.output)
  return out + [o.name for o in graph.output if o.name not in local and o.name not in out]


class OnnxModel:
  """Load an ONNX model (path or ModelProto); `shapes` fixes the dims of graph inputs that are symbolic (or declared
  <= 0); `consts` fixes graph inputs to values known at compile time: they stop being inputs and fold like weights."""

  def __init__(self, model, shapes: dict | None = None, consts: dict | None = None):
    if isinstance(model, (str, Path)): model = onnx.load(str(model))
    self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    graph = model.graph
    self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    declared = {i.name: i for i in graph.input if i.name not in self.consts}
    for name, value in (consts or {}).items():
      if name not in declared:
        raise ValueError(f"constant given for {name!r}, which is not a graph input (inputs: {list(declared)})")
      self.consts[name] = _const_input(declared[name], value)
    shapes = {k: v for k, v in (shapes or {}).items() if k not in (consts or {})}
    self.inputs = [_input_spec(i, shapes.get(i.name)) for i in graph.input if i.name not in self.consts]
    unknown = set(shapes) - {name for name, _, _ in self.inputs}
    if unknown: raise ValueError(f"shapes given for {sorted(unknown)}, which are not graph inputs "
                                 f"(inputs: {[name for name, _, _ in self.inputs]})")
    self.outputs = [o.name for o in graph.output]
    self.nodes = graph_nodes(graph, self.opset)
    self._fold_constants()
    fold_batchnorm(self.nodes, self.consts, set(self.outputs))

  def _fold_constants(self) -> None:
    """Evaluate with numpy every node whose inputs are all constant; keep the rest for run time. An If whose
    condition is constant is replaced by the nodes of the branch it takes."""
    kept, todo = [], list(reversed(self.nodes))
    # a graph input's shape is known now: Shape and Size of it fold (a broadcast view stands in, no data)
    shaped = {name: np.broadcast_to(np.zeros((), dtype), shape) for name, shape, dtype in self.inputs}
    while todo:
      n = todo.pop()
      if n.op in ("Shape", "Size") and n.inputs[0] in shaped:
        self.consts.update(zip(n.outputs, self._run(n, [shaped[n.inputs[0]]], fold=True)))
        continue
      if n.op == "If" and n.inputs[0] in self.consts:
        todo += reversed(self._inline_branch(n, bool(np.asarray(self.consts[n.inputs[0]]).reshape(-1)[0])))
        continue
      if n.op not in CONTROL and all(i == "" or i in self.consts for i in n.inputs):
        try:
          outs = self._run(n, [self.consts.get(i) for i in n.inputs], fold=True)
          self.consts.update((name, v) for name, v in zip(n.outputs, outs) if name)
          continue
        except NotFoldable: pass
      kept.append(n)
    self.nodes = kept

  def _inline_branch(self, n: GraphNode, cond: bool) -> list[GraphNode]:
    """The nodes of the branch an If takes, then Identities from the branch's outputs to the If's."""
    graph, nodes = n.attrs["then_branch" if cond else "else_branch"]
    self.consts.update((t.name, numpy_helper.to_array(t)) for t in graph.initializer)
    outs = [o.name for o in graph.output]
    if len(outs) != len(n.outputs): raise ValueError(f"If node {n.name!r}: its branch has {len(outs)} outputs, "
                                                     f"the node {len(n.outputs)}")
    return nodes + [GraphNode("Identity", f"{n.name}/out{i}", [b], [o]) for i, (b, o) in enumerate(zip(outs, n.outputs)) if o]

  def _execute(self, nodes: list[GraphNode], env: dict) -> None:
    for n in nodes:
      if n.op == "If": outs = self._if(n, env)
      elif n.op == "Loop": outs = self._loop(n, env)
      elif n.op == "Scan": outs = self._scan(n, env)
      else: outs = self._run(n, [env[i] if i else None for i in n.inputs])
      env.update(zip(n.outputs, outs))

  def _subgraph(self, graph_nodes: tuple, env: dict, bound: dict) -> list:
    """Run a subgraph in a scope of its own over `env`; `bound` gives its inputs. Returns its outputs."""
    graph, nodes = graph_nodes
    scope = ChainMap(dict(bound), env)
    scope.update((t.name, numpy_helper.to_array(t)) for t in graph.initializer)
    self._execute(nodes, scope)
    return [scope[o.name] for o in graph.output]

  def _if(self, n: GraphNode, env: dict) -> list:
    """A constant condition takes one branch; a run-time one computes both and selects, when they agree in shape and
    dtype."""
    cond = env[n.inputs[0]]
    if not isinstance(cond, Tensor): return self._subgraph(n.attrs["then_branch" if np.asarray(cond).reshape(-1)[0]
                                                                   else "else_branch"], env, {})
    then, other = self._subgraph(n.attrs["then_branch"], env, {}), self._subgraph(n.attrs["else_branch"], env, {})
    outs = []
    for name, a, b in zip(n.outputs, then, other):
      if tuple(a.shape) != tuple(b.shape) or np.dtype(a.dtype) != np.dtype(b.dtype):
        raise ValueError(f"If node {n.name!r}: its condition {n.inputs[0]!r} is only known at run time and its branches "
                         f"give {name!r} as {np.dtype(a.dtype)}{list(a.shape)} and {np.dtype(b.dtype)}{list(b.shape)}; "
                         f"fix the inputs the condition depends on at compile time (edgeml-compile --const NAME=VALUE, "
                         f"or consts= from Python)")
      outs.append(cond.reshape(()).where(as_tensor(a), as_tensor(b)))
    return outs

  def _loop(self, n: GraphNode, env: dict) -> list:
    """Unrolled: the trip count (or a condition that turns constant False) must be known at compile time."""
    graph, _ = body = n.attrs["body"]
    trip = env[n.inputs[0]] if n.inputs and n.inputs[0] else None
    cond = env[n.inputs[1]] if len(n.inputs) > 1 and n.inputs[1] else np.array(True)
    if isinstance(trip, Tensor):
      raise ValueError(f"Loop node {n.name!r}: its trip count {n.inputs[0]!r} is only known at run time; fix the inputs "
                       f"it depends on at compile time (edgeml-compile --const NAME=VALUE, or consts= from Python)")
    limit = int(np.asarray(trip).reshape(-1)[0]) if trip is not None else None
    if limit is None and isinstance(cond, Tensor):
      raise ValueError(f"Loop node {n.name!r} has no trip count and a condition known only at run time")
    names = [v.name for v in graph.input]
    carried = [env[i] if i else None for i in n.inputs[2:]]
    scans: list[list] = [[] for _ in range(len(graph.output) - 1 - len(carried))]
    active, i = None, 0   # active: a run-time condition, when there is one (then no scan outputs)
    while (limit is None or i < limit) and (isinstance(cond, Tensor) or np.asarray(cond).reshape(-1)[0]):
      if i >= MAX_UNROLL: raise ValueError(f"Loop node {n.name!r}: more than {MAX_UNROLL} iterations to unroll")
      if isinstance(cond, Tensor):
        if scans: raise ValueError(f"Loop node {n.name!r}: a condition known only at run time with scan outputs "
                                   f"(their length would depend on it)")
        active = cond.reshape(()) if active is None else active.logical_and(cond.reshape(()))
      outs = self._subgraph(body, env, dict(zip(names, [np.array(i, np.int64), cond, *carried])))
      cond, new = outs[0], outs[1:1 + len(carried)]
      carried = new if active is None else [active.where(as_tensor(a), as_tensor(b)) for a, b in zip(new, carried)]
      for s, v in zip(scans, outs[1 + len(carried):]): s.append(v)
      i += 1
    stacked = []
    for s in scans:
      if not s: raise ValueError(f"Loop node {n.name!r} runs no iteration: its scan outputs would be empty")
      stacked.append(np.stack(s) if not any(isinstance(v, Tensor) for v in s)
                     else Tensor.stack([as_tensor(v) for v in s], axis=0))
    return carried + stacked

  def _scan(self, n: GraphNode, env: dict) -> list:
    """Scan (opset 9 on) unrolled over the scan axis, whose length is static."""
    if self.opset < 9: raise NotImplementedError("Scan before opset 9 (with a batch axis and sequence_lens)")
    graph, _ = body = n.attrs["body"]
    m = n.attrs["num_scan_inputs"]
    values = [env[i] if i else None for i in n.inputs]
    states, scanned = values[:len(values) - m], values[len(values) - m:]
    in_axes = n.attrs.get("scan_input_axes") or [0] * m
    in_dirs = n.attrs.get("scan_input_directions") or [0] * m
    k = len(graph.output) - len(states)
    out_axes = n.attrs.get("scan_output_axes") or [0] * k
    out_dirs = n.attrs.get("scan_output_directions") or [0] * k
    in_axes = [a % np.ndim(x) for a, x in zip(in_axes, scanned)]
    steps = scanned[0].shape[in_axes[0]]
    names = [v.name for v in graph.input]
    outs: list[list] = [[] for _ in range(k)]
    for t in range(steps):
      slices = []
      for x, axis, rev in zip(scanned, in_axes, in_dirs):
        i = steps - 1 - t if rev else t
        index = (slice(None),) * axis + (i,)
        slices.append(x[index])
      result = self._subgraph(body, env, dict(zip(names, [*states, *slices])))
      states = result[:len(states)]
      for o, v in zip(outs, result[len(states):]): o.append(v)
    stacked = []
    for o, axis, rev in zip(outs, out_axes, out_dirs):
      o = o[::-1] if rev else o
      axis = axis % (np.ndim(o[0]) + 1)
      stacked.append(np.stack(o, axis) if not any(isinstance(v, Tensor) for v in o)
                     else Tensor.stack([as_tensor(v) for v in o], axis=axis))
    return states + stacked

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
    self._execute(self.nodes, env)
    return {o: env[o] if isinstance(env[o], Tensor) else Tensor(np.require(env[o], requirements='C')) for o in self.outputs}


def _input_spec(value_info, given) -> tuple:
  name, ttype = value_info.name, value_info.type.tensor_type
  if value_info.type.WhichOneof("value") != "tensor_type":
    raise NotImplementedError(f"input {name!r} is a {value_info.type.WhichOneof('value')}, only tensors are supported")
  # a dim_param, a missing dim and a declared size <= 0 (Paddle2ONNX writes -1) all mean "unknown"
  dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in ttype.shape.dim] \
    if ttype.HasField("shape") else None
  if given is not None:
    given = tuple(int(s) for s in given)
    if any(g < 0 for g in given): raise ValueError(f"shape {given} given for input {name!r} has a negative size")
    if dims is None: dims = [None] * len(given)
    if len(given) != len(dims) or any(d is not None and d != g for d, g in zip(dims, given)):
      raise ValueError(f"shape {given} given for input {name!r} does not fit its declared shape "
                       f"{tuple(d if d is not None else '?' for d in dims)}")
    dims = list(given)
  how = f"(edgeml-compile --shape {name}=D0xD1x..., or shapes={{{name!r}: (...)}} from Python)"
  if dims is None: raise ValueError(f"input {name!r} has no declared shape; give it {how}")
  if None in dims:
    raise ValueError(f"input {name!r} has unknown dims {tuple(d if d is not None else '?' for d in dims)}; fix them {how}")
  return name, tuple(dims), onnx_dtype(ttype.elem_type)


def _const_input(value_info, value) -> np.ndarray:
  """A value given for a graph input, in the input's dtype; its shape must fit the declared one where known."""
  name, ttype = value_info.name, value_info.type.tensor_type
  dtype = onnx_dtype(ttype.elem_type)
  try: arr = np.asarray(value).astype(dtype)
  except (TypeError, ValueError) as e: raise ValueError(f"constant for input {name!r} is not {dtype}: {e}") from None
  if ttype.HasField("shape"):
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in ttype.shape.dim]
    if arr.ndim != len(dims) and arr.size == math.prod(d or 1 for d in dims) and None not in dims:
      arr = arr.reshape(dims)   # a flat list for a declared shape: take the declared shape
    if arr.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims, arr.shape)):
      raise ValueError(f"constant for input {name!r} has shape {arr.shape}, which does not fit its declared shape "
                       f"{tuple(d if d is not None else '?' for d in dims)}")
  return np.require(arr, requirements="C")


def fold_batchnorm(nodes: list, consts: dict, graph_outputs: set) -> None:
  """Conv -> BatchNormalization (inference, constant parameters, Conv output read only by the BN) becomes one Conv
  with scaled weights and a shifted bias."""
  readers: dict[str, int] = {}
  for n in nodes:
    for i in n.inputs + n.captured: readers[i] = readers.get(i, 0) + 1
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
