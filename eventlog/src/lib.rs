//! Segmented append-only logs of JSON records, one per line (`pandas.read_json(f, lines=True)`,
//! `polars.read_ndjson(f)`).
//!
//! One writer thread owns the open segment. Appends from any number of tasks queue to it; it
//! writes whatever has queued, makes it durable once (group commit) and then acknowledges every
//! record of the group, so `Durability::Always` costs one fsync per group, not per record.
//! A segment is never reopened for appending: a crash can leave at most a torn last line in the
//! newest segment, which readers skip. Segments roll over by size and sort by name.
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log writer stopped")]
    Closed,
    #[error("record is not serialisable: {0}")]
    Encode(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Durability {
    /// fsync before acknowledging (group commit).
    Always,
    /// Acknowledge after the write; fsync at most this often (a crash loses ≤ that much).
    Interval { ms: u64 },
    /// Acknowledge after the write; leave flushing to the OS.
    Never,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// Segment file names are `<prefix>-<start ms>-<seq>.jsonl`.
    pub prefix: String,
    pub segment_bytes: u64,
    pub durability: Durability,
}

struct Pending {
    line: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Appends records; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: mpsc::UnboundedSender<Pending>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

struct Writer {
    cfg: LogConfig,
    file: Option<(PathBuf, File, u64)>,
    seq: u64,
    last_sync: Instant,
    dirty: bool,
}

impl Writer {
    fn open_segment(&mut self) -> Result<(), LogError> {
        self.seq += 1;
        let path = self
            .cfg
            .dir
            .join(format!("{}-{:013}-{:06}.jsonl", self.cfg.prefix, now_ms(), self.seq));
        let f = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        // The new name must survive a crash too.
        if let Ok(d) = File::open(&self.cfg.dir) {
            let _ = d.sync_all();
        }
        self.file = Some((path, f, 0));
        Ok(())
    }

    fn write_group(&mut self, group: &[Pending]) -> Result<(), LogError> {
        let mut start = 0;
        while start < group.len() {
            let full = self
                .file
                .as_ref()
                .is_none_or(|(_, _, size)| *size >= self.cfg.segment_bytes);
            if full {
                // The finished segment is made durable before records go to the next one.
                if let Some((p, f, _)) = &self.file {
                    f.sync_all().map_err(io(p))?;
                }
                self.open_segment()?;
            }
            let Some((path, f, size)) = self.file.as_mut() else {
                return Err(LogError::Closed);
            };
            let mut buf = Vec::new();
            let mut end = start;
            while end < group.len() && (end == start || *size + (buf.len() as u64) < self.cfg.segment_bytes) {
                buf.extend_from_slice(&group[end].line);
                end += 1;
            }
            f.write_all(&buf).map_err(io(path))?;
            *size += buf.len() as u64;
            start = end;
        }
        self.dirty = true;
        if let Some((path, f, _)) = &self.file {
            match self.cfg.durability {
                Durability::Always => {
                    f.sync_data().map_err(io(path))?;
                    self.dirty = false;
                }
                Durability::Interval { ms } if self.last_sync.elapsed() >= Duration::from_millis(ms) => {
                    f.sync_data().map_err(io(path))?;
                    self.last_sync = Instant::now();
                    self.dirty = false;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl EventLog {
    /// Creates the directory if needed and starts a writer on a fresh segment.
    pub fn open(cfg: LogConfig) -> Result<Self, LogError> {
        std::fs::create_dir_all(&cfg.dir).map_err(io(&cfg.dir))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
        let mut w = Writer {
            cfg,
            file: None,
            seq: 0,
            last_sync: Instant::now(),
            dirty: false,
        };
        w.open_segment()?;
        std::thread::Builder::new()
            .name(format!("log-{}", w.cfg.prefix))
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut group = vec![first];
                    while let Ok(p) = rx.try_recv() {
                        group.push(p);
                        if group.len() >= 4096 {
                            break;
                        }
                    }
                    let r = w.write_group(&group).map_err(|e| e.to_string());
                    for p in group {
                        let _ = p.done.send(r.clone());
                    }
                }
                if let (true, Some((_, f, _))) = (w.dirty, &w.file) {
                    let _ = f.sync_all();
                }
            })
            .map_err(|e| LogError::Io {
                path: PathBuf::from("log writer thread"),
                source: e,
            })?;
        Ok(Self { tx })
    }

    /// Appends one record; returns once it is as durable as the log's `Durability` says.
    pub async fn append<T: serde::Serialize>(&self, record: &T) -> Result<(), LogError> {
        let mut line = serde_json::to_vec(record).map_err(|e| LogError::Encode(e.to_string()))?;
        line.push(b'\n');
        let (done, wait) = oneshot::channel();
        self.tx.send(Pending { line, done }).map_err(|_| LogError::Closed)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LogError::Io {
                path: PathBuf::from(e),
                source: std::io::Error::other("append failed"),
            }),
            Err(_) => Err(LogError::Closed),
        }
    }
}

/// Segment files of `prefix` in `dir`, oldest first.
pub fn segments(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, LogError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{prefix}-")) && n.ends_with(".jsonl"))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Follows a log: each `poll` returns the complete records appended since the last one.
/// A line without its newline (being written, or torn by a crash) is not returned.
pub struct Tailer {
    dir: PathBuf,
    prefix: String,
    /// (segment, byte offset of the first unread line)
    pos: Vec<(PathBuf, u64)>,
}

impl Tailer {
    pub fn new(dir: impl Into<PathBuf>, prefix: &str) -> Self {
        Self {
            dir: dir.into(),
            prefix: prefix.to_string(),
            pos: Vec::new(),
        }
    }

    pub fn poll(&mut self) -> Result<Vec<serde_json::Value>, LogError> {
        let mut out = Vec::new();
        for seg in segments(&self.dir, &self.prefix)? {
            let offset = match self.pos.iter().position(|(p, _)| *p == seg) {
                Some(i) => self.pos[i].1,
                None => {
                    self.pos.push((seg.clone(), 0));
                    0
                }
            };
            let mut f = File::open(&seg).map_err(io(&seg))?;
            f.seek(SeekFrom::Start(offset)).map_err(io(&seg))?;
            let mut r = BufReader::new(f);
            let mut consumed = offset;
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = r.read_until(b'\n', &mut line).map_err(io(&seg))?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                consumed += n as u64;
                // A line that is not JSON cannot come from this writer; skip it rather than stop.
                if let Ok(v) = serde_json::from_slice(&line) {
                    out.push(v);
                }
            }
            if let Some(e) = self.pos.iter_mut().find(|(p, _)| *p == seg) {
                e.1 = consumed;
            }
        }
        Ok(out)
    }
}

/// Every complete record of a log, oldest first.
pub fn read_all(dir: &Path, prefix: &str) -> Result<Vec<serde_json::Value>, LogError> {
    Tailer::new(dir, prefix).poll()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_all_land_rolling_segments() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(LogConfig {
            dir: dir.path().to_path_buf(),
            prefix: "decisions".into(),
            segment_bytes: 1_000,
            durability: Durability::Always,
        })
        .unwrap();
        let mut tail = Tailer::new(dir.path(), "decisions");
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(&serde_json::json!({"i": i})).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let segs = segments(dir.path(), "decisions").unwrap();
        assert!(segs.len() > 3, "rolled over: {}", segs.len());
        let mut seen: Vec<i64> = tail.poll().unwrap().iter().map(|v| v["i"].as_i64().unwrap()).collect();
        seen.sort();
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
        assert!(tail.poll().unwrap().is_empty(), "nothing new");
        log.append(&serde_json::json!({"i": 500})).await.unwrap();
        assert_eq!(tail.poll().unwrap(), vec![serde_json::json!({"i": 500})]);
    }

    #[test]
    fn a_torn_last_line_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("o-0000000000001-000001.jsonl"),
            "{\"a\":1}\n{\"a\":2}\n{\"a\":",
        )
        .unwrap();
        let mut t = Tailer::new(dir.path(), "o");
        assert_eq!(t.poll().unwrap().len(), 2);
        // The writer finishes the line later (or never): only then is it read.
        let p = dir.path().join("o-0000000000001-000001.jsonl");
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"3}\n").unwrap();
        assert_eq!(t.poll().unwrap(), vec![serde_json::json!({"a": 3})]);
    }
}
