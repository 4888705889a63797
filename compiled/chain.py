"""Chains: a run of small kernels launched as one kernel of one work-group.

The tail of a model (squeeze-excite blocks, heads) is many kernels of a few microseconds each, and each launch costs
the host and the driver about as much again. The compiler marks such runs (KernelSpec.with_previous: this kernel runs
in the launch of the one before it); here each member becomes a function of its work-item ids, and one kernel calls
it for every work item of the member's own launch, then waits for its whole work-group before the next member:

    void k5_at(const __global float* restrict data1, ..., int gx, int gy) { <k5's body> }
    __kernel void chain_k5_k6(__global float* b7, ...) {
      int lid = get_local_id(0), step = get_local_size(0);
      for (int i = lid; i < 24; i += step) k5_at(b7, b8, i % 24, i / 24);
      barrier(CLK_GLOBAL_MEM_FENCE);
      for (int i = lid; i < 12; i += step) k6_at(b9, b7, i % 12, i / 12);
    }

The barrier orders every load and store of one member before those of the next (a buffer one writes and the next
reads, arena bytes the plan reuses), so the chain stores what its members launched one after another store, on one
compute unit. A member is a kernel in the compiler's plain form (edgeml/codegen.py): `int gx = get_global_id(0),
gy = get_global_id(1);` first, then no other work-item function, barrier or local memory; no candidates, buffer
arguments only. The loader checks that (compiled/artifact.py), besides checking each member as the kernel it is. A
runtime that does not know the flag launches the members one by one, with the same results.
"""
import re
from dataclasses import replace

from compiled.kernelsig import KernelDecl, kernels_of

IDS = "int gx = get_global_id(0), gy = get_global_id(1);"
_WORK_GROUP = re.compile(r"\b(get_\w+|barrier|\w*mem_fence|__local|local|work_group_\w+|sub_group_\w+|\w*_group_events?)\b")


def member_problem(k, decl: KernelDecl) -> str | None:
  """Why kernel `k` (a KernelSpec, declared as `decl`) cannot run inside a chain, or None when it can."""
  if k.candidates: return "it has candidates (another rendering may be picked on the device)"
  if any(kind != "buffer" for kind, _ in k.args): return "it takes scalar arguments"
  if not 1 <= len(k.global_size) <= 2: return f"its global size {list(k.global_size)} is not 1 or 2 sizes"
  body = decl.body.strip()
  if not body.startswith(IDS): return f"its body does not start with `{IDS}`"
  if (m := _WORK_GROUP.search(body, len(IDS))): return f"it uses {m.group(1)} after its ids"
  return None


def chain_problem(kernels: list, declared: dict[str, KernelDecl]) -> str | None:
  """What is wrong with the chains of a kernel list (each kernel declared in `declared`), or None."""
  if kernels and kernels[0].with_previous:
    return f"kernel 0 ({kernels[0].name!r}) runs in one launch with the kernel before it, and there is none"
  for run in (run for run in _runs(kernels) if len(run) > 1):
    for n in run:
      k = kernels[n]
      if (problem := member_problem(k, declared[k.name])): return f"kernel {n} ({k.name!r}) cannot run in a chain: {problem}"
  return None


def launch_count(kernels: list) -> int:
  """Launches of a kernel list: one per kernel that does not run with the kernel before it."""
  return sum(not k.with_previous for k in kernels)


def launches(source: str, kernels: list, group: int) -> tuple[str, list, set[str]]:
  """The program source with a kernel for each chain appended, the launches (KernelSpecs: each kernel that runs alone,
  and for each chain one kernel over all its members' buffers, one work-group of `group` work items), and the names
  of the chain kernels."""
  runs = [[kernels[n] for n in run] for run in _runs(kernels)]
  if all(len(run) == 1 for run in runs): return source, list(kernels), set()
  declared, extra, out = kernels_of(source), [], []
  for run in runs:
    if len(run) == 1: out.append(run[0]); continue
    text, launch = _chain(run, [declared[k.name] for k in run], group)
    extra.append(text)
    out.append(launch)
  return source + "\n" + "\n".join(extra), out, {k.name for run, k in zip(runs, out) if len(run) > 1}


def _runs(kernels: list) -> list[list[int]]:
  """The indices of the kernels in runs: each kernel with the ones after it that run with their previous one."""
  runs: list[list[int]] = []
  for n, k in enumerate(kernels):
    if k.with_previous and runs: runs[-1].append(n)
    else: runs.append([n])
  return runs


def _chain(members: list, decls: list[KernelDecl], group: int) -> tuple[str, object]:
  """The source of a chain's functions and kernel, and its launch (args: each buffer once, in order of first use)."""
  params: dict[int, str] = {}
  for k, d in zip(members, decls):
    for (_, b), p in zip(k.args, d.params):
      params.setdefault(b, f"read_only image2d_t b{b}" if p.kind == "image" else f"__global {p.ctype}* b{b}")
  name = f"chain_{members[0].name.split('_')[0]}_{members[-1].name.split('_')[0]}"
  lines, functions = [], []
  for k, d in zip(members, decls):
    functions.append(f"void {k.name}_at({', '.join(map(_declare, d.params))}, int gx, int gy) {{\n  "
                     f"{d.body.strip()[len(IDS):].strip()}\n}}\n")
    nx, ny = k.global_size[0], k.global_size[1] if len(k.global_size) > 1 else 1
    args = ", ".join(f"b{b}" for _, b in k.args)
    lines += ["barrier(CLK_GLOBAL_MEM_FENCE);"] * bool(lines)
    lines.append(f"for (int i = lid; i < {nx * ny}; i += step) {k.name}_at({args}, i % {nx}, i / {nx});")
  kernel = (f"__kernel void {name}({', '.join(params.values())}) {{\n  "
            + "\n  ".join(["int lid = get_local_id(0), step = get_local_size(0);", *lines]) + "\n}\n")
  launch = replace(members[0], name=name, global_size=(group,), local_size=(group,), args=[("buffer", b) for b in params],
                   flops=sum(k.flops for k in members), bytes=sum(k.bytes for k in members), with_previous=False)
  return "".join(functions) + kernel, launch


def _declare(p) -> str:
  """A member's parameter as a function parameter: its reads const and restrict (the loader checks that no read
  overlaps the buffer a kernel writes)."""
  if p.kind == "image": return f"read_only image2d_t {p.name}"
  return f"{'' if p.writes else 'const '}__global {p.ctype}* restrict {p.name}"
