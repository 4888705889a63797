"""Chains: a run of small kernels launched as one kernel of one work-group.

The tail of a model (squeeze-excite blocks, heads) is many kernels of a few microseconds each, and each launch costs
the host and the driver about as much again. The compiler marks such runs (KernelSpec.with_previous: this kernel runs
in the launch of the one before it); here each member becomes a function of its work-item ids, and one kernel calls
it for every work item of the member's own launch, then waits for its whole work-group before the next member:

    void k5_at(const __global float* restrict data1, ..., int gx, int gy) { <k5's body> }
    __kernel void chain_k5_k6(__global float* b7, ...) {
      __local float float_acc0_part_64[64];   // the grouped members' arrays, one of each kind
      int lid = get_local_id(0), step = get_local_size(0);
      for (int i = lid; i < 24; i += step) k5_at(b7, b8, i % 24, i / 24);
      barrier(CLK_GLOBAL_MEM_FENCE);
      for (int g = 0; g < 12; g++) { k6_at(b9, b7, float_acc0_part_64, lid, g); barrier(CLK_LOCAL_MEM_FENCE); }
    }

The barrier orders every load and store of one member before those of the next (a buffer one writes and the next
reads, arena bytes the plan reuses), so the chain stores what its members launched one after another store, on one
compute unit. Members come in the compiler's two forms (edgeml/codegen.py), which the loader checks
(compiled/artifact.py) besides checking each member as the kernel it is:
- plain: `int gx = get_global_id(0), gy = get_global_id(1);` first, then no other work-item function, barrier or local
  memory; its work items are spread over the chain's work-group;
- grouped (a reduce split across a work-group): `int lid = get_local_id(0), gx = get_group_id(0);` first, its
  `__local` arrays (declared in the chain kernel and passed in), local barriers only; the whole chain's work-group
  runs it group after group, so every grouped member of a chain has the chain's work-group size.
No member has candidates or scalar arguments. A runtime that does not know the flag launches the members one by
one, with the same results.
"""
import re
from dataclasses import replace

from compiled.kernelsig import KernelDecl, kernels_of

PLAIN = "int gx = get_global_id(0), gy = get_global_id(1);"
GROUPED = "int lid = get_local_id(0), gx = get_group_id(0);"
_LOCAL_ARRAY = re.compile(r"__local\s+(\w+)\s+(\w+)\s*\[\s*(\d+)\s*\]\s*;")
_WORK_GROUP = re.compile(r"\b(get_\w+|barrier|\w*mem_fence|__local|local|work_group_\w+|sub_group_\w+|\w*_group_events?)\b")


def member_problem(k, decl: KernelDecl) -> str | None:
  """Why kernel `k` (a KernelSpec, declared as `decl`) cannot run inside a chain, or None when it can."""
  if k.candidates: return "it has candidates (another rendering may be picked on the device)"
  if any(kind != "buffer" for kind, _ in k.args): return "it takes scalar arguments"
  body = decl.body.strip()
  if body.startswith(PLAIN):
    if not 1 <= len(k.global_size) <= 2: return f"its global size {list(k.global_size)} is not 1 or 2 sizes"
    rest = body[len(PLAIN):]
  elif body.startswith(GROUPED):
    if not k.local_size or k.global_size[0] % k.local_size[0] or any(v != 1 for v in (*k.global_size[1:], *k.local_size[1:])):
      return f"its launch {list(k.global_size)}/{list(k.local_size or [])} is not whole work-groups along one axis"
    rest = _LOCAL_ARRAY.sub("", body[len(GROUPED):]).replace("barrier(CLK_LOCAL_MEM_FENCE);", "")
  else: return f"its body starts with neither `{PLAIN}` nor `{GROUPED}`"
  if (m := _WORK_GROUP.search(rest)): return f"it uses {m.group(1)} after its ids"
  return None


def member_group(k, decl: KernelDecl) -> int | None:
  """The work-group size a chain needs for member `k`: its own for a grouped member, None (any) for a plain one."""
  return k.local_size[0] if decl.body.strip().startswith(GROUPED) else None


