//! KPIs across a cluster. Each server counts its own conversation events as it answers them
//! (and reads them back from its own log at start), so its own figures never wait on NATS. To
//! count the other servers' too, it forwards its event log to the `NUDGE_EVENTS` stream — the
//! outbox that carries decisions, so nothing is lost while NATS is down and nothing doubled
//! after a crash — and reads that stream from the oldest record it holds, skipping what it
//! published itself. Every console then charts, exports and judges experiments on the whole
//! cluster's conversations, whichever server it is on.
//!
//! The others' events are kept in memory only, like the rest of the KPIs: a server that
//! restarts reads the stream again, as far back as it retains (`cluster.retention_hours`).
//! Events older than the KPI window count for their experiment's customers only, as they do
//! when a server reads its own log back.
use crate::kpi::Kpis;
use crate::metrics::Metrics;
use futures::StreamExt;
use nudge_cluster::{Cluster, EVENTS_STREAM};
use nudge_records::ConversationEvent;
use std::sync::Arc;
use std::time::Duration;

/// How often the reader asks whether the stream it reads is still the one it started on.
const RECHECK: Duration = Duration::from_secs(2);

/// Reads the other servers' conversation events into `kpis` (those of its window into the
/// charts), resuming after the last record read for as long as it runs.
///
/// Resuming is by stream sequence, and a stream deleted and created again (by an operator, or a
/// NATS server that lost its store) numbers from 1 again: resumed at the old sequence, the
/// reader would skip every event until the new stream grew past it. So it notes when the stream
/// it reads was created, looks again every couple of seconds, and reads a new stream from its
/// start — what the old one held is counted already, and the new one holds only what came after.
pub(crate) async fn read_others(cluster: Cluster, kpis: Arc<Kpis>, metrics: Metrics) {
    let own = cluster.subject(EVENTS_STREAM);
    let count = |event: &str| metrics.cluster_events.with_label_values(&[event]).inc();
    let mut next = 1;
    let mut reading: Option<String> = None;
    loop {
        let created = async {
            cluster.ensure().await?;
            cluster.stream_created(EVENTS_STREAM).await
        };
        let created = match created.await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster's conversation events yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if reading.as_ref().is_some_and(|r| *r != created) {
            tracing::warn!(was = ?reading, now = %created, "the cluster's event stream was created anew: reading it from its start");
            count("events_stream_recreated");
            next = 1;
        }
        reading = Some(created.clone());
        match cluster.follow::<ConversationEvent>(EVENTS_STREAM, next).await {
            Ok(mut records) => {
                let mut recheck = tokio::time::interval(RECHECK);
                loop {
                    let r = tokio::select! {
                        r = records.next() => match r {
                            Some(r) => r,
                            None => break,
                        },
                        _ = recheck.tick() => match cluster.stream_created(EVENTS_STREAM).await {
                            Ok(now) if now == created => continue,
                            // Gone, recreated, or NATS away: start again (above).
                            _ => break,
                        },
                    };
                    let f = match r {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the cluster's conversation events (resumed)");
                            break;
                        }
                    };
                    next = f.sequence + 1;
                    if f.subject == own {
                        continue;
                    }
                    match f.record {
                        Ok(e) => {
                            kpis.observe_replayed(&e, crate::decide::now_ms());
                            count("events_read");
                        }
                        Err(reason) => {
                            count("events_malformed");
                            tracing::warn!(subject = %f.subject, sequence = f.sequence, %reason, "a message in the event stream is not a conversation event");
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the cluster's conversation events yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
