//! Product mentions in a customer's message → SKUs, in Chinese and English.
//!
//! Customers write "iPhone 15 Pro Max", "15promax", "ＩＰＨＯＮＥ１５", "小米14 Pro". Both the
//! catalog's names (SKU, zh and en names, aliases) and the message are normalised the same way —
//! NFKC (full-width → half-width), lower case, and spaces, hyphens, underscores and dots
//! dropped — and one Aho–Corasick automaton finds every name in one pass, the longest match
//! winning where names overlap ("iphone15promax" over "iphone15"). A Latin or digit match must not
//! start or end inside a word of the original text ("pro" is not found in "product"); Chinese
//! needs no boundary. A name shared by several SKUs ("iPhone 15" for every storage size) is
//! reported as ambiguous with all of them, for the bot to ask which one.
use crate::catalog::Catalog;
use aho_corasick::{AhoCorasick, MatchKind};
use std::collections::{BTreeSet, HashMap};
use unicode_normalization::UnicodeNormalization;

/// One product mention found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention {
    /// The text as the customer wrote it.
    pub surface: String,
    /// Byte range in the original text.
    pub start: usize,
    /// End of the byte range (exclusive).
    pub end: usize,
    /// The SKUs the mention may mean, sorted; one unless `ambiguous`.
    pub skus: Vec<String>,
    /// More than one SKU has this name.
    pub ambiguous: bool,
}

/// The catalog's names compiled into one automaton.
pub struct SkuLinker {
    automaton: AhoCorasick,
    /// Pattern index → the SKUs with that (normalised) name.
    skus: Vec<Vec<String>>,
}

/// Names shorter than this (normalised, in chars) are not linked: "x", "15" or "pro" alone would
/// match far too much.
const MIN_NAME_CHARS: usize = 2;

impl SkuLinker {
    /// Compiles every product's SKU, names and aliases.
    pub fn new(catalog: &Catalog) -> Result<SkuLinker, crate::StrategyError> {
        let mut by_name: HashMap<String, BTreeSet<String>> = HashMap::new();
        for p in catalog.products() {
            let names = [p.sku.as_str(), p.name_zh.as_str(), p.name_en.as_str()]
                .into_iter()
                .chain(p.aliases.iter().map(String::as_str));
            for name in names {
                let (n, _) = normalize(name);
                if n.chars().count() >= MIN_NAME_CHARS && !n.chars().all(|c| c.is_ascii_digit()) {
                    by_name.entry(n).or_default().insert(p.sku.clone());
                }
            }
        }
        let mut names: Vec<(String, Vec<String>)> =
            by_name.into_iter().map(|(n, s)| (n, s.into_iter().collect())).collect();
        names.sort();
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(names.iter().map(|(n, _)| n.as_str()))?;
        Ok(SkuLinker {
            automaton,
            skus: names.into_iter().map(|(_, s)| s).collect(),
        })
    }

    /// Every product mention in `text`, left to right, not overlapping.
    pub fn link(&self, text: &str) -> Vec<Mention> {
        let (norm, origin) = normalize(text);
        let mut out = Vec::new();
        for m in self.automaton.find_iter(&norm) {
            let start = origin[m.start()].0;
            let end = origin[m.end() - 1].1;
            if !at_word_boundary(text, start, end) {
                continue;
            }
            let skus = self.skus[m.pattern().as_usize()].clone();
            out.push(Mention {
                surface: text[start..end].to_string(),
                start,
                end,
                ambiguous: skus.len() > 1,
                skus,
            });
        }
        out
    }
}

/// Whether a match covering `text[start..end]` neither starts nor ends inside a Latin word.
fn at_word_boundary(text: &str, start: usize, end: usize) -> bool {
    // Latin letters and digits, full-width ones included.
    let word = |c: char| {
        std::iter::once(c)
            .nfkc()
            .next()
            .is_some_and(|n| n.is_ascii_alphanumeric())
    };
    let first = text[start..].chars().next();
    let last = text[..end].chars().next_back();
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    let ok_start = !(first.is_some_and(word) && before.is_some_and(word));
    let ok_end = !(last.is_some_and(word) && after.is_some_and(word));
    ok_start && ok_end
}

