//! Durable consumption: batches of records, each acknowledged by its consumer only after the
//! consumer has made it durable on its side — and never handed out twice, however late
//! JetStream redelivers it.
//!
//! A record that does not parse, or fails its type's checks, is delivered too (as an `Err` with
//! the reason), so the consumer counts it and it is terminated — never a silent skip, never an
//! endless redelivery.
//!
//! Why a filter of our own: JetStream redelivers every message whose acknowledgement it does not
//! hold — an ack lost with a broken connection, or acks nats-server had not yet written when it
//! was killed (a restart can rewind the consumer by minutes). Such a copy may come long after the
//! consumer's own index of ids (bounded: the optimizer's ledger lets old decisions go) forgot it,
//! and would be written twice. A redelivered message keeps its stream sequence, so [`Ingest`]
//! records which sequences were made durable (as ranges, in a file beside the consumer's log,
//! written *before* the acks) and drops any delivery at or inside them: constant memory, any
//! delay.
//!
//! One gap is left between the consumer's write and that file's: a crash there leaves records in
//! the consumer's log whose sequences the file lacks. So the file also holds where the consumer's
//! log ended when it was written; at open the consumer reads what its log gained after that
//! point (one batch at most) and hands the ids to [`Ingest::kept_before`], and a redelivery of
//! one of them comes marked [`Delivery::kept`] instead of being written again.
use crate::{nats, ClusterError};
use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::StreamExt;
use nudge_records::{Cursor, Record};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One delivered message: the record (or why it is not one) and its acknowledgement.
pub struct Delivery<T> {
    /// The record, or why the message is not a valid `T`.
    pub record: Result<T, String>,
    /// How many times JetStream has delivered this message (1 the first time).
    pub delivered: i64,
    /// Its sequence in the stream (`None` only if JetStream sent no metadata).
    pub stream_seq: Option<u64>,
    /// The consumer's log has it already (written just before a crash): do not write it again.
    pub kept: bool,
    msg: jetstream::Message,
}

/// Stream sequences as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct SeqRanges(Vec<(u64, u64)>);

impl SeqRanges {
    fn contains(&self, seq: u64) -> bool {
        let i = self.0.partition_point(|&(_, hi)| hi < seq);
        self.0.get(i).is_some_and(|&(lo, _)| lo <= seq)
    }

    fn insert(&mut self, seq: u64) {
        self.insert_range(seq, seq);
    }

    fn insert_range(&mut self, lo: u64, hi: u64) {
        // Every range that overlaps or touches [lo, hi] merges into it.
        let start = self.0.partition_point(|&(_, h)| h.saturating_add(1) < lo);
        let end = self.0.partition_point(|&(l, _)| l <= hi.saturating_add(1));
        let (mut lo, mut hi) = (lo, hi);
        if start < end {
            lo = lo.min(self.0[start].0);
            hi = hi.max(self.0[end - 1].1);
        }
        self.0.splice(start..end, [(lo, hi)]);
    }

    /// Forgets everything above `last`.
    fn truncate_above(&mut self, last: u64) {
        self.0.retain(|&(lo, _)| lo <= last);
        if let Some(r) = self.0.last_mut() {
            r.1 = r.1.min(last);
        }
    }

    fn max(&self) -> Option<u64> {
        self.0.last().map(|&(_, hi)| hi)
    }
}

/// What [`Ingest`] keeps on disk: which sequences of which stream (the stream's creation time
/// tells a recreated stream, whose sequences start again at 1) are durable on the consumer's
/// side, and where the consumer's log ended then. `format` 1, JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ConsumedFile {
    format: u32,
    stream: String,
    created: String,
    durable: SeqRanges,
    log_end: Option<Cursor>,
}

const CONSUMED_FORMAT: u32 = 1;

fn load_consumed(path: &Path) -> Result<Option<ConsumedFile>, ClusterError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, e)),
    };
    let c: ConsumedFile = serde_json::from_slice(&bytes).map_err(|e| io_error(path, std::io::Error::other(e)))?;
    if c.format != CONSUMED_FORMAT {
        return Err(io_error(
            path,
            std::io::Error::other(format!("format {} (this build reads {CONSUMED_FORMAT})", c.format)),
        ));
    }
    Ok(Some(c))
}

