//! The optimizer's audit trail in the console: every candidate policy it trained, the
//! off-policy estimates on which it was judged against the version serving, the verdict and
//! what was pushed — so an operator can see why the policy serving is serving, and why a newer
//! one is not.
//!
//! The optimizer is another process (often another machine); the console asks each configured
//! one (`[console] optimizers`) through `Optimizer.Audit` when the page asks, and merges what
//! they answer, newest first. An optimizer that does not answer is shown as such beside what
//! the others said: a standby has no entries of its own until it leads, and one down must not
//! blank the page.
use super::{ApiError, Shared};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use nudge_proto::v1 as pb;
use nudge_records::audit::{Estimate, Estimates, RlReport, TrunkReport, Verdict};
use nudge_records::{AuditEvent, AuditRecord, AUDIT_SCHEMA};
use serde::Deserialize;
use std::time::Duration;

/// How long one optimizer may take to connect and answer.
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    /// Entries per optimizer (the optimizer refuses more than it keeps).
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    200
}

/// The domain record from `Optimizer.Audit`'s answer (None for an entry without an event, which
/// a newer optimizer might send).
fn from_proto(e: pb::AuditEntry) -> Option<AuditRecord> {
    let event = match e.event? {
        pb::audit_entry::Event::Judged(j) => {
            let (trunk, rl) = training(&j.training_json);
            AuditEvent::Judged {
                candidate_version: j.candidate_version,
                serving_version: j.serving_version,
                verdict: Box::new(Verdict {
                    pass: j.pass,
                    rule: j.rule,
                    candidate: estimates(j.candidate),
                    serving: estimates(j.serving),
                    observed_mean: j.observed_mean,
                    train_examples: j.train_examples as usize,
                    holdout_examples: j.holdout_examples as usize,
                    trunk,
                    rl,
                }),
            }
        }
        pb::audit_entry::Event::Pushed(p) => AuditEvent::Pushed {
            version: p.version,
            servers: p.servers,
            push_ms: p.push_ms,
        },
        pb::audit_entry::Event::Superseded(s) => AuditEvent::Superseded {
            version: s.version,
            reason: s.reason,
        },
    };
    Some(AuditRecord {
        schema: AUDIT_SCHEMA,
        id: e.id,
        time_ms: u64::try_from(e.time_unix_ms).unwrap_or(0),
        event,
    })
}

/// The learner's report: an RL report names its learner, a trunk report its layers.
fn training(json: &str) -> (Option<TrunkReport>, Option<RlReport>) {
    if json.is_empty() {
        return (None, None);
    }
    if let Ok(rl) = serde_json::from_str::<RlReport>(json) {
        return (None, Some(rl));
    }
    (serde_json::from_str::<TrunkReport>(json).ok(), None)
}

fn estimates(e: Option<pb::OpeEstimates>) -> Estimates {
    let e = e.unwrap_or_default();
    let one = |e: Option<pb::OpeEstimate>| {
        let e = e.unwrap_or(pb::OpeEstimate {
            value: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
            n: 0,
        });
        Estimate {
            value: e.value,
            lo: e.lo,
            hi: e.hi,
            n: e.n as usize,
        }
    };
    Estimates {
        ips: one(e.ips),
        snips: one(e.snips),
        dr: one(e.dr),
        effective_samples: e.effective_samples,
    }
}

/// Asks one optimizer for its latest entries.
async fn ask(addr: String, limit: u32) -> Result<Vec<AuditRecord>, String> {
    let call = async {
        let endpoint = tonic::transport::Endpoint::from_shared(addr.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(TIMEOUT);
        let mut client =
            pb::optimizer_client::OptimizerClient::new(endpoint.connect().await.map_err(|e| e.to_string())?);
        let r = client
            .audit(pb::AuditRequest {
                limit,
                before_unix_ms: 0,
            })
            .await
            .map_err(|s| s.message().to_string())?;
        Ok(r.into_inner().entries.into_iter().filter_map(from_proto).collect())
    };
    tokio::time::timeout(TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", TIMEOUT.as_secs())))
}

pub(super) async fn audit(
    State(c): Shared,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    c.session(&headers)?;
    if q.limit == 0 || q.limit > 1000 {
        return Err(ApiError::invalid("limit", "1–1000 entries"));
    }
    let asked = futures::future::join_all(c.optimizers.iter().map(|a| ask(a.clone(), q.limit))).await;
    let mut entries = Vec::new();
    let mut optimizers = Vec::new();
    for (addr, r) in c.optimizers.iter().zip(asked) {
        match r {
            Ok(mut e) => {
                optimizers.push(serde_json::json!({"addr": addr, "entries": e.len()}));
                entries.append(&mut e);
            }
            Err(error) => optimizers.push(serde_json::json!({"addr": addr, "error": error})),
        }
    }
    // After a fail-over two optimizers may both hold an entry (the same id): shown once.
    entries.sort_by(|a, b| b.time_ms.cmp(&a.time_ms).then_with(|| a.id.cmp(&b.id)));
    entries.dedup_by(|a, b| a.id == b.id);
    Ok(Json(serde_json::json!({"optimizers": optimizers, "entries": entries})))
}