def chain_problem(kernels: list, declared: dict[str, KernelDecl]) -> str | None:
  """What is wrong with the chains of a kernel list (each kernel declared in `declared`), or None."""
  if kernels and kernels[0].with_previous:
    return f"kernel 0 ({kernels[0].name!r}) runs in one launch with the kernel before it, and there is none"
  for run in _runs(kernels):
    if len(run) == 1: continue
    for n in run:
      k = kernels[n]
      if (problem := member_problem(k, declared[k.name])): return f"kernel {n} ({k.name!r}) cannot run in a chain: {problem}"
    if len(groups := {member_group(kernels[n], declared[kernels[n].name]) for n in run} - {None}) > 1:
      return f"kernels {run[0]} to {run[-1]} form a chain whose members need work-groups of {sorted(groups)} work items"
  return None


def launches(source: str, kernels: list, group: int) -> tuple[str, list, set[str]]:
  """The program source with a kernel for each chain appended, the launches (KernelSpecs: each kernel that runs alone,
  and for each chain one kernel over all its members' buffers, one work-group: of its grouped members' size, else of
  `group` work items), and the names of the chains of plain members only (whose work-group may be made smaller)."""
  runs = [[kernels[n] for n in run] for run in _runs(kernels)]
  if all(len(run) == 1 for run in runs): return source, list(kernels), set()
  declared, extra, out, plain = kernels_of(source), [], [], set()
  for run in runs:
    if len(run) == 1: out.append(run[0]); continue
    text, launch = _chain(run, [declared[k.name] for k in run], group)
    extra.append(text)
    out.append(launch)
    if all(member_group(k, declared[k.name]) is None for k in run): plain.add(launch.name)
  return source + "\n" + "\n".join(extra), out, plain


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
  group = next((g for k, d in zip(members, decls) if (g := member_group(k, d))), group)
  lines, functions, arrays = [], [], {}   # arrays: one per kind, shared by the members (a barrier lies between them)
  for k, d in zip(members, decls):
    args = ", ".join(f"b{b}" for _, b in k.args)
    body = d.body.strip()
    lines += ["barrier(CLK_GLOBAL_MEM_FENCE);"] * bool(lines)
    if body.startswith(PLAIN):
      functions.append(f"void {k.name}_at({', '.join(map(_declare, d.params))}, int gx, int gy) {{\n  "
                       f"{body[len(PLAIN):].strip()}\n}}\n")
      nx, ny = k.global_size[0], k.global_size[1] if len(k.global_size) > 1 else 1
      lines.append(f"for (int i = lid; i < {nx * ny}; i += step) {k.name}_at({args}, i % {nx}, i / {nx});")
    else:   # grouped: its __local arrays live in the chain kernel; the whole work-group runs each of its groups
      local = _LOCAL_ARRAY.findall(body)
      arrays.update({f"{t}_{a}_{n}": f"__local {t} {t}_{a}_{n}[{n}];" for t, a, n in local})
      functions.append(f"void {k.name}_at({', '.join([*map(_declare, d.params), *(f'__local {t}* {a}' for t, a, _ in local)])}, "
                       f"int lid, int gx) {{\n  {_LOCAL_ARRAY.sub('', body[len(GROUPED):]).strip()}\n}}\n")
      local_args = "".join(f", {t}_{a}_{n}" for t, a, n in local)
      lines.append(f"for (int g = 0; g < {k.global_size[0] // group}; g++) {{ {k.name}_at({args}{local_args}, lid, g); "
                   f"barrier(CLK_LOCAL_MEM_FENCE); }}")
  kernel = (f"__kernel void {name}({', '.join(params.values())}) {{\n  " + "".join(a + "\n  " for a in arrays.values())
            + "int lid = get_local_id(0), step = get_local_size(0);\n  " + "\n  ".join(lines) + "\n}\n")
  launch = replace(members[0], name=name, global_size=(group,), local_size=(group,), args=[("buffer", b) for b in params],
                   flops=sum(k.flops for k in members), bytes=sum(k.bytes for k in members), with_previous=False)
  return "".join(functions) + kernel, launch


def _declare(p) -> str:
  """A member's parameter as a function parameter: its reads const and restrict (the loader checks that no read
  overlaps the buffer a kernel writes)."""
  if p.kind == "image": return f"read_only image2d_t {p.name}"
  return f"{'' if p.writes else 'const '}__global {p.ctype}* restrict {p.name}"
