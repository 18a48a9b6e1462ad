//! Segmented append-only logs of JSON records, one per line (`pandas.read_json(f, lines=True)`,
//! `polars.read_ndjson(f)`).
//!
//! One writer thread owns the open segment. Appends from any number of tasks queue to it; it
//! writes whatever has queued, makes it durable once (group commit) and then acknowledges every
//! record of the group, so `Durability::Always` costs one fsync per group, not per record.
//! A segment is never reopened for appending: a crash can leave at most a torn last line in the
//! newest segment, which readers skip. Segments roll over by size and sort by name.
//!
//! The queue to the writer is bounded (`queue_records`): when the disk cannot keep up, an append
//! fails at once with [`LogError::Full`] (callers answer `RESOURCE_EXHAUSTED`) instead of
//! queueing without limit until the process runs out of memory. Nothing is half-accepted: a
//! refused record was never written and its caller was never told it was.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Why a log could not be opened, appended to or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The segment or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread has stopped (the process is shutting down).
    #[error("log writer stopped")]
    Closed,
    /// The record cannot be written as JSON.
    #[error("record is not serialisable: {0}")]
    Encode(#[from] serde_json::Error),
    /// The writer's queue holds `queue_records` records already; retry with backoff.
    #[error("log writer queue is full ({0} records waiting); retry with backoff")]
    Full(usize),
    /// The writer failed to write or sync the group this record was in.
    #[error("{path}: writing the group failed: {kind}")]
    Append {
        /// The segment being written.
        path: PathBuf,
        /// What the OS said.
        kind: std::io::ErrorKind,
    },
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
    Interval {
        /// Longest time between fsyncs, in milliseconds.
        ms: u64,
    },
    /// Acknowledge after the write; leave flushing to the OS.
    Never,
}

/// Where and how a log is written.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Directory of the segments (created if missing).
    pub dir: PathBuf,
    /// Segment file names are `<prefix>-<start ms>-<seq>.jsonl`.
    pub prefix: String,
    /// A segment is closed, and the next one started, past this size.
    pub segment_bytes: u64,
    /// When an append counts as done.
    pub durability: Durability,
    /// Most records queued for the writer; appends beyond fail with [`LogError::Full`].
    pub queue_records: usize,
}

impl LogConfig {
    /// A log of `prefix` segments in `dir`, 64 MiB segments, fsync before every ack, and a
    /// writer queue of 65,536 records.
    pub fn new(dir: impl Into<PathBuf>, prefix: &str, durability: Durability) -> Self {
        Self {
            dir: dir.into(),
            prefix: prefix.into(),
            segment_bytes: 64 << 20,
            durability,
            queue_records: 1 << 16,
        }
    }
}

/// What the writer tells each appender of its group: done, or the segment and error kind.
type GroupResult = Result<(), (PathBuf, std::io::ErrorKind)>;

struct Pending {
    line: Vec<u8>,
    done: oneshot::Sender<GroupResult>,
}

