"""ONNX node-test conformance: every case from onnx's own generator, run through edgeml on the default device.

  python -m tools.conformance [--aot | --aot-only] [--subset FILE] [--jobs N] [-k PATTERN] [--timeout S] [--write-passing FILE]
                              [--write-passing-aot FILE] [-v]

By default each case runs eagerly (the lazy graph realized in this process). With `--aot` each case also goes the way
users take: compiled to an artifact (edgeml.compile), loaded with compiled.load and run; inputs that are shape
parameters (axes, pads, sizes, scales, repeats, K..., see SHAPE_PARAMS) are fixed at compile time like
`edgeml-compile --const`, the others stay inputs. Both counts are printed.

The cases come from `onnx.backend.test.case.node.collect_testcases()` in memory (the onnx wheel ships no data).
A case passes when every output matches in dtype, shape and value (rtol 1e-3, atol 1e-5, NaN equals NaN). Skipped:
cases with non-tensor values (sequences, optionals), dtypes OpenCL cannot hold here (strings, complex, bfloat16,
float8, int4...) or training-domain ops. Cases run in worker processes, each with a timeout; progress goes to stderr
and the last line of stdout is `N passed, N failed, N skipped` (with --aot: the eager line, then `aot: N passed, ...`).
"""
from __future__ import annotations
import argparse
import fnmatch
import multiprocessing as mp
import os
import sys
import time
import traceback
import warnings
from multiprocessing.connection import wait

import numpy as np

from compiled.atomic import write_atomic

RTOL, ATOL = 1e-3, 1e-5
SUPPORTED = {np.dtype(t) for t in (np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16, np.uint16, np.int32,
                                   np.uint32, np.int64, np.uint64, np.bool_)}


# ONNX op -> the positions of its inputs that set shapes, axes, counts or other parameters an op reads when it is
# built (Pad's constant, Compress's condition, sequence lengths, Loop's trip count): fixed at compile time in the AOT
# mode, as `edgeml-compile --const` would
SHAPE_PARAMS = {
  "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3), "Resize": (1, 2, 3),
  "Upsample": (1,), "TopK": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
  "OneHot": (1,), "Split": (1,), "CumSum": (1,), "CumProd": (1,), "Trilu": (1,), "CenterCropPad": (1,),
  "NonMaxSuppression": (2, 3, 4), "Loop": (0, 1), "Compress": (1,),
  "LSTM": (4,), "GRU": (4,), "RNN": (4,), "Col2Im": (1, 2), "AffineGrid": (1,), "DFT": (1, 2), "STFT": (1, 3),
  "HannWindow": (0,), "HammingWindow": (0,), "BlackmanWindow": (0,), "MelWeightMatrix": (0, 1, 2, 3, 4),
  **{f"Reduce{r}": (1,) for r in ("Sum", "Mean", "Max", "Min", "Prod", "L1", "L2", "LogSum", "LogSumExp", "SumSquare")},
}


def shape_inputs(model) -> set:
  """Names of the graph inputs whose values reach a shape-parameter position of some node, directly or through other
  nodes (not through Shape or Size, which read only shapes)."""
  graph = model.graph
  inputs = {v.name for v in graph.input} - {t.name for t in graph.initializer}
  nodes = list(_all_nodes(graph))
  producer = {o: n for n in nodes for o in n.output}
  todo = [n.input[i] for n in nodes for i in SHAPE_PARAMS.get(n.op_type, ()) if i < len(n.input) and n.input[i]]
  seen, found = set(), set()
  while todo:
    name = todo.pop()
    if name in seen: continue
    seen.add(name)
    if name in inputs: found.add(name)
    node = producer.get(name)
    if node is not None and node.op_type not in ("Shape", "Size"):   # subgraph outputs and captured values count
      todo += [i for i in node.input if i]
      todo += [v for a in node.attribute if a.type == a.GRAPH for v in [*(o.name for o in a.g.output),
                                                                         *(i for m in _all_nodes(a.g) for i in m.input)]]
  return found


