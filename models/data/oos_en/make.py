#!/usr/bin/env python3
"""Builds train.jsonl: English requests no shop's service bot covers, for `nudge train --oos-train`.

CLINC150's own `oos` rows are 100 mostly odd questions; a head on a small English encoder
(all-MiniLM-L6-v2) trained on them alone still called "What's the capital of Peru?" a product
question. So this file adds what a voice assistant hears, as CAIS does for Chinese in the default
bundle: a seeded sample of CLINC150 train rows (../../../../shared/data/intent/en/clinc150) from
every intent outside banking, credit cards and the intents a shop bot answers itself (greetings,
thanks, orders, cancelling). CLINC's own `oos` rows are left out: pass its train.jsonl as a
second `--oos-train` for them. Labels are the CLINC intents, so `--oos-limit-per-file` samples
evenly over them; `nudge train` reads every row of a file without `oos` rows as out of scope.
Seeded and deterministic: run it again, get the same file.
"""
import json, os, random

here = os.path.dirname(os.path.abspath(__file__))
clinc = os.path.join(here, "..", "..", "..", "..", "shared", "data", "intent", "en", "clinc150", "train.jsonl")
with open(os.path.join(here, "excluded_clinc_intents.txt"), encoding="utf-8") as f:
    excluded = set(w for line in f if not line.startswith("#") for w in line.split())
PER_INTENT = 5
by_label = {}
with open(clinc, encoding="utf-8") as f:
    for line in f:
        r = json.loads(line)
        if r["label"] not in excluded:
            by_label.setdefault(r["label"], []).append(r["text"])
rng = random.Random(17)
rows = []
for label in sorted(by_label):
    texts = sorted(by_label[label])
    rng.shuffle(texts)
    rows += [{"text": t, "label": label, "lang": "en"} for t in texts[:PER_INTENT]]
with open(os.path.join(here, "train.jsonl"), "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
print(len(rows), "rows from", len(by_label), "intents")