/// The normalised text and, for each of its bytes, the byte range of the original character
/// it came from.
pub fn normalize(text: &str) -> (String, Vec<(usize, usize)>) {
    let mut out = String::with_capacity(text.len());
    let mut origin = Vec::with_capacity(text.len());
    let mut buf = [0u8; 4];
    for (i, c) in text.char_indices() {
        let range = (i, i + c.len_utf8());
        for n in std::iter::once(c).nfkc() {
            for l in n.to_lowercase() {
                if l.is_whitespace() || matches!(l, '-' | '_' | '.' | '·' | '/') {
                    continue;
                }
                let s = l.encode_utf8(&mut buf);
                out.push_str(s);
                origin.extend(std::iter::repeat_n(range, s.len()));
            }
        }
    }
    (out, origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(text: &str) -> Catalog {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        Catalog::load(&p).unwrap()
    }

    const PHONES: &str = r#"
[[product]]
sku = "IP15PM-256"
name_zh = "苹果 iPhone 15 Pro Max 256G"
name_en = "iPhone 15 Pro Max 256GB"
aliases = ["iPhone 15 Pro Max", "15promax", "苹果15promax"]
category = "phone"
price = 9999
[[product]]
sku = "IP15PM-512"
name_en = "iPhone 15 Pro Max 512GB"
aliases = ["iPhone 15 Pro Max", "15promax"]
category = "phone"
price = 11999
[[product]]
sku = "IP15-128"
name_en = "iPhone 15 128GB"
aliases = ["iPhone 15", "苹果15"]
category = "phone"
price = 5999
[[product]]
sku = "MI14PRO"
name_zh = "小米14 Pro"
name_en = "Xiaomi 14 Pro"
aliases = ["mi 14 pro"]
category = "phone"
price = 4999
[[product]]
sku = "PB-10K"
name_zh = "充电宝"
name_en = "power bank"
category = "accessory"
price = 129
"#;

    fn skus(l: &SkuLinker, text: &str) -> Vec<(String, Vec<String>)> {
        l.link(text).into_iter().map(|m| (m.surface, m.skus)).collect()
    }

    #[test]
    fn links_zh_and_en_mentions() {
        let l = SkuLinker::new(&catalog(PHONES)).unwrap();
        let pm = vec!["IP15PM-256".to_string(), "IP15PM-512".to_string()];
        assert_eq!(
            skus(&l, "does the iPhone 15 Pro Max last a day?"),
            vec![("iPhone 15 Pro Max".into(), pm.clone())]
        );
        assert_eq!(skus(&l, "15promax电池怎么样"), vec![("15promax".into(), pm.clone())]);
        assert_eq!(
            skus(&l, "ＩＰＨＯＮＥ　１５ please"),
            vec![("ＩＰＨＯＮＥ　１５".into(), vec!["IP15-128".into()])]
        );
        assert_eq!(
            skus(&l, "小米14 Pro和充电宝一起买"),
            vec![
                ("小米14 Pro".into(), vec!["MI14PRO".into()]),
                ("充电宝".into(), vec!["PB-10K".into()]),
            ]
        );
        assert_eq!(
            skus(&l, "I want the iphone-15-pro-max-512gb"),
            vec![("iphone-15-pro-max-512gb".into(), vec!["IP15PM-512".into()])]
        );
        let m = &l.link("is the iPhone 15 Pro Max waterproof")[0];
        assert!(m.ambiguous);
        assert!(!l.link("Power Bank?")[0].ambiguous);
    }

    #[test]
    fn latin_names_do_not_match_inside_words() {
        let l = SkuLinker::new(&catalog(PHONES)).unwrap();
        assert!(l.link("my xpowerbanks arrived").is_empty());
        assert!(l.link("iphone150 is not a phone").is_empty());
        assert_eq!(skus(&l, "(power bank)").len(), 1);
    }

    #[test]
    fn normalisation_keeps_the_way_back_to_the_original() {
        let (n, origin) = normalize("Ａ-b 小米");
        assert_eq!(n, "ab小米");
        assert_eq!(origin[0], (0, 3));
        assert_eq!(origin[1], (4, 5));
        assert_eq!(origin[2], (6, 9));
    }
}
