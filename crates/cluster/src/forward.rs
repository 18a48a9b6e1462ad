//! The outbox: a local log followed into a stream.
//!
//! Publishing from the request path would make every answer wait on NATS, and lose the record
//! whenever NATS is down. Instead the request path appends to the local event log, as on one
//! machine, and this follower publishes what the log holds. Its cursor (how far JetStream has
//! acknowledged) is saved beside the log after each acknowledged batch, so a restart resends at
//! most the last unsaved batch — and those carry the same `Nats-Msg-Id`s as before, which the
//! stream's duplicate window drops.
use crate::{Cluster, ClusterError};
use nudge_records::{Cursor, Record, Tailer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Most records in flight at once (published, not yet acknowledged).
const BATCH: usize = 512;

/// What a forwarder has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct ForwarderStats {
    /// Records JetStream acknowledged (duplicates included).
    pub forwarded: AtomicU64,
    /// Of those, the ones JetStream already had.
    pub duplicates: AtomicU64,
    /// Batches that failed (NATS down, timed out); each is retried.
    pub failures: AtomicU64,
    /// Records read from the log and not yet acknowledged.
    pub backlog: AtomicU64,
}

/// Follows the log of `T` in a directory into a stream.
pub struct Forwarder;

fn cursor_path<T: Record>(dir: &Path) -> PathBuf {
    dir.join(format!(".forwarded-{}.json", T::PREFIX))
}

fn load_cursor<T: Record>(dir: &Path) -> Cursor {
    let p = cursor_path::<T>(dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            // Resending from the start is safe (ids deduplicate); skipping records is not.
            tracing::warn!(file = %p.display(), error = %e, "unreadable forwarder cursor: resending the log from its start");
            Cursor::default()
        }),
        Err(_) => Cursor::default(),
    }
}

fn save_cursor<T: Record>(dir: &Path, c: &Cursor) -> std::io::Result<()> {
    let p = cursor_path::<T>(dir);
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(c).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, &p)
}

impl Forwarder {
    /// Starts following `dir`'s `T` log into `stream`; runs until the task is aborted.
    pub fn spawn<T: Record + Send + Sync + 'static>(
        cluster: Cluster,
        dir: PathBuf,
        stream: &'static str,
        stats: Arc<ForwarderStats>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tailer = Some(Tailer::<T>::resume(&dir, &load_cursor::<T>(&dir)));
            let mut pending: Vec<T> = Vec::new();
            let mut ensured = false;
            let mut backoff = Duration::from_millis(50);
            loop {
                if pending.is_empty() {
                    let Some(mut t) = tailer.take() else { return };
                    let (t, read) = match tokio::task::spawn_blocking(move || {
                        let r = t.poll();
                        (t, r)
                    })
                    .await
                    {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::error!(error = %e, "forwarder: reading the log");
                            return;
                        }
                    };
                    tailer = Some(t);
                    match read {
                        Ok(records) if records.is_empty() => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        Ok(records) => pending = records,
                        Err(e) => {
                            tracing::warn!(error = %e, "forwarder: reading the log");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    }
                    stats.backlog.store(pending.len() as u64, Ordering::Relaxed);
                }
                let sent = async {
                    if !ensured {
                        cluster.ensure().await?;
                        ensured = true;
                    }
                    forward_all(&cluster, stream, &pending, &stats).await
                };
                match sent.await {
                    Ok(()) => {
                        pending.clear();
                        stats.backlog.store(0, Ordering::Relaxed);
                        backoff = Duration::from_millis(50);
                        if let Some(t) = &tailer {
                            if let Err(e) = save_cursor::<T>(&dir, &t.cursor()) {
                                tracing::warn!(error = %e, "forwarder: saving the cursor (records may be resent)");
                            }
                        }
                    }
                    Err(e) => {
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, backlog = pending.len(), retry_ms = backoff.as_millis() as u64, "forwarding to NATS failed; the local log keeps the records");
                        ensured = false;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        })
    }
}

/// Publishes `records` with up to `BATCH` acknowledgements outstanding; fails if any fails.
async fn forward_all<T: Record>(
    cluster: &Cluster,
    stream: &str,
    records: &[T],
    stats: &ForwarderStats,
) -> Result<(), ClusterError> {
    for chunk in records.chunks(BATCH) {
        let mut acks = Vec::with_capacity(chunk.len());
        for r in chunk {
            acks.push(cluster.send(stream, r).await?);
        }
        for ack in futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await {
            let ack = ack.map_err(|e| crate::nats("publish ack")(&e))?;
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
            if ack.duplicate {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}