/// Written whole, synced, then renamed over the old one: a crash leaves one or the other.
fn save_consumed(path: &Path, c: &ConsumedFile) -> Result<(), ClusterError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec(c).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, source: std::io::Error) -> ClusterError {
    ClusterError::Log(nudge_records::LogError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A durable pull consumer of one stream, pulling continuously (so a record arrives within
/// milliseconds of its publication) and handing out what has arrived as batches (so the
/// consumer's writes group-commit). Messages already made durable are acknowledged again and
/// never handed out (see the module docs).
pub struct Ingest<T> {
    messages: pull::Stream,
    consumed: ConsumedFile,
    path: PathBuf,
    kept_before: HashSet<String>,
    redeliveries: u64,
    _record: PhantomData<fn() -> T>,
}

fn delivery<T: Record>(
    m: Result<jetstream::Message, async_nats::error::Error<jetstream::consumer::pull::MessagesErrorKind>>,
) -> Result<Delivery<T>, ClusterError> {
    let msg = m.map_err(|e| nats("pulling")(&e))?;
    let (delivered, stream_seq) = match msg.info() {
        Ok(i) => (i.delivered, Some(i.stream_sequence)),
        Err(_) => (1, None),
    };
    let record = serde_json::from_slice::<T>(&msg.payload)
        .map_err(|e| e.to_string())
        .and_then(|r| r.check().map(|()| r).map_err(|e| e.to_string()));
    Ok(Delivery {
        record,
        delivered,
        stream_seq,
        kept: false,
        msg,
    })
}

impl<T: Record> Ingest<T> {
    /// Opens `durable` on `stream`, with its record of durable sequences in `state_dir`.
    pub(crate) async fn open(
        js: &jetstream::Context,
        stream: &str,
        durable: &str,
        state_dir: &Path,
    ) -> Result<Self, ClusterError> {
        let mut s = js.get_stream(stream).await.map_err(|e| nats("opening a stream")(&e))?;
        let info = s.info().await.map_err(|e| nats("reading stream info")(&e))?;
        std::fs::create_dir_all(state_dir).map_err(|e| io_error(state_dir, e))?;
        let path = state_dir.join(format!(".consumed-{durable}.json"));
        let created = info.created.to_string();
        let mut consumed = match load_consumed(&path)? {
            Some(c) if c.stream == stream && c.created == created => c,
            Some(c) => {
                tracing::warn!(%stream, was = %c.created, now = %created, "the stream was recreated: its sequences start again");
                ConsumedFile::default()
            }
            None => ConsumedFile::default(),
        };
        consumed.format = CONSUMED_FORMAT;
        consumed.stream = stream.to_string();
        consumed.created = created;
        // Sequences the stream never assigned are not ours: if nats-server lost its tail, the
        // next messages reuse them.
        if consumed.durable.max().is_some_and(|m| m > info.state.last_sequence) {
            tracing::warn!(%stream, last = info.state.last_sequence, "the stream is shorter than what was consumed");
            consumed.durable.truncate_above(info.state.last_sequence);
        }
        // Below the stream's first message nothing can be delivered any more: one range.
        if info.state.first_sequence > 1 {
            consumed.durable.insert_range(1, info.state.first_sequence - 1);
        }
        let consumer = s
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.to_string()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    // Long enough for a batch's group-committed fsync; what a crashed consumer
                    // held comes back this soon.
                    ack_wait: Duration::from_secs(5),
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| nats("opening a durable consumer")(&e))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(1_000)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| nats("pulling")(&e))?;
        Ok(Self {
            messages,
            consumed,
            path,
            kept_before: HashSet::new(),
            redeliveries: 0,
            _record: PhantomData,
        })
    }

    /// What has arrived and was not consumed before, up to `max` messages; waits at most
    /// `wait` for the first message (an empty batch: nothing new came, though redeliveries may
    /// have been dropped). An error means the pull broke: open a new `Ingest`.
    pub async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery<T>>, ClusterError> {
        let mut out = Vec::new();
        let first = match tokio::time::timeout(wait, self.messages.next()).await {
            Err(_) => return Ok(out),
            Ok(None) => return Err(nats("pulling")(&"the consumer's stream ended")),
            Ok(Some(m)) => m,
        };
        self.keep_new(delivery(first)?, &mut out).await?;
        while out.len() < max {
            match futures::FutureExt::now_or_never(self.messages.next()) {
                Some(Some(m)) => self.keep_new(delivery(m)?, &mut out).await?,
                Some(None) | None => break,
            }
        }
        Ok(out)
    }

    async fn keep_new(&mut self, mut d: Delivery<T>, out: &mut Vec<Delivery<T>>) -> Result<(), ClusterError> {
        if d.stream_seq.is_some_and(|s| self.consumed.durable.contains(s)) {
            self.redeliveries += 1;
            return d.msg.ack().await.map_err(|e| nats("ack")(&e));
        }
        if let Ok(r) = &d.record {
            d.kept = self.kept_before.contains(r.id());
        }
        out.push(d);
        Ok(())
    }

    /// Where the consumer's log ended when this consumer last recorded a batch (`None`: never,
    /// in this directory). What the log holds after it was written by a batch that was not
    /// recorded: read its ids and pass them to [`Ingest::kept_before`].
    pub fn log_end(&self) -> Option<&Cursor> {
        self.consumed.log_end.as_ref()
    }

    /// Ids the consumer's log holds beyond [`Ingest::log_end`]: their redeliveries come marked
    /// [`Delivery::kept`].
    pub fn kept_before(&mut self, ids: impl IntoIterator<Item = String>) {
        self.kept_before.extend(ids);
    }

    /// The consumer has made `batch` durable on its side (or has its records already), and
    /// its log now ends at `log_end`: records that, then acknowledges each (malformed ones
    /// terminated). Call it only after the durable write; on error nothing was acknowledged
    /// and JetStream redelivers.
    pub async fn done(&mut self, batch: &[Delivery<T>], log_end: Cursor) -> Result<(), ClusterError> {
        let before = self.consumed.clone();
        for s in batch.iter().filter_map(|d| d.stream_seq) {
            self.consumed.durable.insert(s);
        }
        self.consumed.log_end = Some(log_end);
        if self.consumed != before {
            let (path, file) = (self.path.clone(), self.consumed.clone());
            let saved = tokio::task::spawn_blocking(move || save_consumed(&path, &file))
                .await
                .map_err(|e| io_error(&self.path, std::io::Error::other(e)))
                .and_then(|r| r);
            if let Err(e) = saved {
                self.consumed = before;
                return Err(e);
            }
        }
        for d in batch {
            let acked = match d.record {
                Ok(_) => d.msg.ack().await,
                Err(_) => d.msg.ack_with(AckKind::Term).await,
            };
            acked.map_err(|e| nats("ack")(&e))?;
        }
        Ok(())
    }

    /// Deliveries dropped because their sequence was already durable (redeliveries).
    pub fn redeliveries_dropped(&self) -> u64 {
        self.redeliveries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(r: &SeqRanges) -> Vec<(u64, u64)> {
        r.0.clone()
    }

    #[test]
    fn sequences_merge_into_ranges_and_membership_is_exact() {
        let mut r = SeqRanges::default();
        for s in [5, 3, 4, 10, 1, 12, 11] {
            r.insert(s);
        }
        assert_eq!(ranges(&r), vec![(1, 1), (3, 5), (10, 12)]);
        r.insert(2);
        assert_eq!(ranges(&r), vec![(1, 5), (10, 12)]);
        r.insert(4);
        assert_eq!(ranges(&r), vec![(1, 5), (10, 12)]);
        for (s, want) in [
            (0, false),
            (1, true),
            (5, true),
            (6, false),
            (9, false),
            (10, true),
            (13, false),
        ] {
            assert_eq!(r.contains(s), want, "{s}");
        }
        r.insert_range(6, 9);
        assert_eq!(ranges(&r), vec![(1, 12)]);
        r.insert_range(20, 30);
        r.insert_range(14, 40);
        assert_eq!(ranges(&r), vec![(1, 12), (14, 40)]);
        r.truncate_above(20);
        assert_eq!(ranges(&r), vec![(1, 12), (14, 20)]);
        r.truncate_above(13);
        assert_eq!(ranges(&r), vec![(1, 12)]);
        assert_eq!(r.max(), Some(12));
        r.insert(u64::MAX);
        assert!(r.contains(u64::MAX) && !r.contains(u64::MAX - 1));
    }

    #[test]
    fn the_file_round_trips_and_a_foreign_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".consumed-x.json");
        assert!(load_consumed(&p).unwrap().is_none());
        let mut c = ConsumedFile {
            format: CONSUMED_FORMAT,
            stream: "S".into(),
            created: "2026-11-30 0:00:00.0 +00:00:00".into(),
            durable: SeqRanges::default(),
            log_end: Some(Cursor {
                segment: "decisions-1.jsonl".into(),
                offset: 300,
                line: 2,
            }),
        };
        c.durable.insert_range(1, 900);
        c.durable.insert(902);
        save_consumed(&p, &c).unwrap();
        assert_eq!(load_consumed(&p).unwrap(), Some(c.clone()));
        c.format = 2;
        save_consumed(&p, &c).unwrap();
        let err = load_consumed(&p).unwrap_err().to_string();
        assert!(err.contains(".consumed-x.json") && err.contains("format 2"), "{err}");
    }
}
