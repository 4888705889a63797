"""edgeml-inspect: print what an artifact holds.

  edgeml-inspect model.edgeml      (or python -m tools.inspect_artifact model.edgeml)

Header facts, inputs and outputs, the buffer plan (image buffers with their format, size and row pitch), arena and
weights sizes, and one line per kernel with its launch sizes, arguments (#n is buffer n), FLOPs and bytes, then the
totals.
"""
import argparse

from compiled.artifact import ArtifactError, artifact_facts, read_artifact
from compiled.chain import launch_count


def _sizes(sizes) -> str:
  return "x".join(map(str, sizes)) if sizes else "auto"


def _arg(kind: str, value) -> str:
  return f"#{value}" if kind == "buffer" else f"{value}f" if kind == "float32" else str(value)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="edgeml-inspect", description=__doc__.split("\n\n")[0])
  parser.add_argument("artifact", help="a compiled .edgeml file")
  path = parser.parse_args(argv).artifact
  try: facts, spec = artifact_facts(path), read_artifact(path)
  except (OSError, ArtifactError) as e: raise SystemExit(f"edgeml-inspect: {e}")
  print(f"{path}: edgeml artifact format {facts.format_version}, {facts.file_nbytes} bytes, sha256 {facts.sha256}")
  print(f"compiler {spec.compiler_version}, target {spec.target}, build options {spec.build_options!r}, "
        f"header {facts.header_nbytes} bytes, weights at offset {facts.weights_offset}")
  for role, tensors in (("inputs", spec.inputs), ("outputs", spec.outputs)):
    print(f"{role}:")
    for t in tensors: print(f"  {t.name!r:<24} {t.dtype}{list(t.shape)}  buffer #{t.buffer}")
  print(f"buffers (arena {spec.arena_size} bytes, weights {len(spec.weights)} bytes, offsets aligned to {spec.align}):")
  print(f"  {'id':>4} {'kind':<8} {'offset':>12} {'bytes':>12}")
  for i, b in enumerate(spec.buffers):
    layout = (f"  RGBA {b.image_format} {b.image_width}x{b.image_height} texels, row pitch {b.pitch} B"
              if b.kind == "image" else f"  planes of {b.plane_bytes} B every {b.plane_pitch} B" if b.plane_pitch else "")
    print(f"  {i:>4} {b.kind:<8} {b.offset:>12} {b.nbytes:>12}{layout}")
  print(f"kernels ({len(spec.kernels)} in {launch_count(spec.kernels)} launches, one program of "
        f"{len(spec.source.splitlines())} source lines; + runs in one launch with the kernel above it):")
  print(f"  {'name':<28} {'global':>14} {'local':>10} {'FLOPs':>14} {'bytes':>12}  args")
  for k in spec.kernels:
    print(f"{'+' if k.with_previous else ' '} {k.name:<28} {_sizes(k.global_size):>14} {_sizes(k.local_size):>10} "
          f"{k.flops:>14,} {k.bytes:>12,}  " + " ".join(_arg(kind, v) for kind, v in k.args))
  print(f"  {'total':<28} {'':>14} {'':>10} {sum(k.flops for k in spec.kernels):>14,} {sum(k.bytes for k in spec.kernels):>12,}")
  tunable = [k for k in spec.kernels if k.candidates]
  print(f"candidates for edgeml-tune: {sum(len(k.candidates) for k in tunable)} in {len(tunable)} kernels")
  for c in spec.choices:
    print(f"  tuned on {c.device} (driver {c.driver}): "
          + (", ".join(f"{k.name} -> {p}" for k, p in zip(spec.kernels, c.picks) if p) or "every kernel as compiled"))


if __name__ == "__main__":
  main()
