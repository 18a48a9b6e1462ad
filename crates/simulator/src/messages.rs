//! What simulated customers write: real customer-service messages (JSON lines with `text` and
//! `label`, the held-out split of the intent data by default), drawn by intent label and
//! language. The server sees only these texts, so its NLU's mistakes are part of every result.
use crate::config::{SimConfig, SimError};

/// The intent label of a customer's thanks once the problem is solved.
pub const THANKS: &str = "thanks_bye";
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
    /// Reads both languages' files, and refuses them unless every label the configuration's
    /// customers write about (and `thanks_bye`, the thanks after a solved problem) has messages
    /// in both languages.
    pub fn load(cfg: &SimConfig) -> Result<Messages, SimError> {
        let files = &cfg.messages;
        let mut m = Messages::default();
        for (lang, path) in [(Lang::En, &files.en), (Lang::Zh, &files.zh)] {
            m.read(lang, path)?;
        }
        for s in &cfg.segment {
            let labels: Vec<&str> = s.intents.iter().map(String::as_str).chain([THANKS]).collect();
            m.check(&labels).map_err(|reason| SimError::Config {
                path: files.en.clone(),
                reason: format!("segment `{}`: {reason}", s.name),
            })?;
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
    fn check(&self, labels: &[&str]) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn messages_are_drawn_by_label_and_language_and_unknown_labels_are_refused() {
        let mut cfg = SimConfig::load(Path::new("../../examples/sim/sim.toml")).unwrap();
        let m = Messages::load(&cfg).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let han = |t: &str| t.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
        let zh = m.draw(Lang::Zh, &["refund".to_string()], &mut rng).unwrap();
        assert!(han(zh), "{zh}");
        let en = m.draw(Lang::En, &["refund".to_string()], &mut rng).unwrap();
        assert!(!han(en), "{en}");
        cfg.segment[1].intents.push("no_such_intent".into());
        let e = Messages::load(&cfg).unwrap_err().to_string();
        assert!(e.contains("segment `shopper`") && e.contains("no_such_intent"), "{e}");
    }
}
