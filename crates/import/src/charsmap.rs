//! Builds a SentencePiece "precompiled charsmap" (the `Precompiled` normalizer of a
//! `tokenizer.json`) from a plain codepoint → replacement table.
//!
//! The format is a darts-clone double-array trie over UTF-8 keys followed by the
//! NUL-terminated replacement strings. No crate builds one, so this is a small builder: each
//! node gets a unique base whose child slots (`base ^ byte`, plus `base ^ 0` for a value) are
//! free. The array is padded to whole 256-unit blocks so a lookup of any byte string stays in
//! bounds.
use std::collections::BTreeMap;

#[derive(Default)]
struct Node {
    children: BTreeMap<u8, usize>,
    value: Option<u32>,
}

/// `map`: key string → replacement (possibly empty). Returns the charsmap bytes.
pub fn build(map: &BTreeMap<String, String>) -> Vec<u8> {
    // 1. replacement strings, each NUL-terminated; a key's value is its string's offset.
    let mut normalized = Vec::new();
    let mut nodes = vec![Node::default()];
    for (key, out) in map {
        let value = normalized.len() as u32;
        normalized.extend_from_slice(out.as_bytes());
        normalized.push(0);
        let mut n = 0;
        for &b in key.as_bytes() {
            n = match nodes[n].children.get(&b) {
                Some(&c) => c,
                None => {
                    nodes.push(Node::default());
                    let c = nodes.len() - 1;
                    nodes[n].children.insert(b, c);
                    c
                }
            };
        }
        nodes[n].value = Some(value);
    }

    // 2. place nodes breadth-first.
    let mut units: Vec<u32> = vec![0; 256];
    let mut used: Vec<bool> = vec![false; 256];
    let mut used_bases = std::collections::HashSet::new();
    used[0] = true; // the root
    let mut queue = std::collections::VecDeque::from([(0usize, 0usize)]); // (node, position)
    let mut search_from = 1usize;
    while let Some((n, pos)) = queue.pop_front() {
        let node = &nodes[n];
        if node.children.is_empty() && node.value.is_none() {
            continue;
        }
        let mut labels: Vec<usize> = node.children.keys().map(|&b| b as usize).collect();
        if node.value.is_some() {
            labels.push(0);
        }
        let base = find_base(&used, &used_bases, &labels, pos, search_from);
        used_bases.insert(base);
        let need = (base | 0xFF) + 1;
        if units.len() < need {
            units.resize(need, 0);
            used.resize(need, false);
        }
        for &l in &labels {
            used[base ^ l] = true;
        }
        while search_from < used.len() && used[search_from] {
            search_from += 1;
        }
        let offset = pos ^ base;
        units[pos] |= encode_offset(offset);
        if let Some(v) = node.value {
            units[pos] |= 1 << 8; // has_leaf
            units[base] = (1 << 31) | v;
        }
        for (&b, &child) in &node.children {
            let cpos = base ^ b as usize;
            units[cpos] = b as u32;
            queue.push_back((child, cpos));
        }
    }

    let mut out = Vec::with_capacity(4 + units.len() * 4 + normalized.len());
    out.extend_from_slice(&((units.len() * 4) as u32).to_le_bytes());
    for u in &units {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out.extend_from_slice(&normalized);
    out
}

fn encode_offset(offset: usize) -> u32 {
    if offset < (1 << 21) {
        (offset as u32) << 10
    } else {
        debug_assert!(offset.is_multiple_of(256) && (offset >> 8) < (1 << 21));
        (((offset >> 8) as u32) << 10) | (1 << 9)
    }
}

fn find_base(
    used: &[bool],
    used_bases: &std::collections::HashSet<usize>,
    labels: &[usize],
    pos: usize,
    from: usize,
) -> usize {
    let free = |i: usize| i >= used.len() || !used[i];
    let mut base = from.max(1);
    loop {
        let offset = pos ^ base;
        let encodable = offset < (1 << 21) || (offset.is_multiple_of(256) && (offset >> 8) < (1 << 21));
        if encodable && !used_bases.contains(&base) && labels.iter().all(|&l| free(base ^ l)) {
            return base;
        }
        base += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::normalizers::precompiled::Precompiled;
    use tokenizers::{NormalizedString, Normalizer};

    fn normalize(p: &Precompiled, s: &str) -> String {
        let mut n = NormalizedString::from(s);
        p.normalize(&mut n).expect("normalize");
        n.get().to_string()
    }

    #[test]
    fn built_charsmap_normalizes_like_its_table() {
        let mut map = BTreeMap::new();
        map.insert("Ａ".to_string(), "A".to_string());
        map.insert("\u{200b}".to_string(), " ".to_string());
        map.insert("\u{1}".to_string(), String::new());
        map.insert("ﬁ".to_string(), "fi".to_string());
        map.insert("①".to_string(), "1".to_string());
        let bytes = build(&map);
        let p = Precompiled::from(&bytes).expect("parse");
        assert_eq!(normalize(&p, "Ａb\u{200b}c\u{1}ﬁ①"), "Ab cfi1");
        // Unmapped text, including bytes that walk off the trie, is left alone.
        assert_eq!(normalize(&p, "你好 hello ÿ😀"), "你好 hello ÿ😀");
    }
}
