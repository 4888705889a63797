"""Seeded fuzzing of the artifact loader, as an attacker who can edit a file and recompute its sha256 (and, for signed
artifacts, one who holds or does not hold the key).

Header fields of two real artifacts (tests/tiny_program.py's hand-written program and a small compiled net) are
mutated (numbers to boundary values and other indices, enums out of range, text to other names and bad UTF-8, list
elements dropped, duplicated and swapped, union members switched) and, for the compiled net, raw header bytes are
changed; the checksum is recomputed and each file is loaded and run in a child process, so a crash is seen as a
signal and a hang as a timeout. Outcomes: refused (ArtifactError, or InputError for feeds of the original shapes),
match (outputs equal numpy's reference), wrong, crash, hang, leak (any other exception). Nothing but refused and match
may happen.

Not mutated in the unsigned runs: the OpenCL source text and the values of scalar kernel arguments. They are the
program itself (an edited source can do anything), which no structural check can tell from the original; the
signature covers them, and the signed run below mutates them too: every such edit without the key is refused.
Known gap of the structural checks (several fields edited together, e.g. two read arguments of one type swapped):
the loader does not bound what a kernel reads, only what it writes; a signature is what rules that out.
"""
import copy
import hashlib
import json
import os
import random
import selectors
import subprocess
import sys

import numpy as np
import pytest

from compiled import artifact, signing
from compiled.artifact import ArtifactError, read_artifact, write_artifact
from compiled.targets import TARGETS
from tiny_program import N_IN, reference, tiny_spec

SEED = 20261129
CASE_TIMEOUT = 120  # seconds without a result line before a case counts as a hang (the first one imports and builds)
U16, U32, U64 = 2**16 - 1, 2**32 - 1, 2**64 - 1
BOUND = {"shape": U64, "globalSize": U64, "localSize": U64, "offset": U64, "nbytes": U64, "arenaSize": U64,
         "flops": U64, "bytes": U64, "buffer": U32, "align": U32, "imageWidth": U16, "imageHeight": U16}
DTYPES = ["float32", "float16", "int32", "uint32", "int8", "uint8", "bool", "float64", "int64", "f4", "", "float33"]
BAD_TEXT = ["", "x" * 300, "a\0b", "\u00e9t\u00e9", "%s%n", "../../etc/passwd"]

CHILD = r"""
import json, sys
import numpy as np
import compiled
from compiled.artifact import ArtifactError
from compiled.runtime import InputError
cases, start = json.load(open(sys.argv[1])), int(sys.argv[2])
refs = {}
for i in range(start, len(cases)):
  c = cases[i]
  if c["ref"] not in refs:
    with np.load(c["ref"]) as f: refs[c["ref"]] = [f[f"in{k}"] for k in range(int(f["n_in"]))], [f[f"out{k}"] for k in range(int(f["n_out"]))]
  ins, outs = refs[c["ref"]]
  try:
    prog = compiled.load(c["path"], trusted_keys=c["keys"] or None, require_signature=c["required"])
    feeds = {}
    for t, x in zip(prog.inputs, ins):
      feeds[t.name] = x.reshape(t.shape) if x.size == np.prod(t.shape, dtype=np.int64) else x
    got = prog.run(feeds)
    if len(got) != len(outs): outcome = "wrong: %d outputs" % len(got)
    else:
      outcome = "match"
      for g, want in zip(got.values(), outs):
        if g.size != want.size or g.dtype != want.dtype or not np.allclose(g.reshape(want.shape), want, rtol=1e-4, atol=1e-4):
          outcome = "wrong"
  except (ArtifactError, InputError) as e: outcome = "refused"
  except BaseException as e: outcome = "leak %s.%s: %s" % (type(e).__module__, type(e).__name__, str(e)[:300])
  print(json.dumps([i, outcome]), flush=True)
"""


# ---- the artifacts -------------------------------------------------------------------------------------------------

def net():
  """A small compiled net (two dense layers, one output read by another kernel) and its numpy reference."""
  from edgeml import Tensor
  from edgeml.compile import compile_graph, placeholder
  rng = np.random.default_rng(5)
  w1, b1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((8, 16), (16,), (16, 4)))
  x = placeholder("x", (2, 8))
  hidden = (x @ Tensor(w1) + Tensor(b1)).relu()
  spec = compile_graph({"x": x}, {"out": hidden @ Tensor(w2), "hidden": hidden}, target="auto").spec
  xv = rng.standard_normal((2, 8)).astype(np.float32)
  h = np.maximum(xv @ w1 + b1, 0)
  return spec, [xv], [h @ w2, h]


