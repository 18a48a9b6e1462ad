#!/usr/bin/env python3
"""Maps data sets of ../shared/data onto the default bundle's labels, into models/cache/mapped/
(or the directory given as the one argument).

The default bundle's own eval files (models/data/cs_intent) are hand-written, 10 texts a label and
10 out-of-scope texts a language: too few to tell an out-of-scope recall of 70 % from 90 %, and
written by the same hands as the training texts. These files measure the bundle on text nobody
here wrote, and give its intent head customer wording from a real service data set:

- bitext_en_{train,val}.jsonl: Bitext's retail customer-service requests (val is held out) whose
  intent is one of ours. `delivery_period` is left out: its rows are both "how long does shipping
  take" (our `delivery`) and "when will my item arrive" (our `order_status`). Intents we have no
  label for (accounts, newsletters, addresses, reviews) are left out too: they are a shop's
  business, so neither an intent of ours nor out of scope. train keeps at most PER_LABEL rows of
  each of our labels, spread evenly over the Bitext intents mapped to it, so it adds to the
  hand-written 32 a label instead of drowning them.
- clinc_oos_en.jsonl: CLINC150 val requests from intents a shop's bot does not serve (the same
  exclusions as models/data/oos_en) and CLINC's own `oos` rows, all labelled `oos`.
- smp2019_oos_zh.jsonl: SMP2019 val (recipes, TV listings, routes, calls), all labelled `oos`.
- cais_oos_zh.jsonl: CAIS val (music, weather, reminders), labelled `oos`.
Since 2026.12.01-1 the default bundle trains on the train split of every one of these sources,
so these val figures measure wording from sources it learned from, not sources it never saw.

Every row carries `lang`. Seeded and deterministic: run it again, get the same files.
"""
import json, os, random, sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.normpath(os.path.join(here, "..", "..", ".."))
shared = os.path.normpath(os.path.join(root, "..", "shared", "data", "intent"))
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "models", "cache", "mapped")
PER_LABEL = 48
BITEXT = {
    "cancel_order": "cancel_order",
    "track_order": "order_status",
    "get_refund": "refund",
    "track_refund": "refund",
    "check_refund_policy": "refund",
    "delivery_options": "delivery",
    "payment_issue": "payment",
    "check_payment_methods": "payment",
    "get_invoice": "invoice",
    "check_invoice": "invoice",
    "complaint": "complaint",
    "contact_human_agent": "human_agent",
    "contact_customer_service": "human_agent",
}
# CLINC intents a shop's bot serves itself or that are banking, shared with models/data/oos_en.
with open(os.path.join(here, "..", "oos_en", "excluded_clinc_intents.txt"), encoding="utf-8") as f:
    EXCLUDED = set(w for line in f if not line.startswith("#") for w in line.split()) - {"oos"}


def read(*path):
    with open(os.path.join(shared, *path), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write(name, rows):
    with open(os.path.join(out, name), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows)} rows")


def bitext(rows):
    """The rows of Bitext intents we map, with our label."""
    return [{"text": r["text"], "label": BITEXT[r["label"]], "lang": "en"} for r in rows if r["label"] in BITEXT]


def capped(rows, per_label, seed):
    """At most per_label rows of each mapped label, taking the source intents in turn."""
    rng = random.Random(seed)
    groups = {}
    for r in rows:
        if r["label"] in BITEXT:
            groups.setdefault(BITEXT[r["label"]], {}).setdefault(r["label"], []).append(r)
    picked = []
    for label in sorted(groups):
        sources = [sorted(groups[label][s], key=lambda r: r["text"]) for s in sorted(groups[label])]
        for s in sources:
            rng.shuffle(s)
        taken = []
        while len(taken) < per_label and any(sources):
            for s in sources:
                if s and len(taken) < per_label:
                    taken.append(s.pop())
        picked += taken
    return picked


def oos(rows, lang):
    return [{"text": r["text"], "label": "oos", "lang": lang} for r in rows]


os.makedirs(out, exist_ok=True)
write("bitext_en_train.jsonl", bitext(capped(read("en", "bitext_cs", "train.jsonl"), PER_LABEL, 17)))
write("bitext_en_val.jsonl", bitext(read("en", "bitext_cs", "val.jsonl")))
write("clinc_oos_en.jsonl", oos([r for r in read("en", "clinc150", "val.jsonl") if r["label"] not in EXCLUDED], "en"))
write("smp2019_oos_zh.jsonl", oos(read("zh", "smp2019", "val.jsonl"), "zh"))
write("cais_oos_zh.jsonl", oos(read("zh", "cais", "val.jsonl"), "zh"))
