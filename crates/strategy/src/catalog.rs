//! The catalog: products and the offers a shop may make, read from one TOML file (products may
//! also come from a CSV file it names, for big catalogs). Everything is checked at load — unique
//! SKUs, amounts, offers that refer to real SKUs and categories — and the error says file, line
//! and field, so a bad edit is refused while the previous catalog keeps serving. A catalog's
//! version is the hash of its bytes, and every reply names it.
//!
//! ```toml
//! products_csv = "products.csv"   # optional: sku,name_zh,name_en,aliases,category,price,margin,stock
//!
//! [[product]]
//! sku = "PB-10K"
//! name_zh = "10000毫安充电宝"
//! name_en = "10000 mAh power bank"
//! aliases = ["power bank", "充电宝"]
//! category = "accessory"
//! price = "129.00"
//! margin = "40.00"
//! stock = 500
//!
//! [[offer]]
//! id = "care_bundle"
//! kind = "bundle"                 # coupon | spend_save | percent_off | bundle | upgrade | warranty
//! items = ["WAR-2Y", "PB-10K"]
//! price = "299.00"
//! channels = ["web", "app"]      # default: every channel
//! valid_to = "2027-01-01T00:00:00+08:00"
//! budget = 1000                   # times it may be made (each redeemable once), then spent
//! stacks_with = ["new_customer_20"]
//! ```
use crate::channel::Channel;
use crate::error::{line_of, toml_error, StrategyError};
use crate::money::Cents;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use toml::Spanned;

/// One product.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    /// Stock-keeping unit, unique in the catalog.
    pub sku: String,
    /// Chinese name.
    pub name_zh: String,
    /// English name.
    pub name_en: String,
    /// Other ways customers name it ("15promax", "苹果15"); linking also uses the names and SKU.
    pub aliases: Vec<String>,
    /// Category, which rules and offers refer to.
    pub category: String,
    /// List price.
    pub price: Cents,
    /// Margin per unit (for rewards and reports).
    pub margin: Cents,
    /// Units in stock; `None`: not tracked.
    pub stock: Option<u32>,
}

/// What an offer does to a cart.
#[derive(Debug, Clone, PartialEq)]
pub enum OfferKind {
    /// `amount` off a cart of at least `min_spend`.
    Coupon {
        /// Discount.
        amount: Cents,
        /// Smallest subtotal it applies to.
        min_spend: Cents,
    },
    /// 满减: `save` off for reaching `threshold` (for every full `threshold` when `repeat`).
    SpendSave {
        /// Spend needed.
        threshold: Cents,
        /// Discount per threshold reached.
        save: Cents,
        /// Once per full threshold rather than once.
        repeat: bool,
    },
    /// A percentage off the cart's lines (of one category, when given), capped.
    PercentOff {
        /// Percent in basis points (15 % = 1,500).
        basis_points: u32,
        /// Only lines of this category.
        category: Option<String>,
        /// Largest discount.
        max_discount: Option<Cents>,
    },
    /// Adds `items` (one each) for `price` in all.
    Bundle {
        /// SKUs added.
        items: Vec<String>,
        /// What they cost together.
        price: Cents,
    },
    /// Swaps a cart's `from` for `to` at `from`'s price plus `extra`.
    Upgrade {
        /// The SKU upgraded.
        from: String,
        /// The SKU it becomes.
        to: String,
        /// What the customer pays on top of `from`.
        extra: Cents,
    },
    /// Adds the warranty product `sku` for `price`, for products of `for_category`.
    Warranty {
        /// The warranty's own SKU.
        sku: String,
        /// Its offer price.
        price: Cents,
        /// Products it covers.
        for_category: String,
    },
}

impl OfferKind {
    /// The `kind` name as files write it.
    pub fn name(&self) -> &'static str {
        match self {
            OfferKind::Coupon { .. } => "coupon",
            OfferKind::SpendSave { .. } => "spend_save",
            OfferKind::PercentOff { .. } => "percent_off",
            OfferKind::Bundle { .. } => "bundle",
            OfferKind::Upgrade { .. } => "upgrade",
            OfferKind::Warranty { .. } => "warranty",
        }
    }
}

