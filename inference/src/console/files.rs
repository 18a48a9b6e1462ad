//! Versions of the files operators edit — the rules, the catalog and its products CSV: every text that was ever
//! made current, numbered, with who made it, when and why, so any two can be compared and any
//! one made current again. A rollback is a new version with an old text: history only grows,
//! and the change log says who rolled back what.
//!
//! Each version is one JSON file (`<dir>/<kind>/<n>.json`, written atomically); `CURRENT` names
//! the one the file holds. A file changed on disk behind the console's back (and reloaded
//! through `StrategyAdmin`) is recorded as a version of its own when the console starts.
use super::ApiError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FileKind {
    /// `[strategy] rules`.
    Rules,
    /// `[strategy] catalog` (the TOML file).
    Catalog,
    /// The products CSV the catalog names (`products_csv`), if it names one.
    Products,
}

impl FileKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            FileKind::Rules => "rules",
            FileKind::Catalog => "catalog",
            FileKind::Products => "products",
        }
    }
}

/// One version of a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TextVersion {
    pub version: u32,
    pub time_ms: u64,
    pub author: String,
    pub note: String,
    pub text: String,
}

/// What a list shows of a version.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VersionInfo {
    pub version: u32,
    pub time_ms: u64,
    pub author: String,
    pub note: String,
    pub current: bool,
}

pub(crate) struct TextVersions {
    kind: FileKind,
    dir: PathBuf,
}

fn io(path: &Path, e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ApiError> {
    crate::atomic::write_atomic(path, bytes).map_err(|e| io(path, e))
}

impl TextVersions {
    /// Opens `<dir>/<kind>`, recording the serving file's `text` as a version if it is not the
    /// current one (the first start, or an edit on disk).
    pub(crate) fn open(dir: &Path, kind: FileKind, text: &str, now_ms: u64) -> Result<Self, ApiError> {
        let me = Self::at(dir, kind)?;
        me.sync(text, now_ms)?;
        Ok(me)
    }

    /// Opens `<dir>/<kind>` as it is (a file the server does not have yet: a products CSV the
    /// catalog does not name).
    pub(crate) fn at(dir: &Path, kind: FileKind) -> Result<Self, ApiError> {
        let dir = dir.join(kind.name());
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        Ok(Self { kind, dir })
    }

    /// Records the file's `text` as the current version if it is not: the first start, an edit
    /// on disk, or (in a cluster) a change made on another server that this one follows.
    pub(crate) fn sync(&self, text: &str, now_ms: u64) -> Result<(), ApiError> {
        let current = self.current()?.map(|n| self.get(n)).transpose()?;
        let n = match current {
            Some(v) if v.text == text => return Ok(()),
            Some(_) => self.add(
                text,
                "file",
                "changed outside this console (on disk, or on another server of the cluster)",
                now_ms,
            )?,
            None => {
                let note = format!("the {} file the server started with", self.kind.name());
                self.add(text, "config", &note, now_ms)?
            }
        };
        self.set_current(n)
    }

    fn path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{n:06}.json"))
    }

    /// Every version, oldest first.
    pub(crate) fn list(&self) -> Result<Vec<VersionInfo>, ApiError> {
        let current = self.current()?;
        let mut numbers: Vec<u32> = std::fs::read_dir(&self.dir)
            .map_err(|e| io(&self.dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        numbers.sort_unstable();
        numbers
            .into_iter()
            .map(|n| {
                self.get(n).map(|v| VersionInfo {
                    version: v.version,
                    time_ms: v.time_ms,
                    author: v.author,
                    note: v.note,
                    current: Some(n) == current,
                })
            })
            .collect()
    }

    pub(crate) fn get(&self, n: u32) -> Result<TextVersion, ApiError> {
        let p = self.path(n);
        let bytes = std::fs::read(&p)
            .map_err(|_| ApiError::NotFound(format!("version: no {} version {n}", self.kind.name())))?;
        serde_json::from_slice(&bytes).map_err(|e| io(&p, e))
    }

    pub(crate) fn current(&self) -> Result<Option<u32>, ApiError> {
        let p = self.dir.join("CURRENT");
        match std::fs::read_to_string(&p) {
            Ok(s) => s.trim().parse().map(Some).map_err(|e| io(&p, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p, e)),
        }
    }

    pub(crate) fn set_current(&self, n: u32) -> Result<(), ApiError> {
        write_atomic(&self.dir.join("CURRENT"), n.to_string().as_bytes())
    }

    /// The newest version whose text is `text`, else `text` stored as the next version (not
    /// current).
    pub(crate) fn find_or_add(&self, text: &str, author: &str, note: &str, now_ms: u64) -> Result<u32, ApiError> {
        for v in self.list()?.iter().rev() {
            if self.get(v.version)?.text == text {
                return Ok(v.version);
            }
        }
        self.add(text, author, note, now_ms)
    }

    /// Stores `text` as the next version (not yet current).
    pub(crate) fn add(&self, text: &str, author: &str, note: &str, now_ms: u64) -> Result<u32, ApiError> {
        let n = self.list()?.last().map_or(1, |v| v.version + 1);
        let v = TextVersion {
            version: n,
            time_ms: now_ms,
            author: author.to_string(),
            note: note.to_string(),
            text: text.to_string(),
        };
        let json = serde_json::to_vec_pretty(&v).map_err(|e| io(&self.path(n), e))?;
        write_atomic(&self.path(n), &json)?;
        Ok(n)
    }
}

/// A unified diff of two versions' texts (three lines of context).
pub(crate) fn diff(from: &TextVersion, to: &TextVersion) -> String {
    similar::TextDiff::from_lines(&from.text, &to.text)
        .unified_diff()
        .context_radius(3)
        .header(&format!("version {}", from.version), &format!("version {}", to.version))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_start_and_an_edit_on_disk_are_versions_and_a_diff_shows_the_change() {
        let d = tempfile::tempdir().unwrap();
        let v = TextVersions::open(d.path(), FileKind::Rules, "a = 1\n", 10).unwrap();
        assert_eq!(v.current().unwrap(), Some(1));
        // Started again on the same text: nothing new.
        let v = TextVersions::open(d.path(), FileKind::Rules, "a = 1\n", 20).unwrap();
        assert_eq!(v.list().unwrap().len(), 1);
        // The file changed behind the console's back.
        let v = TextVersions::open(d.path(), FileKind::Rules, "a = 2\n", 30).unwrap();
        let list = v.list().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!((list[1].author.as_str(), list[1].current), ("file", true));
        let n = v.add("a = 3\n", "ana", "three", 40).unwrap();
        assert_eq!(n, 3);
        assert_eq!(v.current().unwrap(), Some(2), "added, not yet current");
        let diff = diff(&v.get(1).unwrap(), &v.get(3).unwrap());
        assert!(diff.contains("-a = 1") && diff.contains("+a = 3"), "{diff}");
        assert!(matches!(v.get(9), Err(ApiError::NotFound(_))));
        // A text it has is found under its newest number; another is added, not made current.
        assert_eq!(v.find_or_add("a = 1\n", "s0", "synced", 50).unwrap(), 1);
        assert_eq!(v.find_or_add("a = 4\n", "s0", "synced", 50).unwrap(), 4);
        assert_eq!(v.find_or_add("a = 4\n", "s0", "synced", 60).unwrap(), 4);
        assert_eq!((v.list().unwrap().len(), v.current().unwrap()), (4, Some(2)));
    }
}