def tiny():
  x = np.random.default_rng(3).standard_normal((1, N_IN)).astype(np.float32)
  want = reference(x)
  return tiny_spec(), [x], [want["y"], want["best"]]


def save_reference(path, ins, outs) -> str:
  np.savez(path, n_in=len(ins), n_out=len(outs), **{f"in{k}": a for k, a in enumerate(ins)},
           **{f"out{k}": a for k, a in enumerate(outs)})
  return str(path)


def assemble(header: bytes, weights: bytes, key=None, trailer: bytes | None = None) -> bytes:
  """A file around `header` with a correct checksum, signed with `key`, or ending in `trailer` (a stale signature)."""
  head = artifact.PREFIX.pack(artifact.MAGIC, artifact.FORMAT_VERSION, len(header), len(weights)) + header
  head += bytes(artifact._padded(len(head)) - len(head))
  digest = hashlib.sha256(head + weights).digest()
  if key is not None: trailer = signing.trailer(digest, key)
  return head + weights + digest + (trailer or b"")


def header_dict(spec) -> dict:
  with artifact.schema.Program.from_bytes(artifact._header(spec)) as msg: return msg.to_dict()


# ---- mutations ---------------------------------------------------------------------------------------------------

def _leaves(node, path=()):
  """(path, value) of every number and text in a header dict, and (path, list) of every list."""
  if isinstance(node, dict):
    for k, v in node.items(): yield from _leaves(v, path + (k,))
  elif isinstance(node, list):
    yield path, node
    for i, v in enumerate(node): yield from _leaves(v, path + (i,))
  else: yield path, node


def _get(d, path):
  for p in path: d = d[p]
  return d


def _set(d, path, value):
  _get(d, path[:-1])[path[-1]] = value


def _int_choices(rng, v: int, bound: int, nbuffers: int) -> list[int]:
  c = [0, 1, v - 1, v + 1, 2 * v, v // 2, v + 8, v - 8, v + 512, v - 512, v + 4096, bound, bound - 1, 2**31 - 1,
       2**31, 2**32 - 1, 2**63, rng.randrange(64), rng.randrange(1 << 20), *range(nbuffers)]
  return [x for x in c if 0 <= x <= bound and x != v]


def mutate(d: dict, rng: random.Random, semantic: bool) -> str:
  """Change one thing in header dict `d`; returns what. `semantic`: also the source and scalar argument values."""
  names = [t["name"] for t in d["inputs"] + d["outputs"]] + [k["name"] for k in d["kernels"]]
  nbuffers = len(d["buffers"])
  leaves = [(p, v) for p, v in _leaves(d) if p and (semantic or (p[0] != "source" and p[-1] not in ("int32", "float32")))]
  path, value = rng.choice(leaves)
  key = next((p for p in reversed(path) if isinstance(p, str)), "")
  if isinstance(value, list):
    if not value: value.append(copy.deepcopy(rng.choice([1, 0])) if key in BOUND else "x"); return f"{path}: grown"
    op = rng.choice(["drop", "duplicate", "swap"])
    i, j = rng.randrange(len(value)), rng.randrange(len(value))
    if op == "drop": del value[i]
    elif op == "duplicate": value.append(copy.deepcopy(value[i]))
    else: value[i], value[j] = value[j], value[i]
    return f"{path}: {op} {i} {j}"
  if key in ("buffer", "int32", "float32") and path[-2] != "inputs" and path[0] == "kernels" and rng.random() < 0.3:
    new_kind = rng.choice([k for k in ("buffer", "int32", "float32") if k != key])
    _set(d, path[:-1], {new_kind: (1.0 if new_kind == "float32" else int(value) % 7)})
    return f"{path}: now {new_kind}"
  if key == "float32": new = rng.choice([0.0, -1.0, 1e30, float("nan"), value * 2])
  elif key == "int32": new = rng.choice([0, -1, 1, value + 1, value - 1, 2**31 - 1, -2**31])
  elif isinstance(value, bool): new = not value
  elif isinstance(value, int): new = rng.choice(_int_choices(rng, value, BOUND.get(key, U32), nbuffers))
  elif key == "kind": new = rng.choice([k for k in (*artifact.BUFFER_KINDS, 5, 7, 200) if k != value])
  elif key == "imageFormat": new = rng.choice([k for k in ("none", "float32", "float16", 3, 9) if k != value])
  elif key == "dtype": new = rng.choice([t for t in DTYPES if t != value])
  elif key == "target": new = rng.choice([t for t in (*TARGETS, "", "metal") if t != value])
  elif key == "buildOptions": new = rng.choice(["", "-cl-opt-disable", "--bogus-option", "-cl-std=CL9.9", "-w"])
  elif key == "source": new = value.replace(rng.choice(["0.0f", "+", "acc", "[i]", "j = i"]), rng.choice(["1.0f", "-", "h", "[0]", "j = 0"]), 1)
  else: new = rng.choice([n for n in names + BAD_TEXT if n != value] or BAD_TEXT)
  _set(d, path, new)
  return f"{path}: {value!r} -> {new!r}"[:200]