/// An offer the shop may make.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Unique id, which rules, policies and outcomes name.
    pub id: String,
    /// What it does.
    pub kind: OfferKind,
    /// Chinese title shown to the customer.
    pub title_zh: String,
    /// English title.
    pub title_en: String,
    /// Channels it may be made on (all when the file lists none).
    pub channels: BTreeSet<Channel>,
    /// Not before this time (unix seconds).
    pub valid_from: Option<i64>,
    /// Not after this time (unix seconds).
    pub valid_to: Option<i64>,
    /// Times it may be made in all (each redeemable once); then it is spent.
    pub budget: Option<u64>,
    /// Offers it may be combined with in one price (either side listing the other suffices).
    pub stacks_with: BTreeSet<String>,
}

impl Offer {
    /// Whether it may be made on `channel` at `now` (unix seconds).
    pub fn available(&self, channel: Channel, now: i64) -> bool {
        self.channels.contains(&channel)
            && self.valid_from.is_none_or(|t| now >= t)
            && self.valid_to.is_none_or(|t| now <= t)
    }
}

/// A loaded, validated catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    products: Vec<Product>,
    by_sku: HashMap<String, usize>,
    offers: Vec<Offer>,
    by_offer: HashMap<String, usize>,
    version: String,
}

impl Catalog {
    /// Reads and validates a catalog file (and the CSV it names).
    pub fn load(path: &Path) -> Result<Catalog, StrategyError> {
        let text = std::fs::read_to_string(path).map_err(|source| StrategyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates `text` as the catalog file at `path` would be (the products CSV it names is
    /// read beside `path`): what an editor checks before the text replaces the file.
    pub fn parse(path: &Path, text: &str) -> Result<Catalog, StrategyError> {
        Self::parse_with(path, text, None)
    }

    /// The products CSV `text` names, as a path beside `path` (None: it names none).
    pub fn products_path(path: &Path, text: &str) -> Result<Option<PathBuf>, StrategyError> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        Ok(file
            .products_csv
            .map(|name| path.parent().unwrap_or(Path::new(".")).join(name.get_ref())))
    }

    /// [`Catalog::parse`] with `csv` as the content of the products CSV it names instead of
    /// the file on disk: what an editor of the CSV checks before its text replaces the file.
    pub fn parse_with(path: &Path, text: &str, csv: Option<&[u8]>) -> Result<Catalog, StrategyError> {
        let text = text.to_string();
        let file: CatalogFile = toml::from_str(&text).map_err(|e| toml_error(path, &text, &e))?;
        let mut hash = Sha256::new();
        hash.update(text.as_bytes());
        let mut products = Vec::new();
        let mut at = Vec::new();
        if let Some(csv_name) = &file.products_csv {
            let csv_path = path.parent().unwrap_or(Path::new(".")).join(csv_name.get_ref());
            let bytes = match csv {
                Some(b) => b.to_vec(),
                None => std::fs::read(&csv_path).map_err(|source| StrategyError::Io {
                    path: csv_path.clone(),
                    source,
                })?,
            };
            hash.update(&bytes);
            for (p, line) in read_products_csv(&csv_path, &bytes)? {
                products.push(p);
                at.push((csv_path.clone(), line));
            }
        }
        for (i, row) in file.product.into_iter().enumerate() {
            let line = line_of(&text, row.span().start);
            let field = format!("product[{}]", i + 1);
            products.push(row.into_inner().into_product(path, line, &field)?);
            at.push((path.to_path_buf(), line));
        }
        let mut by_sku = HashMap::new();
        for (i, p) in products.iter().enumerate() {
            if by_sku.insert(p.sku.clone(), i).is_some() {
                let (f, l) = &at[i];
                return Err(StrategyError::invalid(
                    f,
                    Some(*l),
                    "sku",
                    format!("`{}` appears twice", p.sku),
                ));
            }
        }
        let categories: BTreeSet<&str> = products.iter().map(|p| p.category.as_str()).collect();
        let mut offers = Vec::new();
        let mut by_offer = HashMap::new();
        let mut offer_lines = Vec::new();
        for (i, row) in file.offer.iter().enumerate() {
            let line = line_of(&text, row.span().start);
            let field = format!("offer[{}]", i + 1);
            let o = row.get_ref().to_offer(path, line, &field, &by_sku, &categories)?;
            if by_offer.insert(o.id.clone(), offers.len()).is_some() {
                return Err(StrategyError::invalid(
                    path,
                    Some(line),
                    format!("{field}.id"),
                    format!("`{}` appears twice", o.id),
                ));
            }
            offers.push(o);
            offer_lines.push(line);
        }
        for (o, line) in offers.iter().zip(&offer_lines) {
            if let Some(unknown) = o.stacks_with.iter().find(|s| !by_offer.contains_key(*s)) {
                return Err(StrategyError::invalid(
                    path,
                    Some(*line),
                    format!("offer `{}`.stacks_with", o.id),
                    format!("unknown offer `{unknown}`"),
                ));
            }
        }
        Ok(Catalog {
            products,
            by_sku,
            offers,
            by_offer,
            version: hex::encode(&hash.finalize()[..6]),
        })
    }

    /// The catalog's version: the first 12 hex digits of the sha256 of its files.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Every product, in file order.
    pub fn products(&self) -> &[Product] {
        &self.products
    }

    /// The product with this SKU.
    pub fn product(&self, sku: &str) -> Option<&Product> {
        self.by_sku.get(sku).map(|&i| &self.products[i])
    }

    /// Every offer, in file order.
    pub fn offers(&self) -> &[Offer] {
        &self.offers
    }

    /// The offer with this id.
    pub fn offer(&self, id: &str) -> Option<&Offer> {
        self.by_offer.get(id).map(|&i| &self.offers[i])
    }

    /// This catalog with offer `id` titled differently (an empty title keeps the current one):
    /// an experiment arm's wording. None if there is no such offer.
    pub fn with_titles(&self, id: &str, title_zh: &str, title_en: &str) -> Option<Catalog> {
        let i = *self.by_offer.get(id)?;
        let mut c = self.clone();
        if !title_zh.is_empty() {
            c.offers[i].title_zh = title_zh.to_string();
        }
        if !title_en.is_empty() {
            c.offers[i].title_en = title_en.to_string();
        }
        Some(c)
    }

    /// Whether some product is of this category.
    pub fn has_category(&self, category: &str) -> bool {
        self.products.iter().any(|p| p.category == category)
    }
}

/// The first 12 hex digits of the sha256 of `bytes`: the version of a file operators edit.
pub(crate) fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..6])
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    products_csv: Option<Spanned<String>>,
    #[serde(default)]
    product: Vec<Spanned<ProductRow>>,
    #[serde(default)]
    offer: Vec<Spanned<OfferRow>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductRow {
    sku: String,
    #[serde(default)]
    name_zh: String,
    #[serde(default)]
    name_en: String,
    #[serde(default)]
    aliases: Vec<String>,
    category: String,
    price: Cents,
    #[serde(default)]
    margin: Cents,
    #[serde(default)]
    stock: Option<u32>,
}

