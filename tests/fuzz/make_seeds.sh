#!/usr/bin/env bash
# Splits wire captures (*.vec) into one raw frame per file: a seed corpus for
# fuzz_frame_decoder. Needs only bash, xxd and sha1sum.
#
#   tests/fuzz/make_seeds.sh [-u] OUTDIR [FILE.vec ...]
#
# Without FILE arguments it reads every *.vec in $VFU_VECTORS_DIR, else ../shared/vectors
# beside the source tree. Files are named after the sha1 of their content (as libFuzzer
# does), so duplicates collapse. -u keeps only the first frame of each (command, flags,
# msg_size) triple: the small corpus kept in tests/fuzz/corpus/frame_decoder was made so.
set -euo pipefail

unique=0
if [[ ${1:-} == -u ]]; then unique=1; shift; fi
if [[ $# -lt 1 ]]; then
  echo "usage: $0 [-u] OUTDIR [FILE.vec ...]" >&2
  exit 2
fi
out=$1; shift
files=("$@")
if [[ ${#files[@]} -eq 0 ]]; then
  src=$(cd "$(dirname "$0")/../.." && pwd)
  dir=${VFU_VECTORS_DIR:-$src/../shared/vectors}
  shopt -s nullglob
  files=("$dir"/*.vec)
  if [[ ${#files[@]} -eq 0 ]]; then
    echo "$0: no *.vec files in $dir (set VFU_VECTORS_DIR)" >&2
    exit 1
  fi
fi
mkdir -p "$out"

declare -A seen=()
n=0
for f in "${files[@]}"; do
  # Record lines: <session> <C>S|S>C> fds=<n> <hex of the whole frame>
  while read -r session dir fds hex; do
    [[ -z ${session:-} || $session == \#* ]] && continue
    # Header bytes 2-3 = command, 4-7 = msg_size, 8-11 = flags (hex chars 4-7, 8-15, 16-23).
    key=${hex:4:4}-${hex:16:8}-${hex:8:8}
    if (( unique )); then
      [[ -n ${seen[$key]:-} ]] && continue
      seen[$key]=1
    fi
    tmp=$(mktemp "$out/.seed.XXXXXX")
    xxd -r -p <<<"$hex" >"$tmp"
    sum=$(sha1sum "$tmp" | cut -d' ' -f1)
    mv "$tmp" "$out/$sum"
    n=$((n + 1))
  done <"$f"
done
echo "$0: wrote $n frames to $out ($(ls "$out" | wc -l) files)"
