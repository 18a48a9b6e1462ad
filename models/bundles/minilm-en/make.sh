#!/usr/bin/env bash
# The fast English bundle: all-MiniLM-L6-v2 (6 layers, 384 wide: half the default's depth, a
# 30k-piece English vocabulary) with intent and sentiment heads trained as the default's are, on
# the English half of the same data. For shops that serve English only and want the speed
# (benches/README.md has its figures beside the default's).
# Rebuilds heads.safetensors + manifest.json from the data in the repository and ../shared/data.
# Needs `nudge models fetch` first. Seeded: same data, same heads. A few minutes on 2 cores.
# `--lang en` takes the English rows of the bilingual files that tag their rows (cs_sentiment).
# Out of scope: CLINC150's 100 `oos` rows and models/data/oos_en (assistant requests from other
# CLINC intents, see its make.py); with the `oos` rows alone the head took general-knowledge
# questions for product questions. Sentiment takes all of SST-2: with 3,000 rows (the default's
# share) the service messages' neutral rows outweighed the polarity and complaints read neutral.
set -euo pipefail
cd "$(dirname "$0")/../../.."
nudge() { cargo run --release -q -- "$@"; }
version=${VERSION:-2026.11.30-1}
nudge train --task intent --lang en \
  --train models/data/cs_intent/train_en.jsonl \
  --oos-train ../shared/data/intent/en/clinc150/train.jsonl --oos-train models/data/oos_en/train.jsonl \
  --val models/data/cs_intent/eval_en.jsonl \
  --base models/encoders/all-minilm-l6-v2 --precision int8 \
  --out models/bundles/minilm-en --name minilm-en --version "$version"
nudge train --task sentiment --lang en \
  --train ../shared/data/sentiment/en/sst2/train.jsonl \
  --train models/data/cs_sentiment/train.jsonl \
  --val ../shared/data/sentiment/en/sst2/val.jsonl --val models/data/cs_sentiment/eval.jsonl \
  --base models/bundles/minilm-en --out models/bundles/minilm-en --version "$version"
