#!/usr/bin/env python3
"""Builds train.jsonl for the default bundle's sentiment head in customer-service chats.

Labels: neutral / negative / positive. Review sets (SST-2, online_shopping) teach polarity but
contain no plain questions, so the head called most service questions negative. This file adds
what a service bot sees:
  - the intent training messages (models/data/cs_intent/train_*.jsonl), labelled by intent:
    complaint -> negative, thanks_bye -> positive, human_agent skipped (often angry, often not),
    every other intent -> neutral (questions and requests);
  - templated product questions in zh and en (products x question forms), all neutral.
eval.jsonl is written by hand, independently of both (other wordings, other products).
Seeded and deterministic: run it again, get the same file.
"""
import json, os, random

here = os.path.dirname(os.path.abspath(__file__))
intent_dir = os.path.join(here, "..", "cs_intent")
rows = []
for lang in ("en", "zh"):
    with open(os.path.join(intent_dir, f"train_{lang}.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            label = {"complaint": "negative", "thanks_bye": "positive", "human_agent": None}.get(r["label"], "neutral")
            if label:
                rows.append({"text": r["text"], "label": label, "lang": lang})

products_en = ["phone", "laptop", "air fryer", "running shoes", "headphones", "smart watch", "rice cooker",
               "winter jacket", "tablet", "vacuum cleaner", "coffee machine", "backpack"]
questions_en = ["How long does the {p} battery last?", "Is the {p} waterproof?", "What sizes does the {p} come in?",
                "Does the {p} come with a warranty?", "Can I pay for the {p} in instalments?",
                "Is the {p} in stock in black?", "What's the difference between the two {p} models?",
                "When will the {p} be back in stock?", "Do you ship the {p} to Canada?",
                "Which {p} would you recommend for a beginner?", "How heavy is the {p}?",
                "Can I return the {p} if it doesn't fit?"]
products_zh = ["手机", "笔记本电脑", "空气炸锅", "跑鞋", "耳机", "智能手表", "电饭煲", "羽绒服", "平板", "吸尘器", "咖啡机", "背包"]
questions_zh = ["这款{p}的电池能用多久？", "{p}防水吗？", "{p}有哪些尺码？", "{p}有保修吗？", "{p}可以分期付款吗？",
                "{p}黑色还有货吗？", "两款{p}有什么区别？", "{p}什么时候补货？", "{p}能寄到香港吗？",
                "新手买哪款{p}比较好？", "{p}有多重？", "{p}不合适可以退吗？"]
rng = random.Random(17)
for products, questions, lang in ((products_en, questions_en, "en"), (products_zh, questions_zh, "zh")):
    pairs = [(p, q) for p in products for q in questions]
    rng.shuffle(pairs)
    for p, q in pairs[:120]:
        rows.append({"text": q.format(p=p), "label": "neutral", "lang": lang})

with open(os.path.join(here, "train.jsonl"), "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
print(len(rows), "rows:", {l: sum(r["label"] == l for r in rows) for l in ("neutral", "negative", "positive")})
