#!/usr/bin/env bash
# Runs a command with Oclgrind (a simulated OpenCL device that checks every memory access) as the only OpenCL
# platform, and fails when Oclgrind reports anything.
#
#   bash scripts/oclgrind.sh COMMAND [ARGS...]   exit status: the command's, or 1 if Oclgrind reported an error
#   bash scripts/oclgrind.sh --where             print the Oclgrind ICD library; exit 1 if Oclgrind is not installed
#
# The command sees OCL_ICD_VENDORS=build/oclgrind/vendors (one .icd naming Oclgrind's library, so no other platform),
# EDGEML_DEVICE=oclgrind, EDGEML_OCLGRIND_JOB=1, and Oclgrind's checks: out-of-bounds accesses (always on) and data
# races (OCLGRIND_DATA_RACES, on unless set to 0). Oclgrind writes its reports to stderr; a copy of the command's stderr
# is scanned for them. Oclgrind checks bounds per allocation: an access past a sub-buffer but inside its parent (the
# runtime's arena and weights) is not seen; buffers of their own (edgeml's eager Tensors) are checked exactly.
# Off: OCLGRIND_UNINITIALIZED (Oclgrind 21.10's plugin aborts the kernel on LLVM's `freeze` instruction, which clang
# emits for our kernels), OCLGRIND_CHECK_API (pyopencl raises on every failed API call anyway; the check only adds
# pyopencl's own harmless probes), OCLGRIND_QUICK (it skips work-groups, so results would be wrong).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

icd=""
for lib in ${OCLGRIND_ICD:-} /usr/lib/oclgrind/liboclgrind-rt-icd.so /usr/lib/*-linux-gnu/liboclgrind-rt-icd.so \
           /usr/local/lib/liboclgrind-rt-icd.so; do
  if [ -f "$lib" ]; then icd="$lib"; break; fi
done
if [ -z "$icd" ]; then
  echo "oclgrind.sh: Oclgrind is not installed (no liboclgrind-rt-icd.so; apt-get install oclgrind, or set OCLGRIND_ICD)" >&2
  exit 1
fi
if [ "${1:-}" = "--where" ]; then echo "$icd"; exit 0; fi
if [ $# -eq 0 ]; then echo "oclgrind.sh: usage: bash scripts/oclgrind.sh COMMAND [ARGS...] | --where" >&2; exit 2; fi

vendors="$root/build/oclgrind/vendors"
mkdir -p "$vendors"
if [ "$(cat "$vendors/oclgrind.icd" 2>/dev/null)" != "$icd" ]; then   # by rename: parallel runs never see half a file
  tmp="$(mktemp "$vendors/.icd.XXXXXX")"; echo "$icd" > "$tmp"; mv -f "$tmp" "$vendors/oclgrind.icd"
fi
export OCL_ICD_VENDORS="$vendors" EDGEML_DEVICE=oclgrind EDGEML_OCLGRIND_JOB=1
export OCLGRIND_DATA_RACES=${OCLGRIND_DATA_RACES-1}
unset OCLGRIND_UNINITIALIZED OCLGRIND_CHECK_API OCLGRIND_LOG OCLGRIND_QUICK OCLGRIND_MAX_ERRORS   # reports on stderr

errlog="$(mktemp "${TMPDIR:-/tmp}/oclgrind-stderr.XXXXXX")"
# a fresh kernel-binary cache: programs built from source keep their debug info, so reports name the source line
export EDGEML_CACHE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/oclgrind-cache.XXXXXX")"
trap 'rm -rf "$errlog" "$EDGEML_CACHE_DIR"' EXIT
set +e
{ "$@" 2>&1 >&3 3>&- | tee "$errlog" >&2; } 3>&1   # stdout untouched; stderr shown and copied
rc=${PIPESTATUS[0]}
set -e

# Oclgrind's reports are blank-line separated paragraphs; count those that are reports.
reports=$(awk 'BEGIN { RS = ""; n = 0 }
  /\tKernel:|OCLGRIND FATAL ERROR|(^|\n)Oclgrind: / { n++ }
  END { print n }' "$errlog")
if [ "$reports" -gt 0 ]; then
  echo "oclgrind.sh: Oclgrind reported $reports error(s) (above, on stderr) while running: $*" >&2
  exit 1
fi
exit "$rc"