impl ProductRow {
    fn into_product(self, path: &Path, line: usize, field: &str) -> Result<Product, StrategyError> {
        let bad = |f: &str, r: String| StrategyError::invalid(path, Some(line), format!("{field}.{f}"), r);
        let sku = self.sku.trim().to_string();
        if sku.is_empty() || sku.chars().any(char::is_whitespace) {
            return Err(bad(
                "sku",
                format!("`{}` must be non-empty and without spaces", self.sku),
            ));
        }
        if self.name_zh.trim().is_empty() && self.name_en.trim().is_empty() {
            return Err(bad("name_zh", "a product needs a Chinese or an English name".into()));
        }
        if self.category.trim().is_empty() {
            return Err(bad("category", "empty".into()));
        }
        if self.price < Cents::ZERO {
            return Err(bad("price", format!("{} is negative", self.price)));
        }
        if self.margin < Cents::ZERO || self.margin > self.price {
            return Err(bad(
                "margin",
                format!("{} must lie between 0 and the price {}", self.margin, self.price),
            ));
        }
        Ok(Product {
            sku,
            name_zh: self.name_zh.trim().to_string(),
            name_en: self.name_en.trim().to_string(),
            aliases: self
                .aliases
                .into_iter()
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect(),
            category: self.category.trim().to_string(),
            price: self.price,
            margin: self.margin,
            stock: self.stock,
        })
    }
}