def mutate_bytes(header: bytes, rng: random.Random, protect: tuple[int, int]) -> tuple[bytes, str]:
  """One to three header bytes changed, none inside `protect` (the source text)."""
  raw, what = bytearray(header), []
  for _ in range(rng.randint(1, 3)):
    i = rng.randrange(len(raw))
    while protect[0] <= i < protect[1]: i = rng.randrange(len(raw))
    raw[i] = rng.choice([raw[i] ^ (1 << rng.randrange(8)), 0, 0xFF, rng.randrange(256)])
    what.append(i)
  return bytes(raw), f"bytes {what}"


def make_cases(tmp, name, spec, ins, outs, count, rng, raw_bytes=0, key=None, keys=(), required=False):
  """Write `count` mutated artifacts of `spec` (`raw_bytes` of them by raw header bytes); returns the case list."""
  ref = save_reference(tmp / f"{name}.npz", ins, outs)
  base, weights = header_dict(spec), bytes(spec.weights)
  header = artifact._header(spec)
  src = spec.source.encode()
  at = header.find(src)
  cases = []
  for n in range(count + 1):
    if n == 0: data, what = assemble(header, weights, key), "unmutated"
    elif n <= raw_bytes:
      mutated, what = mutate_bytes(header, rng, (at, at + len(src)))
      data = assemble(mutated, weights, key)
    else:
      for _ in range(20):
        d = copy.deepcopy(base)
        what = mutate(d, rng, semantic=False)
        try: data = assemble(artifact.schema.Program.new_message(**d).to_bytes(), weights, key); break
        except Exception: continue   # a value the header cannot hold (the writer refuses it): mutate again
    path = tmp / f"{name}{n}.edgeml"
    path.write_bytes(data)
    cases.append({"path": str(path), "ref": ref, "keys": list(keys), "required": required, "what": what})
  return cases


# ---- running -----------------------------------------------------------------------------------------------------

def run_cases(cases, tmp, env=None) -> list[str]:
  """Each case's outcome; a child that dies or stops answering is restarted after the case it was on."""
  case_file = tmp / "cases.json"
  case_file.write_text(json.dumps(cases))
  outcomes, start = [None] * len(cases), 0
  while start < len(cases):
    with open(tmp / "child.err", "w+") as err:
      child = subprocess.Popen([sys.executable, "-c", CHILD, str(case_file), str(start)], stdout=subprocess.PIPE,
                               stderr=err, text=True, cwd=os.path.dirname(__file__), env=env)
      sel = selectors.DefaultSelector()
      sel.register(child.stdout, selectors.EVENT_READ)
      nxt = start
      while nxt < len(cases):
        if not sel.select(CASE_TIMEOUT):
          child.kill()
          outcomes[nxt] = "hang"
          break
        line = child.stdout.readline()
        if not line: break
        i, outcome = json.loads(line)
        outcomes[i], nxt = outcome, i + 1
      rc = child.wait()
      sel.close()
      child.stdout.close()
      if nxt < len(cases) and outcomes[nxt] is None:
        err.seek(0)
        outcomes[nxt] = f"crash rc {rc}: {err.read()[-300:]}"
    start = nxt + 1 if nxt < len(cases) else nxt
  return outcomes


def tally(cases, outcomes) -> dict:
  counts = {}
  for outcome in outcomes:
    kind = outcome.split(" ")[0].rstrip(":")
    counts[kind] = counts.get(kind, 0) + 1
  bad = [(c["what"], o) for c, o in zip(cases, outcomes) if o not in ("refused", "match")]
  print(f"{len(cases)} artifacts: {counts}")
  for what, outcome in bad[:20]: print(f"  {what}: {outcome}")
  return counts


