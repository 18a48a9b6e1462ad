//! What simulated customers write: real customer-service messages (JSON lines with `text` and
//! `label`, the held-out split of the intent data by default), drawn by intent label and
//! language. The server sees only these texts, so its NLU's mistakes are part of every result.
use crate::config::{MessageFiles, SimError};
use rand::Rng;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// A message language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    /// English.
    En,
    /// Chinese.
    Zh,
}

/// Messages by language and intent label.
#[derive(Debug, Clone, Default)]
pub struct Messages {
    pools: HashMap<(Lang, String), Vec<String>>,
}

#[derive(Deserialize)]
struct Line {
    text: String,
    label: String,
}

impl Messages {
    /// Reads both languages' files.
    pub fn load(files: &MessageFiles) -> Result<Messages, SimError> {
        let mut m = Messages::default();
        for (lang, path) in [(Lang::En, &files.en), (Lang::Zh, &files.zh)] {
            m.read(lang, path)?;
        }
        Ok(m)
    }

    fn read(&mut self, lang: Lang, path: &Path) -> Result<(), SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::File {
            path: path.to_path_buf(),
            source,
        })?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let l: Line = serde_json::from_str(line).map_err(|e| SimError::Config {
                path: path.to_path_buf(),
                reason: format!("line {}: {e}", i + 1),
            })?;
            self.pools.entry((lang, l.label)).or_default().push(l.text);
        }
        Ok(())
    }

    /// Refuses labels with no message in either language.
    pub fn check(&self, labels: &[&str]) -> Result<(), String> {
        for l in labels {
            for lang in [Lang::En, Lang::Zh] {
                if !self.pools.contains_key(&(lang, l.to_string())) {
                    return Err(format!("no {lang:?} message labelled `{l}`"));
                }
            }
        }
        Ok(())
    }

    /// A message about one of `labels`, in `lang`.
    pub fn draw(&self, lang: Lang, labels: &[String], rng: &mut impl Rng) -> Option<&str> {
        let label = labels.get(rng.random_range(0..labels.len().max(1)))?;
        let pool = self.pools.get(&(lang, label.clone()))?;
        pool.get(rng.random_range(0..pool.len())).map(String::as_str)
    }
}