/// `sku,name_zh,name_en,aliases,category,price,margin,stock`, aliases separated by `|`.
fn read_products_csv(path: &PathBuf, bytes: &[u8]) -> Result<Vec<(Product, usize)>, StrategyError> {
    #[derive(Deserialize)]
    struct Row {
        sku: String,
        #[serde(default)]
        name_zh: String,
        #[serde(default)]
        name_en: String,
        #[serde(default)]
        aliases: String,
        category: String,
        price: String,
        #[serde(default)]
        margin: String,
        #[serde(default)]
        stock: Option<u32>,
    }
    let mut r = csv::Reader::from_reader(bytes);
    let mut out = Vec::new();
    for rec in r.deserialize::<Row>() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize);
            let field = match e.kind() {
                csv::ErrorKind::Deserialize { err, .. } => {
                    err.field().map(|f| format!("column {}", f + 1)).unwrap_or_default()
                }
                _ => String::new(),
            };
            let reason = match e.kind() {
                csv::ErrorKind::Deserialize { err, .. } => err.kind().to_string(),
                _ => e.to_string(),
            };
            StrategyError::invalid(path, line, field, reason)
        })?;
        let line = out.len() + 2;
        let money = |text: &str, field: &str| {
            if text.trim().is_empty() && field == "margin" {
                return Ok(Cents::ZERO);
            }
            Cents::parse(text).map_err(|e| StrategyError::invalid(path, Some(line), field, e.to_string()))
        };
        let row = ProductRow {
            sku: rec.sku,
            name_zh: rec.name_zh,
            name_en: rec.name_en,
            aliases: rec.aliases.split('|').map(str::to_string).collect(),
            category: rec.category,
            price: money(&rec.price, "price")?,
            margin: money(&rec.margin, "margin")?,
            stock: rec.stock,
        };
        out.push((row.into_product(path, line, &format!("row {}", line - 1))?, line));
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum KindName {
    Coupon,
    SpendSave,
    PercentOff,
    Bundle,
    Upgrade,
    Warranty,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfferRow {
    id: String,
    kind: KindName,
    #[serde(default)]
    title_zh: String,
    #[serde(default)]
    title_en: String,
    #[serde(default)]
    channels: Vec<Channel>,
    #[serde(default)]
    valid_from: Option<String>,
    #[serde(default)]
    valid_to: Option<String>,
    #[serde(default)]
    budget: Option<u64>,
    #[serde(default)]
    stacks_with: Vec<String>,
    // Per kind; which ones a kind needs is checked in `to_offer`.
    amount: Option<Cents>,
    min_spend: Option<Cents>,
    threshold: Option<Cents>,
    save: Option<Cents>,
    repeat: Option<bool>,
    percent: Option<f64>,
    category: Option<String>,
    max_discount: Option<Cents>,
    #[serde(default)]
    items: Vec<String>,
    price: Option<Cents>,
    from: Option<String>,
    to: Option<String>,
    extra: Option<Cents>,
    sku: Option<String>,
    for_category: Option<String>,
}

impl OfferRow {
    fn to_offer(
        &self,
        path: &Path,
        line: usize,
        field: &str,
        skus: &HashMap<String, usize>,
        categories: &BTreeSet<&str>,
    ) -> Result<Offer, StrategyError> {
        let bad = |f: &str, r: String| StrategyError::invalid(path, Some(line), format!("{field}.{f}"), r);
        let need = |v: Option<Cents>, f: &str| -> Result<Cents, StrategyError> {
            let v = v.ok_or_else(|| bad(f, "required for this kind".into()))?;
            if v < Cents::ZERO {
                return Err(bad(f, format!("{v} is negative")));
            }
            Ok(v)
        };
        let sku = |s: &str, f: &str| -> Result<String, StrategyError> {
            if skus.contains_key(s) {
                Ok(s.to_string())
            } else {
                Err(bad(f, format!("unknown SKU `{s}`")))
            }
        };
        let category = |c: &str, f: &str| -> Result<String, StrategyError> {
            if categories.contains(c) {
                Ok(c.to_string())
            } else {
                Err(bad(f, format!("no product has category `{c}`")))
            }
        };
        if self.id.trim().is_empty() || self.id.chars().any(char::is_whitespace) {
            return Err(bad("id", format!("`{}` must be non-empty and without spaces", self.id)));
        }
        let kind = match self.kind {
            KindName::Coupon => OfferKind::Coupon {
                amount: need(self.amount, "amount")?,
                min_spend: self.min_spend.unwrap_or_default().max(Cents::ZERO),
            },
            KindName::SpendSave => {
                let threshold = need(self.threshold, "threshold")?;
                if threshold == Cents::ZERO {
                    return Err(bad("threshold", "must be positive".into()));
                }
                OfferKind::SpendSave {
                    threshold,
                    save: need(self.save, "save")?,
                    repeat: self.repeat.unwrap_or(false),
                }
            }
            KindName::PercentOff => {
                let p = self
                    .percent
                    .ok_or_else(|| bad("percent", "required for this kind".into()))?;
                let bp = p * 100.0;
                if !(p > 0.0 && p <= 100.0) || (bp - bp.round()).abs() > 1e-6 {
                    return Err(bad(
                        "percent",
                        format!("{p} must be in (0, 100] with at most two decimals"),
                    ));
                }
                OfferKind::PercentOff {
                    basis_points: bp.round() as u32,
                    category: self.category.as_deref().map(|c| category(c, "category")).transpose()?,
                    max_discount: self.max_discount,
                }
            }
            KindName::Bundle => {
                if self.items.is_empty() {
                    return Err(bad("items", "a bundle needs at least one SKU".into()));
                }
                OfferKind::Bundle {
                    items: self.items.iter().map(|s| sku(s, "items")).collect::<Result<_, _>>()?,
                    price: need(self.price, "price")?,
                }
            }
            KindName::Upgrade => OfferKind::Upgrade {
                from: sku(self.from.as_deref().unwrap_or(""), "from")?,
                to: sku(self.to.as_deref().unwrap_or(""), "to")?,
                extra: need(self.extra, "extra")?,
            },
            KindName::Warranty => OfferKind::Warranty {
                sku: sku(self.sku.as_deref().unwrap_or(""), "sku")?,
                price: need(self.price, "price")?,
                for_category: category(self.for_category.as_deref().unwrap_or(""), "for_category")?,
            },
        };
        let time = |v: &Option<String>, f: &str| -> Result<Option<i64>, StrategyError> {
            v.as_deref()
                .map(|t| {
                    chrono::DateTime::parse_from_rfc3339(t)
                        .map(|d| d.timestamp())
                        .map_err(|e| {
                            bad(
                                f,
                                format!("`{t}` is not an RFC 3339 time (2026-12-01T00:00:00+08:00): {e}"),
                            )
                        })
                })
                .transpose()
        };
        let (valid_from, valid_to) = (time(&self.valid_from, "valid_from")?, time(&self.valid_to, "valid_to")?);
        if let (Some(a), Some(b)) = (valid_from, valid_to) {
            if a > b {
                return Err(bad("valid_to", "is before valid_from".into()));
            }
        }
        Ok(Offer {
            id: self.id.clone(),
            kind,
            title_zh: self.title_zh.clone(),
            title_en: self.title_en.clone(),
            channels: if self.channels.is_empty() {
                Channel::ALL.into_iter().collect()
            } else {
                self.channels.iter().copied().collect()
            },
            valid_from,
            valid_to,
            budget: self.budget,
            stacks_with: self.stacks_with.iter().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[product]]
sku = "PH-X1"
name_zh = "X1 手机"
name_en = "X1 phone"
aliases = ["x1"]
category = "phone"
price = "3999.00"
margin = "600"
stock = 3

[[product]]
sku = "PB-10K"
name_en = "power bank"
category = "accessory"
price = "129.00"

[[product]]
sku = "WAR-2Y"
name_en = "2-year warranty"
category = "service"
price = "299"

[[offer]]
id = "care"
kind = "bundle"
items = ["WAR-2Y", "PB-10K"]
price = "329.00"
channels = ["web"]
valid_to = "2027-01-01T00:00:00+08:00"
stacks_with = ["m300"]

[[offer]]
id = "m300"
kind = "spend_save"
threshold = "300"
save = "30"
repeat = true
"#;

    fn load(text: &str) -> Result<Catalog, StrategyError> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.toml");
        std::fs::write(&p, text).unwrap();
        Catalog::load(&p)
    }

    #[test]
    fn loads_products_and_offers() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.products().len(), 3);
        assert_eq!(c.product("PH-X1").unwrap().price, Cents(399_900));
        assert_eq!(c.product("PH-X1").unwrap().margin, Cents(60_000));
        let care = c.offer("care").unwrap();
        assert_eq!(
            care.kind,
            OfferKind::Bundle {
                items: vec!["WAR-2Y".into(), "PB-10K".into()],
                price: Cents(32_900)
            }
        );
        assert!(care.available(Channel::Web, 1_790_000_000));
        assert!(!care.available(Channel::App, 1_790_000_000));
        assert!(!care.available(Channel::Web, 1_800_000_000), "expired");
        assert_eq!(c.offer("m300").unwrap().channels.len(), 5);
        assert_eq!(c.version().len(), 12);
        assert_ne!(c.version(), load(&GOOD.replace("329.00", "328.00")).unwrap().version());
    }

    #[test]
    fn errors_say_file_line_and_field() {
        for (edit, line, needle) in [
            (("price = \"129.00\"", "price = \"12.999\""), 17, "12.999"),
            (
                ("items = [\"WAR-2Y\", \"PB-10K\"]", "items = [\"WAR-2Y\", \"NOPE\"]"),
                24,
                "offer[1].items: unknown SKU `NOPE`",
            ),
            (
                ("sku = \"WAR-2Y\"", "sku = \"PB-10K\""),
                19,
                "sku: `PB-10K` appears twice",
            ),
            (
                ("stacks_with = [\"m300\"]", "stacks_with = [\"m400\"]"),
                24,
                "unknown offer `m400`",
            ),
            (("repeat = true", "repeat = true\ncolour = 1"), 32, "colour"),
            (("threshold = \"300\"", ""), 32, "offer[2].threshold: required"),
            (("margin = \"600\"", "margin = \"5000\""), 3, "product[1].margin"),
            (("channels = [\"web\"]", "channels = [\"fax\"]"), 24, "fax"),
            (
                ("valid_to = \"2027-01-01T00:00:00+08:00\"", "valid_to = \"next year\""),
                24,
                "valid_to",
            ),
        ] {
            let err = load(&GOOD.replacen(edit.0, edit.1, 1)).unwrap_err().to_string();
            assert!(err.contains("catalog.toml:"), "{err}");
            assert!(err.contains(needle), "{edit:?}: {err}");
            let at = err.split("catalog.toml:").nth(1).unwrap();
            let l: usize = at.split(':').next().unwrap().parse().unwrap_or(0);
            assert!(l.abs_diff(line) <= 8, "{edit:?}: line {l}, expected near {line}: {err}");
        }
    }

    #[test]
    fn products_come_from_csv_too_with_line_numbers() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("p.csv"),
            "sku,name_zh,name_en,aliases,category,price,margin,stock\n\
             A1,甲,alpha,a one|a-1,phone,10.50,1,\n\
             B2,乙,beta,,phone,20,,4\n",
        )
        .unwrap();
        std::fs::write(d.path().join("c.toml"), "products_csv = \"p.csv\"\n").unwrap();
        let c = Catalog::load(&d.path().join("c.toml")).unwrap();
        assert_eq!(c.product("A1").unwrap().aliases, vec!["a one", "a-1"]);
        assert_eq!(c.product("B2").unwrap().price, Cents(2000));
        assert_eq!(c.product("B2").unwrap().stock, Some(4));
        std::fs::write(
            d.path().join("p.csv"),
            "sku,name_zh,name_en,aliases,category,price,margin,stock\nA1,甲,alpha,,phone,10.50,1,\nB2,乙,beta,,phone,2x0,,4\n",
        )
        .unwrap();
        let err = Catalog::load(&d.path().join("c.toml")).unwrap_err().to_string();
        assert!(err.contains("p.csv:3: price") && err.contains("2x0"), "{err}");
    }
}
