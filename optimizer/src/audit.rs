//! The audit trail: every candidate judged, every version pushed or superseded, written to the
//! audit log before anyone is told, and the latest entries kept in memory for `Optimizer.Audit`.
//!
//! The log is the record (`nudge_records::AuditRecord`, read by anything that reads JSON
//! Lines); memory holds only the tail an operator pages through, rebuilt from the log at start
//! so a restart does not blank the console's audit page. Entries older than the kept tail are
//! in the log, not in the RPC.
use nudge_proto::v1 as pb;
use nudge_records::audit::{Estimate, Estimates};
use nudge_records::{AuditEvent, AuditRecord, EventLog, LogConfig, LogError, Tailer};
use std::collections::VecDeque;
use std::sync::Mutex;

/// Entries `Optimizer.Audit` can page through.
pub const KEPT: usize = 1_000;
/// Entries one `Audit` call returns when it does not say.
const DEFAULT_LIMIT: usize = 100;

/// The audit log and its latest entries.
pub struct AuditTrail {
    log: EventLog,
    recent: Mutex<VecDeque<AuditRecord>>,
}

impl AuditTrail {
    /// Opens the log and reads its latest [`KEPT`] entries back. Lines that are not audit
    /// records (an older optimizer's, a torn write) are counted and logged, not served.
    /// The log grows by an entry per training round for as long as the optimizer runs, so it
    /// is read a chunk at a time and only the tail is kept: memory at start is bounded by
    /// [`KEPT`], not by the log's age.
    pub fn open(cfg: LogConfig) -> Result<Self, LogError> {
        let mut tail = Tailer::<AuditRecord>::new(&cfg.dir);
        let mut recent = VecDeque::with_capacity(KEPT);
        loop {
            let chunk = tail.poll_at_most(KEPT)?;
            if chunk.is_empty() {
                break;
            }
            for r in chunk {
                if recent.len() == KEPT {
                    recent.pop_front();
                }
                recent.push_back(r);
            }
        }
        if tail.malformed() > 0 {
            tracing::warn!(malformed = tail.malformed(), log = %cfg.dir.display(), "audit-log lines that are not audit records (not served)");
        }
        Ok(AuditTrail {
            log: EventLog::open(cfg)?,
            recent: Mutex::new(recent),
        })
    }

    /// Writes the entry (returning once it is as durable as the log is configured), then serves it. A failed write is
    /// logged and the entry is not served: what the RPC shows is what the log holds.
    pub async fn record(&self, time_ms: u64, event: AuditEvent) {
        let rec = AuditRecord::new(time_ms, event);
        if let Err(e) = self.log.append(&rec).await {
            tracing::error!(error = %e, id = %rec.id, "audit log");
            return;
        }
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == KEPT {
                recent.pop_front();
            }
            recent.push_back(rec);
        }
    }

    /// Up to `limit` entries (0: 100; at most [`KEPT`]), newest first, older than
    /// `before_ms` when it is not 0.
    pub fn latest(&self, limit: usize, before_ms: u64) -> Vec<AuditRecord> {
        let limit = if limit == 0 { DEFAULT_LIMIT } else { limit.min(KEPT) };
        let Ok(recent) = self.recent.lock() else {
            return Vec::new();
        };
        recent
            .iter()
            .rev()
            .filter(|r| before_ms == 0 || r.time_ms < before_ms)
            .take(limit)
            .cloned()
            .collect()
    }
}

/// The protobuf form of an entry, for `Optimizer.Audit`.
pub fn to_proto(r: &AuditRecord) -> pb::AuditEntry {
    let event = match &r.event {
        AuditEvent::Judged {
            candidate_version,
            serving_version,
            verdict,
        } => pb::audit_entry::Event::Judged(pb::Judged {
            candidate_version: candidate_version.clone(),
            serving_version: serving_version.clone(),
            pass: verdict.pass,
            rule: verdict.rule.clone(),
            candidate: Some(estimates(&verdict.candidate)),
            serving: Some(estimates(&verdict.serving)),
            observed_mean: verdict.observed_mean,
            train_examples: verdict.train_examples as u64,
            holdout_examples: verdict.holdout_examples as u64,
            training_json: match (&verdict.trunk, &verdict.rl) {
                (Some(t), _) => serde_json::to_string(t).unwrap_or_default(),
                (None, Some(rl)) => serde_json::to_string(rl).unwrap_or_default(),
                (None, None) => String::new(),
            },
        }),
        AuditEvent::Pushed {
            version,
            servers,
            push_ms,
        } => pb::audit_entry::Event::Pushed(pb::Pushed {
            version: version.clone(),
            servers: servers.clone(),
            push_ms: *push_ms,
        }),
        AuditEvent::Superseded { version, reason } => pb::audit_entry::Event::Superseded(pb::Superseded {
            version: version.clone(),
            reason: reason.clone(),
        }),
    };
    pb::AuditEntry {
        id: r.id.clone(),
        time_unix_ms: i64::try_from(r.time_ms).unwrap_or(i64::MAX),
        event: Some(event),
    }
}

fn estimates(e: &Estimates) -> pb::OpeEstimates {
    let one = |e: &Estimate| pb::OpeEstimate {
        value: e.value,
        lo: e.lo,
        hi: e.hi,
        n: e.n as u64,
    };
    pb::OpeEstimates {
        ips: Some(one(&e.ips)),
        snips: Some(one(&e.snips)),
        dr: Some(one(&e.dr)),
        effective_samples: e.effective_samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nudge_records::Durability;

    fn superseded(v: &str) -> AuditEvent {
        AuditEvent::Superseded {
            version: v.into(),
            reason: "test".into(),
        }
    }

    #[tokio::test]
    async fn entries_are_served_newest_first_and_read_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = || LogConfig::new(dir.path(), "audit", Durability::Always);
        // An older optimizer's untyped line is not served, and does not stop the rest.
        std::fs::write(
            dir.path().join("audit-1-0.jsonl"),
            "{\"time_ms\":1,\"pushed_version\":\"v0\"}\n",
        )
        .unwrap();
        let trail = AuditTrail::open(cfg()).unwrap();
        for i in 1..=5u64 {
            trail.record(i * 10, superseded(&format!("v{i}"))).await;
        }
        let ids = |rs: Vec<AuditRecord>| rs.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(trail.latest(2, 0)), ["superseded-v5", "superseded-v4"]);
        assert_eq!(ids(trail.latest(2, 40)), ["superseded-v3", "superseded-v2"]);
        drop(trail);
        let trail = AuditTrail::open(cfg()).unwrap();
        assert_eq!(trail.latest(0, 0).len(), 5);
        let newest = to_proto(&trail.latest(1, 0)[0]);
        assert_eq!(newest.id, "superseded-v5");
        assert_eq!(newest.time_unix_ms, 50);
        assert!(matches!(newest.event, Some(pb::audit_entry::Event::Superseded(s)) if s.version == "v5"));
    }
}