def check(cases, outcomes):
  counts = tally(cases, outcomes)
  unmutated = [o for c, o in zip(cases, outcomes) if c["what"] == "unmutated"]
  assert unmutated and all(o == "match" for o in unmutated), unmutated   # the comparison itself works
  for kind in ("crash", "hang", "leak", "wrong"): assert counts.get(kind, 0) == 0, (kind, counts)
  assert counts.get("refused", 0) > len(cases) // 2, counts   # the mutations do reach the checks


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
  d = tmp_path_factory.mktemp("keys")
  signing.generate_keypair(d / "trusted.pem", d / "trusted.pub")
  signing.generate_keypair(d / "other.pem", d / "other.pub")
  return d


def test_mutated_artifacts_never_crash_hang_leak_or_compute_wrong(tmp_path):
  rng = random.Random(SEED)
  cases = make_cases(tmp_path, "tiny", *tiny(), count=150, rng=rng)
  cases += make_cases(tmp_path, "net", *net(), count=200, rng=rng, raw_bytes=100)
  check(cases, run_cases(cases, tmp_path))


def test_mutated_and_resigned_artifacts(tmp_path, keys):
  """Re-signed with the trusted key (the signer's own mistakes, or a stolen key): the structural checks still hold."""
  rng = random.Random(SEED + 1)
  cases = make_cases(tmp_path, "tiny", *tiny(), count=60, rng=rng, key=keys / "trusted.pem",
                     keys=[str(keys / "trusted.pub")], required=True)
  check(cases, run_cases(cases, tmp_path))


def test_any_edit_without_the_key_is_refused(tmp_path, keys):
  """Every mutation, the source text and scalar arguments included, with the checksum recomputed and the old signature
  kept, or signed by another key, or the signature stripped: refused before the header is parsed."""
  rng = random.Random(SEED + 2)
  spec = tiny_spec()
  path = tmp_path / "signed.edgeml"
  write_artifact(spec, path, sign_key=keys / "trusted.pem")
  trusted = [keys / "trusted.pub"]
  assert read_artifact(path, trusted_keys=trusted, require_signature=True).weights == spec.weights
  old_trailer = path.read_bytes()[-signing.TRAILER:]
  base, weights, refused, original = header_dict(spec), bytes(spec.weights), {}, artifact._header(spec)
  for n in range(150):
    d = copy.deepcopy(base)
    mutate(d, rng, semantic=True)
    try: header = artifact.schema.Program.new_message(**d).to_bytes()
    except Exception: continue
    if header == original: continue   # a swap of an element with itself
    how = ("stale signature", "other key", "unsigned")[n % 3]
    data = assemble(header, weights, trailer=old_trailer) if how == "stale signature" else \
        assemble(header, weights, key=keys / "other.pem") if how == "other key" else assemble(header, weights)
    path.write_bytes(data)
    with pytest.raises(ArtifactError, match="bad signature|not among the 1 trusted keys|unsigned, and signatures are required"):
      read_artifact(path, trusted_keys=trusted, require_signature=True)
    refused[how] = refused.get(how, 0) + 1
  print(f"refused without the key: {refused}")
  assert sum(refused.values()) > 100


UNCHECKED = """
import compiled.artifact, compiled.runtime
def unchecked(spec, where="spec", max_tensor_bytes=None): pass
compiled.artifact.validate = compiled.runtime.validate = unchecked
"""


def test_the_harness_sees_what_an_unchecked_loader_does(tmp_path):
  """With validate() switched off in the child (a sitecustomize), edits the loader refuses show up as wrong outputs and
  leaked exceptions: the outcomes above are measured, not assumed."""
  (tmp_path / "site").mkdir()
  (tmp_path / "site" / "sitecustomize.py").write_text(UNCHECKED)
  spec, ins, outs = tiny()
  ref = save_reference(tmp_path / "tiny.npz", ins, outs)
  edits = {"wrong": lambda d: d["outputs"][1].update(dtype="uint32"),          # best read back as another type
           "leak": lambda d: d["buffers"][0].update(kind="image")}              # an input that is an image
  cases = []
  for name, edit in edits.items():
    d = header_dict(spec)
    edit(d)
    path = tmp_path / f"{name}.edgeml"
    path.write_bytes(assemble(artifact.schema.Program.new_message(**d).to_bytes(), bytes(spec.weights)))
    cases.append({"path": str(path), "ref": ref, "keys": [], "required": False, "what": name})
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
  wrong, leak = run_cases(cases, tmp_path, env)
  assert wrong == "wrong" and leak.startswith("leak "), (wrong, leak)
  assert run_cases(cases, tmp_path) == ["refused", "refused"]
