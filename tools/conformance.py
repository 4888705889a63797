"""ONNX node-test conformance: every case from onnx's own generator, run eagerly through edgeml on the default device.

  python -m tools.conformance [--subset FILE] [--jobs N] [-k PATTERN] [--timeout S] [--write-passing FILE] [-v]

The cases come from `onnx.backend.test.case.node.collect_testcases()` in memory (the onnx wheel ships no data).
A case passes when every output matches in dtype, shape and value (rtol 1e-3, atol 1e-5, NaN equals NaN). Skipped:
cases with non-tensor values (sequences, optionals), dtypes OpenCL cannot hold here (strings, complex, bfloat16,
float8, int4...) or training-domain ops. Cases run in worker processes, each with a timeout; progress goes to stderr
and the last line of stdout is `N passed, N failed, N skipped`.
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


def run_case(case) -> tuple[str, str]:
  """('pass' | 'fail' | 'skip', detail)."""
  reason = skip_reason(case)
  if reason: return "skip", reason
  from onnx import TensorProto, numpy_helper
  from edgeml.onnx import OnnxModel
  from edgeml.tensor import Tensor
  try:
    for inputs, expected in case.data_sets:
      inputs, expected = ([numpy_helper.to_array(x) if isinstance(x, TensorProto) else np.asarray(x) for x in xs]
                          for xs in (inputs, expected))
      names = [v.name for v in case.model.graph.input if v.name not in {t.name for t in case.model.graph.initializer}]
      model = OnnxModel(case.model, shapes={name: np.shape(x) for name, x in zip(names, inputs)})
      outs = model({name: Tensor(np.require(x, requirements="C")) for name, x in zip(names, inputs)})
      got = [outs[name] for name in model.outputs]
      Tensor.realize_all(*got)
      for name, g, e in zip(model.outputs, got, expected):
        g, e = g.numpy(), np.asarray(e)
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


def _worker(conn) -> None:
  cases = load_cases()
  while (name := conn.recv()) is not None:
    try: conn.send((name, *run_case(cases[name])))
    except Exception: conn.send((name, "fail", traceback.format_exc().splitlines()[-1]))


def run_all(names: list, jobs: int, timeout: float, progress: bool = True) -> dict:
  """name -> (status, detail), running the cases in `jobs` worker processes with a per-case timeout."""
  ctx = mp.get_context("spawn")
  results, todo, workers = {}, list(reversed(names)), {}
  start = time.time()

  def spawn():
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, args=(child,), daemon=True)
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
  for conn in list(workers): feed(conn)
  while workers:
    ready = wait(list(workers), timeout=1.0)
    for conn in ready:
      try: name, status, detail = conn.recv()
      except EOFError:   # the worker died (crash or out of memory)
        proc, name, _ = workers.pop(conn)
        results[name] = ("fail", f"worker died (exit {proc.exitcode})")
        spawn()
        feed(list(workers)[-1])
      else:
        results[name] = (status, detail)
        feed(conn)
      if progress:
        done = len(results)
        print(f"\r[{done}/{len(names)}] {time.time() - start:6.0f}s {sum(s == 'pass' for s, _ in results.values())} passed",
              end="", file=sys.stderr, flush=True)
    for conn, (proc, name, since) in list(workers.items()):
      if name is not None and time.time() - since > timeout:
        proc.kill()
        proc.join()
        workers.pop(conn)
        results[name] = ("fail", f"timeout after {timeout:.0f}s")
        spawn()
        feed(list(workers)[-1])
  if progress: print(file=sys.stderr)
  return results


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m tools.conformance", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--subset", help="file with one case name per line")
  ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: the CPU count)")
  ap.add_argument("-k", dest="pattern", help="only cases whose name contains this (or matches this glob)")
  ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case (default 60)")
  ap.add_argument("--write-passing", help="write the names of the passing cases here")
  ap.add_argument("-v", "--verbose", action="store_true", help="print every failure and skip with its reason")
  args = ap.parse_args(argv)
  names = sorted(load_cases())
  if args.subset:
    with open(args.subset) as f: wanted = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    names = [n for n in names if n in wanted]
  if args.pattern: names = [n for n in names if args.pattern in n or fnmatch.fnmatch(n, args.pattern)]
  start = time.time()
  results = run_all(names, args.jobs, args.timeout)
  for name in names:
    status, detail = results[name]
    if status == "fail" or (args.verbose and status == "skip"): print(f"{status.upper():5} {name}: {detail}")
  if args.write_passing:
    write_atomic(args.write_passing, "".join(f"{n}\n" for n in names if results[n][0] == "pass").encode())
  counts = {s: sum(r[0] == s for r in results.values()) for s in ("pass", "fail", "skip")}
  print(f"took {time.time() - start:.0f}s with {args.jobs} jobs", file=sys.stderr)
  print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
  return 0


if __name__ == "__main__":
  sys.exit(main())
