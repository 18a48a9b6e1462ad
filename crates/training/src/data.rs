//! Labelled examples from JSONL or CSV files, and the task a head is trained for. Errors name
//! the file and line, because the reader is a data scientist fixing a file.
use crate::error::TrainError;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

/// One labelled text.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The message as written.
    pub text: String,
    /// Its gold label.
    pub label: String,
}

/// Which fields (JSONL) or header columns (CSV) hold the text and the label, and which rows to
/// take.
#[derive(Debug, Clone)]
pub struct Columns {
    /// Field or column of the text (default `text`).
    pub text: String,
    /// Field or column of the label (default `label`).
    pub label: String,
    /// Keep only rows whose [`LANG_FIELD`] is this language. A file without that field is
    /// taken whole: a file in one language need not say which, and a bilingual file that
    /// tags its rows can feed a one-language bundle without being split by hand.
    pub lang: Option<String>,
}

/// The field (JSONL) or column (CSV) that names a row's language.
pub const LANG_FIELD: &str = "lang";

impl Default for Columns {
    fn default() -> Self {
        Self {
            text: "text".into(),
            label: "label".into(),
            lang: None,
        }
    }
}

impl Columns {
    /// Whether a row whose language field holds `lang` (`None`: no such field) is taken.
    fn takes(&self, lang: Option<&str>) -> bool {
        match (&self.lang, lang) {
            (Some(want), Some(got)) => want == got,
            _ => true,
        }
    }
}

/// Reads JSONL `{"text", "label"}`; errors name the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Example>, TrainError> {
    read_examples(path, &Columns::default())
}

/// Reads labelled examples from JSONL, or from CSV (with a header row) when the file name ends
/// in `.csv`. Errors name the file and the line; blank lines are skipped.
pub fn read_examples(path: &Path, cols: &Columns) -> Result<Vec<Example>, TrainError> {
    let is_csv = path
        .extension()
        .is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case("csv"));
    let out = if is_csv {
        read_csv(path, cols)?
    } else {
        read_json_lines(path, cols)?
    };
    if out.is_empty() {
        return Err(TrainError::invalid(
            path,
            match &cols.lang {
                Some(l) => format!("no examples with {LANG_FIELD} `{l}`"),
                None => "no examples".into(),
            },
        ));
    }
    Ok(out)
}

fn example(
    path: &Path,
    line: usize,
    text: Option<&str>,
    label: Option<&str>,
    cols: &Columns,
) -> Result<Example, TrainError> {
    match (text, label) {
        (Some(t), Some(l)) if !t.trim().is_empty() && !l.trim().is_empty() => Ok(Example {
            text: t.to_string(),
            label: l.trim().to_string(),
        }),
        _ => Err(TrainError::invalid(
            path,
            format!(
                "line {line}: needs non-empty string fields `{}` and `{}`",
                cols.text, cols.label
            ),
        )),
    }
}

fn read_json_lines(path: &Path, cols: &Columns) -> Result<Vec<Example>, TrainError> {
    let f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| TrainError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| TrainError::invalid(path, format!("line {}: malformed JSON: {e}", i + 1)))?;
        let text = v.get(&cols.text).and_then(|t| t.as_str());
        let label = v.get(&cols.label).and_then(|t| t.as_str());
        if cols.takes(v.get(LANG_FIELD).and_then(|l| l.as_str())) {
            out.push(example(path, i + 1, text, label, cols)?);
        }
    }
    Ok(out)
}

fn read_csv(path: &Path, cols: &Columns) -> Result<Vec<Example>, TrainError> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .map_err(|e| TrainError::invalid(path, format!("reading CSV: {e}")))?;
    let headers = r
        .headers()
        .map_err(|e| TrainError::invalid(path, format!("line 1: reading the CSV header: {e}")))?
        .clone();
    let find = |name: &str| {
        headers.iter().position(|h| h.trim() == name).ok_or_else(|| {
            TrainError::invalid(
                path,
                format!(
                    "line 1: no column `{name}` in the header ({})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let (ti, li) = (find(&cols.text)?, find(&cols.label)?);
    let lang_col = headers.iter().position(|h| h.trim() == LANG_FIELD);
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            TrainError::invalid(path, format!("line {line}: malformed CSV: {e}"))
        })?;
        let line = rec.position().map_or(0, |p| p.line()) as usize;
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if cols.takes(lang_col.and_then(|c| rec.get(c)).map(str::trim)) {
            out.push(example(path, line, rec.get(ti), rec.get(li), cols)?);
        }
    }
    Ok(out)
}

/// Which head `nudge train` fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// The intent head, with its out-of-scope rule.
    Intent,
    /// The sentiment head.
    Sentiment,
}

impl Task {
    /// The head's name in manifests and heads files.
    pub fn name(self) -> &'static str {
        match self {
            Task::Intent => "intent",
            Task::Sentiment => "sentiment",
        }
    }
}

/// Label list (sorted) and label indices; refuses a single class.
pub fn index_labels(path: &Path, examples: &[Example]) -> Result<(Vec<String>, Vec<usize>), TrainError> {
    let labels: Vec<String> = examples
        .iter()
        .map(|e| e.label.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if labels.len() < 2 {
        return Err(TrainError::invalid(
            path,
            format!(
                "only one class (`{}`): a classifier needs at least two",
                labels.first().cloned().unwrap_or_default()
            ),
        ));
    }
    let pos: HashMap<&str, usize> = labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let y = examples.iter().map(|e| pos[e.label.as_str()]).collect();
    Ok((labels, y))
}
