#!/usr/bin/env bash
# Trains a head on every data set in ../shared/data (frozen multilingual-e5-small, heads only)
# and evaluates it on the val split with `nudge eval`; prints one markdown table with wall time
# per run. Embeddings are cached under models/cache/embeddings, so a second run is fast.
#   benches/accuracy.sh [OUT_DIR]        (needs `nudge models fetch`)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
mkdir -p "$out"
data=../shared/data
cargo build --release -q
nudge=target/release/nudge
enc=models/encoders/multilingual-e5-small
pct() { python3 -c "import json,sys; f=json.load(open(sys.argv[1])); k=sys.argv[2].split('.'); v=f
for x in k: v=v.get(x) if isinstance(v,dict) else None
print('—' if v is None else f'{100*v:.1f}')" "$@"; }
echo "| data set | task | train rows | accuracy | macro-F1 | in-scope acc | OOS recall | ECE | wall s |"
echo "|---|---|---|---|---|---|---|---|---|"
run() { # name task train val [extra train args...]
  local name=$1 task=$2 train=$3 val=$4; shift 4
  local t0=$SECONDS
  $nudge train --task "$task" --train "$train" --base "$enc" --text-prefix "query: " \
    --out "$out/$name" --name "$name" "$@" > "$out/$name.train.log" 2>&1
  $nudge eval --task "$task" --bundle "$out/$name" --data "$val" --json > "$out/$name.eval.json" 2>/dev/null
  local rows; rows=$(grep -o '[0-9]* training examples' "$out/$name.train.log" | cut -d' ' -f1)
  echo "| $name | $task | $rows | $(pct "$out/$name.eval.json" accuracy) | $(pct "$out/$name.eval.json" macro_f1) | $(pct "$out/$name.eval.json" oos.in_scope_accuracy) | $(pct "$out/$name.eval.json" oos.recall) | $(python3 -c "import json;print(round(json.load(open('$out/$name.eval.json'))['ece'],3))") | $((SECONDS - t0)) |"
}
run clinc150 intent $data/intent/en/clinc150/train.jsonl $data/intent/en/clinc150/val.jsonl
run banking77 intent $data/intent/en/banking77/train.jsonl $data/intent/en/banking77/val.jsonl --oos-quantile 0
run smp2019 intent $data/intent/zh/smp2019/train.jsonl $data/intent/zh/smp2019/val.jsonl --oos-quantile 0
run cais intent $data/intent/zh/cais/train.jsonl $data/intent/zh/cais/val.jsonl --oos-quantile 0
run sst2 sentiment $data/sentiment/en/sst2/train.jsonl $data/sentiment/en/sst2/val.jsonl
run online_shopping sentiment $data/sentiment/zh/online_shopping/train.jsonl $data/sentiment/zh/online_shopping/val.jsonl --limit-per-file 8000
echo
echo "heads only on a frozen encoder; bundles and logs in $out; $(nproc) cores"
