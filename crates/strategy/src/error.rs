//! Why a strategy file (catalog, offers, rules) was refused. Operators fix these files by hand,
//! so every error says file, line (when the file has lines) and field.
use std::fmt;
use std::path::PathBuf;

/// A file could not be read or says something this engine refuses.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    /// Reading the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The catalog's product names do not fit in one automaton (far beyond any real catalog).
    #[error("catalog names: {0}")]
    Linker(#[from] aho_corasick::BuildError),
    /// The file is malformed or refers to something that does not exist.
    #[error("{}", Located { path, line: *line, field, reason })]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The field at fault, e.g. `product[3].price` or `rule "vip battery".when.intent`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl StrategyError {
    /// An [`StrategyError::Invalid`].
    pub fn invalid(
        path: impl Into<PathBuf>,
        line: Option<usize>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        StrategyError::Invalid {
            path: path.into(),
            line,
            field: field.into(),
            reason: reason.into(),
        }
    }
}

struct Located<'a> {
    path: &'a PathBuf,
    line: Option<usize>,
    field: &'a str,
    reason: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// 1-based line of byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A TOML parse error as a located error (toml reports the byte span).
pub(crate) fn toml_error(path: &std::path::Path, text: &str, e: &toml::de::Error) -> StrategyError {
    let line = e.span().map(|s| line_of(text, s.start));
    // The key on that line (`price = "3x9.00"` → `price`), when the line is a key/value pair.
    let field = line
        .and_then(|l| text.lines().nth(l.saturating_sub(1)))
        .and_then(|t| t.split_once('='))
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with(['[', '#', '"']))
        .unwrap_or_default();
    StrategyError::invalid(path, line, field, e.message().trim().to_string())
}
