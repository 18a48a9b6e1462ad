#!/usr/bin/env python3
"""Writes products.csv for the example shop: a few hundred SKUs of phones, laptops, audio,
wearables, accessories and services, with the zh/en names and aliases customers use. Model
aliases ("15promax") are shared by every storage size of a model on purpose: the linker then
reports the mention as ambiguous and the bot can ask which one. Deterministic."""
import csv, os

rows = []
def add(sku, zh, en, aliases, category, price, margin, stock=100):
    rows.append([sku, zh, en, "|".join(aliases), category, f"{price:.2f}", f"{margin:.2f}", stock])

phones = [
    ("IP15", "苹果 iPhone 15", "iPhone 15", ["iphone 15", "苹果15", "iphone15"], 5999),
    ("IP15PL", "苹果 iPhone 15 Plus", "iPhone 15 Plus", ["15plus", "苹果15plus"], 6999),
    ("IP15P", "苹果 iPhone 15 Pro", "iPhone 15 Pro", ["15pro", "苹果15pro"], 7999),
    ("IP15PM", "苹果 iPhone 15 Pro Max", "iPhone 15 Pro Max", ["15promax", "苹果15promax"], 9999),
    ("MI14", "小米14", "Xiaomi 14", ["mi 14", "小米14"], 3999),
    ("MI14P", "小米14 Pro", "Xiaomi 14 Pro", ["mi 14 pro"], 4999),
    ("MI14U", "小米14 Ultra", "Xiaomi 14 Ultra", ["mi 14 ultra"], 6499),
    ("HWM60", "华为 Mate 60", "Huawei Mate 60", ["mate60", "mate 60"], 5499),
    ("HWM60P", "华为 Mate 60 Pro", "Huawei Mate 60 Pro", ["mate60pro", "mate 60 pro"], 6999),
    ("X1", "X1 手机", "X1 phone", ["x1"], 3999),
]
for code, zh, en, aliases, base in phones:
    # The model's own name, without storage or colour, is how most customers say it.
    aliases = aliases + [en, zh]
    for i, gb in enumerate([128, 256, 512]):
        add(f"{code}-{gb}", f"{zh} {gb}G", f"{en} {gb}GB", aliases, "phone", base + 1000 * i, 0.18 * (base + 1000 * i))
        for c_zh, c_en in [("黑色", "black"), ("白色", "white"), ("蓝色", "blue")]:
            add(f"{code}-{gb}-{c_en[:3].upper()}", f"{zh} {gb}G {c_zh}", f"{en} {gb}GB {c_en}", aliases, "phone", base + 1000 * i, 0.18 * (base + 1000 * i))
    add(f"CASE-{code}", f"{zh} 手机壳", f"{en} case", [f"{en} case"], "accessory", 99, 60)
    add(f"GLASS-{code}", f"{zh} 钢化膜", f"{en} screen protector", [], "accessory", 49, 35)

laptops = [("MBA13", "MacBook Air 13", "macbook air"), ("MBA15", "MacBook Air 15", "mba15"),
           ("MBP14", "MacBook Pro 14", "macbook pro 14"), ("XPS13", "Dell XPS 13", "xps13"),
           ("TPX1", "ThinkPad X1 Carbon", "x1 carbon"), ("MIBOOK", "小米笔记本 Pro", "xiaomi book pro")]
for i, (code, name, alias) in enumerate(laptops):
    for ram in (8, 16, 32):
        for ssd in (256, 512, 1024):
            price = 6999 + 1000 * i + 800 * (ram // 16) + 2 * ssd
            add(f"{code}-{ram}-{ssd}", f"{name} {ram}G+{ssd}G", f"{name} {ram}GB/{ssd}GB", [alias], "laptop", price, 0.12 * price)

for code, zh, en, price in [("APP2", "AirPods Pro 2", "AirPods Pro 2", 1899), ("SONYXM5", "索尼 WH-1000XM5", "Sony WH-1000XM5", 2499),
                            ("MIBUDS4", "小米耳机 Buds 4", "Xiaomi Buds 4", 699), ("HWFB5", "华为 FreeBuds 5", "Huawei FreeBuds 5", 999)]:
    for colour_zh, colour_en in [("白色", "white"), ("黑色", "black"), ("蓝色", "blue")]:
        add(f"{code}-{colour_en[:3].upper()}", f"{zh} {colour_zh}", f"{en} {colour_en}", [en.lower()], "audio", price, 0.25 * price)

for code, zh, en, price in [("AW9", "Apple Watch S9", "Apple Watch Series 9", 2999), ("MIBAND8", "小米手环8", "Xiaomi Band 8", 249),
                            ("HWGT4", "华为 Watch GT 4", "Huawei Watch GT 4", 1488)]:
    for size in (41, 45):
        for strap_zh, strap_en in [("运动表带", "sport band"), ("皮表带", "leather strap")]:
            add(f"{code}-{size}-{strap_en[:3].upper()}", f"{zh} {size}mm {strap_zh}", f"{en} {size}mm {strap_en}", [en.lower()], "wearable", price + 10 * (size - 41), 0.2 * price)

for mah, price in [(5000, 79), (10000, 129), (20000, 199)]:
    add(f"PB-{mah // 1000}K", f"{mah}毫安充电宝", f"{mah} mAh power bank", ["power bank", "充电宝", "移动电源"] if mah == 10000 else [f"{mah // 1000}k power bank"], "accessory", price, 0.45 * price)
for w, price in [(20, 99), (35, 149), (65, 229)]:
    add(f"CHG-{w}W", f"{w}W 快充充电器", f"{w}W fast charger", [f"{w}w charger"], "accessory", price, 0.5 * price)
for m, price in [(1, 39), (2, 59)]:
    add(f"CBL-C-{m}M", f"USB-C 数据线 {m}米", f"USB-C cable {m} m", [], "accessory", price, 0.6 * price)

add("WAR-1Y", "一年延保", "1-year extended warranty", ["extended warranty", "延保"], "service", 199, 150, 100000)
add("WAR-2Y", "两年延保", "2-year extended warranty", ["2 year warranty", "两年延保"], "service", 299, 220, 100000)
add("CARE-SCREEN", "碎屏险", "screen protection plan", ["screen insurance", "碎屏保"], "service", 149, 110, 100000)

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "products.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["sku", "name_zh", "name_en", "aliases", "category", "price", "margin", "stock"])
    w.writerows(rows)
print(len(rows), "products")