/// Appends records; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: mpsc::Sender<Pending>,
    capacity: usize,
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
        let capacity = cfg.queue_records.max(1);
        let (tx, mut rx) = mpsc::channel::<Pending>(capacity);
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
                    let r: GroupResult = w.write_group(&group).map_err(|e| match e {
                        LogError::Io { path, source } => (path, source.kind()),
                        _ => (PathBuf::new(), std::io::ErrorKind::Other),
                    });
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
        Ok(Self { tx, capacity })
    }

    /// Appends one record; returns once it is as durable as the log's `Durability` says.
    pub async fn append<T: serde::Serialize>(&self, record: &T) -> Result<(), LogError> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        let (done, wait) = oneshot::channel();
        self.tx.try_send(Pending { line, done }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LogError::Full(self.capacity),
            mpsc::error::TrySendError::Closed(_) => LogError::Closed,
        })?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((path, kind))) => Err(LogError::Append { path, kind }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cursor, Record, RecordError, Tailer};

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct N {
        i: i64,
    }

    impl Record for N {
        const PREFIX: &'static str = "n";
        fn id(&self) -> &str {
            "n"
        }
        fn check(&self) -> Result<(), RecordError> {
            if self.i < 0 {
                return Err(RecordError::Invalid {
                    field: "i",
                    reason: "negative".into(),
                });
            }
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_all_land_rolling_segments() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(LogConfig {
            segment_bytes: 1_000,
            ..LogConfig::new(dir.path(), "n", Durability::Always)
        })
        .unwrap();
        let mut tail = Tailer::<N>::new(dir.path());
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(&N { i }).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let segs = segments(dir.path(), "n").unwrap();
        assert!(segs.len() > 3, "rolled over: {}", segs.len());
        let mut seen: Vec<i64> = tail.poll().unwrap().iter().map(|n| n.i).collect();
        seen.sort();
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
        assert!(tail.poll().unwrap().is_empty(), "nothing new");
        log.append(&N { i: 500 }).await.unwrap();
        assert_eq!(tail.poll().unwrap(), vec![N { i: 500 }]);
        assert_eq!(tail.malformed(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_writer_queue_refuses_at_once_and_keeps_everything_it_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(LogConfig {
            queue_records: 4,
            ..LogConfig::new(dir.path(), "n", Durability::Always)
        })
        .unwrap();
        // 5,000 appends at once against a queue of 4 and an fsync per group.
        let tasks: Vec<_> = (0..5_000)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { (i, log.append(&N { i }).await) })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let (ok, full): (Vec<_>, Vec<_>) = results.into_iter().partition(|(_, r)| r.is_ok());
        assert!(!full.is_empty(), "the queue never filled");
        for (_, r) in &full {
            assert!(matches!(r, Err(LogError::Full(4))), "{r:?}");
        }
        let mut accepted: Vec<i64> = ok.iter().map(|(i, _)| *i).collect();
        let (mut written, bad) = crate::read_all::<N>(dir.path()).unwrap();
        accepted.sort();
        written.sort_by_key(|n| n.i);
        assert_eq!(bad, 0);
        assert_eq!(
            written.iter().map(|n| n.i).collect::<Vec<_>>(),
            accepted,
            "exactly the accepted records"
        );
    }

    #[test]
    fn a_reader_resumed_from_its_cursor_reads_only_what_came_after() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("n-0000000000001-000001.jsonl");
        let b = dir.path().join("n-0000000000002-000002.jsonl");
        std::fs::write(&a, "{\"i\":1}\n{\"i\":2}\n").unwrap();
        std::fs::write(&b, "{\"i\":3}\n").unwrap();
        let mut t = Tailer::<N>::new(dir.path());
        assert_eq!(t.poll().unwrap().len(), 3);
        let cursor = t.cursor();
        assert_eq!(
            (cursor.segment.as_str(), cursor.offset, cursor.line),
            ("n-0000000000002-000002.jsonl", 8, 1)
        );
        let mut f = std::fs::OpenOptions::new().append(true).open(&b).unwrap();
        f.write_all(b"{\"i\":4}\n").unwrap();
        std::fs::write(dir.path().join("n-0000000000003-000003.jsonl"), "{\"i\":5}\n").unwrap();
        let mut again = Tailer::<N>::resume(dir.path(), &cursor);
        assert_eq!(again.poll().unwrap(), vec![N { i: 4 }, N { i: 5 }]);
        assert_eq!(
            Tailer::<N>::resume(dir.path(), &Cursor::default())
                .poll()
                .unwrap()
                .len(),
            5
        );
    }

    #[test]
    fn a_torn_last_line_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n-0000000000001-000001.jsonl");
        std::fs::write(&p, "{\"i\":1}\n{\"i\":2}\n{\"i\":").unwrap();
        let mut t = Tailer::<N>::new(dir.path());
        assert_eq!(t.poll().unwrap().len(), 2);
        // The writer finishes the line later (or never): only then is it read.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"3}\n").unwrap();
        assert_eq!(t.poll().unwrap(), vec![N { i: 3 }]);
        assert_eq!(t.malformed(), 0);
    }

    #[test]
    fn malformed_lines_are_counted_with_file_and_line_and_the_rest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n-0000000000001-000001.jsonl");
        // A renamed field, a failed check, not JSON at all, then a good record.
        std::fs::write(&p, "{\"i\":1}\n{\"index\":2}\n{\"i\":-3}\nnot json\n{\"i\":4}\n").unwrap();
        let mut t = Tailer::<N>::new(dir.path());
        assert_eq!(t.poll().unwrap(), vec![N { i: 1 }, N { i: 4 }]);
        assert_eq!(t.malformed(), 3);
        let last = t.last_malformed().unwrap();
        assert_eq!((last.path.as_path(), last.line), (p.as_path(), 4));
        // Appending to the same segment keeps counting lines from where it was.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"i\":-1}\n").unwrap();
        assert!(t.poll().unwrap().is_empty());
        assert_eq!(t.malformed(), 4);
        assert_eq!(t.last_malformed().unwrap().line, 6);
        assert!(t.last_malformed().unwrap().reason.contains("negative"));
    }

    #[test]
    fn a_decision_from_an_unknown_schema_is_refused_loudly() {
        use crate::decision::{DecisionRecord, DECISION_SCHEMA};
        let dir = tempfile::tempdir().unwrap();
        let rec = DecisionRecord {
            schema: DECISION_SCHEMA,
            decision_id: "d1".into(),
            time_ms: 1,
            conversation_id: "c".into(),
            customer: String::new(),
            channel: "web".into(),
            policy_version: "v1".into(),
            model_version: String::new(),
            context: Default::default(),
            candidates: vec![],
            offer_id: String::new(),
            option: 0,
            propensity: 1.0,
            probabilities: vec![1.0],
            scores: vec![0.0],
            how: "greedy".into(),
        };
        let mut future = serde_json::to_value(&rec).unwrap();
        future["schema"] = serde_json::json!(DECISION_SCHEMA + 1);
        let lines = format!("{}\n{}\n", serde_json::to_string(&rec).unwrap(), future);
        std::fs::write(dir.path().join("decisions-0000000000001-000001.jsonl"), lines).unwrap();
        let (read, malformed) = crate::read_all::<DecisionRecord>(dir.path()).unwrap();
        assert_eq!(read, vec![rec]);
        assert_eq!(malformed, 1);
    }
}