def _all_nodes(graph):
  for n in graph.node:
    yield n
    for a in n.attribute:
      if a.type == a.GRAPH: yield from _all_nodes(a.g)


def load_cases() -> dict:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from onnx.backend.test.case.node import collect_testcases
    return {c.name: c for c in collect_testcases()}


def skip_reason(case) -> str | None:
  """Why a case cannot run here, or None."""
  from edgeml.onnx_ops import onnx_dtype
  if any(o.domain not in ("", "ai.onnx") for o in case.model.opset_import): return "non-default domain"
  graph = case.model.graph
  for v in list(graph.input) + list(graph.output):
    kind = v.type.WhichOneof("value")
    if kind != "tensor_type": return f"{kind} value"
    try: dtype = onnx_dtype(v.type.tensor_type.elem_type)
    except Exception: return "unknown dtype"
    if dtype not in SUPPORTED: return f"dtype {dtype}"
  return None


def _eager(case, feeds: dict) -> list:
  from edgeml.onnx import OnnxModel
  from edgeml.tensor import Tensor
  model = OnnxModel(case.model, shapes={name: np.shape(x) for name, x in feeds.items()})
  outs = model({name: Tensor(np.require(x, requirements="C")) for name, x in feeds.items()})
  got = [outs[name] for name in model.outputs]
  Tensor.realize_all(*got)
  return [g.numpy() for g in got]


def _aot(case, feeds: dict) -> list:
  """Compile to an artifact file with the shape-parameter inputs fixed, load it with compiled/ and run it."""
  import tempfile
  import compiled
  from compiled.artifact import write_artifact
  from edgeml.compile import compile_graph, placeholder
  from edgeml.onnx import OnnxModel
  frozen = shape_inputs(case.model)
  model = OnnxModel(case.model, shapes={name: np.shape(x) for name, x in feeds.items() if name not in frozen},
                    consts={name: x for name, x in feeds.items() if name in frozen})
  inputs = {name: placeholder(name, shape, dtype) for name, shape, dtype in model.inputs}
  result = compile_graph(inputs, model(inputs))
  with tempfile.TemporaryDirectory(prefix="edgeml-conformance-") as tmp:
    path = os.path.join(tmp, "case.edgeml")
    write_artifact(result.spec, path)
    prog = compiled.load(path)
  outs = prog.run({name: np.require(x, requirements="C") for name, x in feeds.items() if name not in frozen})
  return [outs[name] for name in model.outputs]


def run_case(case, aot: bool = False) -> tuple[str, str]:
  """('pass' | 'fail' | 'skip', detail), eagerly or (aot) through an artifact."""
  reason = skip_reason(case)
  if reason: return "skip", reason
  from onnx import TensorProto, numpy_helper
  try:
    for inputs, expected in case.data_sets:
      inputs, expected = ([numpy_helper.to_array(x) if isinstance(x, TensorProto) else np.asarray(x) for x in xs]
                          for xs in (inputs, expected))
      names = [v.name for v in case.model.graph.input if v.name not in {t.name for t in case.model.graph.initializer}]
      feeds = dict(zip(names, inputs))
      got = (_aot if aot else _eager)(case, feeds)
      outputs = [o.name for o in case.model.graph.output]
      for name, g, e in zip(outputs, got, expected):
        g, e = np.asarray(g), np.asarray(e)
        if g.dtype != e.dtype: return "fail", f"{name}: dtype {g.dtype} != {e.dtype}"
        if g.shape != e.shape: return "fail", f"{name}: shape {g.shape} != {e.shape}"
        if e.dtype.kind in "fc": ok = np.allclose(g, e, rtol=RTOL, atol=ATOL, equal_nan=True)
        else: ok = np.array_equal(g, e)
        if not ok:
          err = np.abs(g.astype(np.float64) - e.astype(np.float64))
          return "fail", f"{name}: max abs error {np.nanmax(err) if err.size else 0:.3g}"
    return "pass", ""
  except Exception as e:
    return "fail", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def _worker(conn, aot: bool) -> None:
  cases = load_cases()
  conn.send(None)   # ready: a case's timeout starts when it is sent, not while the worker starts up
  while (name := conn.recv()) is not None:
    try: conn.send((name, *run_case(cases[name], aot)))
    except Exception: conn.send((name, "fail", traceback.format_exc().splitlines()[-1]))


