//! Reading logs back as typed records.
//!
//! A reader is where a contract silently breaks: if the server renames a field, an untyped
//! reader that skips what it cannot parse goes on "working" on zero records. So every line that
//! is complete but does not parse as `T`, or parses but fails `T`'s own checks (its schema
//! version first), is counted, logged with its file and line, and never silently dropped.
use crate::log::{segments, LogError};
use crate::Record;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

/// One complete line that was not a valid `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    /// The segment file.
    pub path: PathBuf,
    /// 1-based line number in that file.
    pub line: u64,
    /// Why it was refused.
    pub reason: String,
}

/// How far a reader has read: every segment that sorts before `segment`, and `segment` up to
/// byte `offset` (line `line`). A follower that must survive restarts (the stream forwarder)
/// saves it once what it read is safely elsewhere, and resumes from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// File name of the segment (not a path: the directory may move).
    pub segment: String,
    /// Byte offset of the first unread line.
    pub offset: u64,
    /// Lines of `segment` read.
    pub line: u64,
}

/// Follows a log: each `poll` returns the complete records appended since the last one.
/// A line without its newline (being written, or torn by a crash) is not read until it is
/// complete.
pub struct Tailer<T> {
    dir: PathBuf,
    /// (segment, byte offset of the first unread line, lines read so far)
    pos: Vec<(PathBuf, u64, u64)>,
    /// Segments sorting before this file name are not read (resumed from a cursor).
    skip_before: String,
    malformed: u64,
    last_malformed: Option<Malformed>,
    _record: PhantomData<fn() -> T>,
}

impl<T: Record> Tailer<T> {
    /// A reader of `T`'s segments (`<T::PREFIX>-*.jsonl`) in `dir`, from the start.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            pos: Vec::new(),
            skip_before: String::new(),
            malformed: 0,
            last_malformed: None,
            _record: PhantomData,
        }
    }

    /// A reader that starts where `cursor` says (from the start for the default cursor).
    pub fn resume(dir: impl Into<PathBuf>, cursor: &Cursor) -> Self {
        let dir = dir.into();
        let mut t = Self::new(dir.clone());
        if !cursor.segment.is_empty() {
            t.pos.push((dir.join(&cursor.segment), cursor.offset, cursor.line));
            t.skip_before = cursor.segment.clone();
        }
        t
    }

    /// Where the next poll starts: the newest segment seen and how far into it.
    pub fn cursor(&self) -> Cursor {
        self.pos
            .iter()
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(p, offset, line)| Cursor {
                segment: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                offset: *offset,
                line: *line,
            })
            .unwrap_or_default()
    }

    /// Lines seen so far that were not valid records.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// The most recent malformed line, for status pages.
    pub fn last_malformed(&self) -> Option<&Malformed> {
        self.last_malformed.as_ref()
    }

    /// The records completed since the last poll, oldest first.
    pub fn poll(&mut self) -> Result<Vec<T>, LogError> {
        self.poll_at_most(usize::MAX)
    }

    /// Like [`Tailer::poll`], but stops after `max` records (the next poll goes on from there):
    /// a long history is read in pieces a reader can fold away, never all at once.
    pub fn poll_at_most(&mut self, max: usize) -> Result<Vec<T>, LogError> {
        let mut out = Vec::new();
        for seg in segments(&self.dir, T::PREFIX)? {
            let name = seg
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name < self.skip_before {
                continue;
            }
            let i = match self.pos.iter().position(|(p, _, _)| *p == seg) {
                Some(i) => i,
                None => {
                    self.pos.push((seg.clone(), 0, 0));
                    self.pos.len() - 1
                }
            };
            let (_, offset, mut line_no) = self.pos[i].clone();
            let io = |source| LogError::Io {
                path: seg.clone(),
                source,
            };
            let mut f = File::open(&seg).map_err(io)?;
            f.seek(SeekFrom::Start(offset)).map_err(io)?;
            let mut r = BufReader::new(f);
            let mut consumed = offset;
            let mut line = Vec::new();
            while out.len() < max {
                line.clear();
                let n = r.read_until(b'\n', &mut line).map_err(io)?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                consumed += n as u64;
                line_no += 1;
                let parsed = serde_json::from_slice::<T>(&line)
                    .map_err(|e| e.to_string())
                    .and_then(|rec| rec.check().map(|()| rec).map_err(|e| e.to_string()));
                match parsed {
                    Ok(rec) => out.push(rec),
                    Err(reason) => {
                        tracing::warn!(file = %seg.display(), line = line_no, %reason, "malformed {} record skipped", T::PREFIX);
                        self.malformed += 1;
                        self.last_malformed = Some(Malformed {
                            path: seg.clone(),
                            line: line_no,
                            reason,
                        });
                    }
                }
            }
            self.pos[i].1 = consumed;
            self.pos[i].2 = line_no;
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }
}

/// Every complete record of `T` in `dir`, oldest first, and how many lines were malformed.
pub fn read_all<T: Record>(dir: &Path) -> Result<(Vec<T>, u64), LogError> {
    let mut t = Tailer::<T>::new(dir);
    let records = t.poll()?;
    Ok((records, t.malformed()))
}