def run_all(names: list, jobs: int, timeout: float, progress: bool = True, aot: bool = False) -> dict:
  """name -> (status, detail), running the cases in `jobs` worker processes with a per-case timeout."""
  ctx = mp.get_context("spawn")
  results, todo, workers = {}, list(reversed(names)), {}
  start = time.time()

  def spawn():
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, args=(child, aot), daemon=True)
    proc.start()
    workers[parent] = [proc, None, 0.0]

  def feed(conn):
    if todo:
      name = todo.pop()
      workers[conn][1:] = [name, time.time()]
      conn.send(name)
    else:
      conn.send(None)
      workers.pop(conn)[0].join(5)

  for _ in range(min(jobs, len(names))): spawn()
  while workers:
    ready = wait(list(workers), timeout=1.0)
    for conn in ready:
      try: message = conn.recv()
      except EOFError:   # the worker died (crash or out of memory)
        proc, name, _ = workers.pop(conn)
        if name is None: raise SystemExit(f"conformance: a worker died while starting (exit {proc.exitcode})")
        results[name] = ("fail", f"worker died (exit {proc.exitcode})")
        if todo: spawn()
        continue
      if message is None:   # a worker is ready
        feed(conn)
        continue
      name, status, detail = message
      results[name] = (status, detail)
      feed(conn)
      if progress:
        done = len(results)
        print(f"\r{'aot ' if aot else ''}[{done}/{len(names)}] {time.time() - start:6.0f}s "
              f"{sum(s == 'pass' for s, _ in results.values())} passed",
              end="", file=sys.stderr, flush=True)
    for conn, (proc, name, since) in list(workers.items()):
      if name is not None and time.time() - since > timeout:
        proc.kill()
        proc.join()
        workers.pop(conn)
        results[name] = ("fail", f"timeout after {timeout:.0f}s")
        if todo: spawn()
  if progress: print(file=sys.stderr)
  return results


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m tools.conformance", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--subset", help="file with one case name per line")
  ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: the CPU count)")
  ap.add_argument("-k", dest="pattern", help="only cases whose name contains this (or matches this glob)")
  ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case (default 60)")
  ap.add_argument("--aot", action="store_true", help="also run every case compiled to an artifact and loaded with "
                  "compiled/ (shape-parameter inputs fixed at compile time); prints both counts")
  ap.add_argument("--aot-only", action="store_true", help="run only the artifact way")
  ap.add_argument("--write-passing", help="write the names of the cases passing eagerly here")
  ap.add_argument("--write-passing-aot", help="write the names of the cases passing through an artifact here (--aot)")
  ap.add_argument("-v", "--verbose", action="store_true", help="print every failure and skip with its reason")
  args = ap.parse_args(argv)
  names = sorted(load_cases())
  if args.subset:
    with open(args.subset) as f: wanted = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    names = [n for n in names if n in wanted]
  if args.pattern: names = [n for n in names if args.pattern in n or fnmatch.fnmatch(n, args.pattern)]
  start = time.time()
  modes = ([] if args.aot_only else [("", False)]) + ([("aot", True)] if args.aot or args.aot_only else [])
  lines = []
  for label, aot in modes:
    results = run_all(names, args.jobs, args.timeout, aot=aot)
    for name in names:
      status, detail = results[name]
      if status == "fail" or (args.verbose and status == "skip"): print(f"{status.upper():5} {label + ' ' if label else ''}{name}: {detail}")
    out = args.write_passing_aot if aot else args.write_passing
    if out: write_atomic(out, "".join(f"{n}\n" for n in names if results[n][0] == "pass").encode())
    counts = {s: sum(r[0] == s for r in results.values()) for s in ("pass", "fail", "skip")}
    lines.append(f"{label + ': ' if label else ''}{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
  print(f"took {time.time() - start:.0f}s with {args.jobs} jobs", file=sys.stderr)
  for line in lines: print(line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
