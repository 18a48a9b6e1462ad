//! What the optimizer decided about each policy it trained, and why: the audit trail
//! (`audit-*.jsonl`) an operator reads before trusting a learned policy. Every candidate is
//! judged by off-policy evaluation on held-out logs against the version serving; the verdict
//! (each estimator's value and interval, the rule applied, how training went) is recorded
//! whether it passed or not, then what was pushed to whom, or why a passed candidate was not
//! served. The optimizer writes these records and serves them back (`Optimizer.Audit`); the
//! console's audit page shows them.
//!
//! The verdict types are defined here rather than in the optimizer so the record has one
//! definition for its writer and its readers; the optimizer computes them.
use crate::{Record, RecordError};
use serde::{Deserialize, Deserializer, Serialize};

/// The audit record format this code writes and reads.
pub const AUDIT_SCHEMA: u32 = 1;

/// One entry of the optimizer's audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Always [`AUDIT_SCHEMA`].
    pub schema: u32,
    /// Unique per entry: the event and the version it is about (`judged-v12`).
    pub id: String,
    /// When, in Unix milliseconds.
    pub time_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: AuditEvent,
}

impl AuditRecord {
    /// A record of `event` now-ish (`time_ms`), with its id derived from the event.
    pub fn new(time_ms: u64, event: AuditEvent) -> Self {
        let id = format!("{}-{}", event.name(), event.version());
        AuditRecord {
            schema: AUDIT_SCHEMA,
            id,
            time_ms,
            event,
        }
    }
}

/// What the optimizer did with one policy version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A candidate was trained and judged against the serving version.
    Judged {
        /// The candidate's version name.
        candidate_version: String,
        /// The version it was judged against.
        serving_version: String,
        /// The off-policy verdict (boxed: it is most of the record).
        verdict: Box<Verdict>,
    },
    /// A version that passed was pushed to the servers (or the cluster's pointer moved to it).
    Pushed {
        /// The version.
        version: String,
        /// The servers pushed to (empty in a cluster: every server follows the pointer).
        servers: Vec<String>,
        /// How long the push took.
        push_ms: f64,
    },
    /// A version that passed was not served.
    Superseded {
        /// The version.
        version: String,
        /// Why not.
        reason: String,
    },
}

impl AuditEvent {
    /// `judged`, `pushed` or `superseded`.
    pub fn name(&self) -> &'static str {
        match self {
            AuditEvent::Judged { .. } => "judged",
            AuditEvent::Pushed { .. } => "pushed",
            AuditEvent::Superseded { .. } => "superseded",
        }
    }

    /// The policy version the event is about.
    pub fn version(&self) -> &str {
        match self {
            AuditEvent::Judged { candidate_version, .. } => candidate_version,
            AuditEvent::Pushed { version, .. } | AuditEvent::Superseded { version, .. } => version,
        }
    }
}

impl Record for AuditRecord {
    const PREFIX: &'static str = "audit";

    fn id(&self) -> &str {
        &self.id
    }

    fn check(&self) -> Result<(), RecordError> {
        if self.schema != AUDIT_SCHEMA {
            return Err(RecordError::Schema {
                found: self.schema,
                supported: AUDIT_SCHEMA,
            });
        }
        if self.event.version().is_empty() {
            return Err(RecordError::invalid(
                "version",
                "an audit entry names its policy version",
            ));
        }
        Ok(())
    }
}

/// The off-policy verdict on a candidate: the estimates of both policies on the same held-out
/// logs and the rule that decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Whether the candidate may be served.
    pub pass: bool,
    /// The rule applied, in words (`dr lower bound 0.21 > serving 0.18 - 0.01`).
    pub rule: String,
    /// The candidate's estimates.
    pub candidate: Estimates,
    /// The serving version's estimates on the same logs.
    pub serving: Estimates,
    /// Mean reward actually observed on the held-out logs (the logging policies' own value).
    pub observed_mean: f64,
    /// Examples (conversations, for RL) trained on.
    pub train_examples: usize,
    /// Examples (conversations, for RL) judged on.
    pub holdout_examples: usize,
    /// How the candidate's trunk was trained (neural-linear only).
    #[serde(default)]
    pub trunk: Option<TrunkReport>,
    /// How the RL candidate was trained (`[learn.rl]` only). Its estimates are then of whole
    /// conversations: `ips` per-decision IS, `snips` weighted per-decision IS, `dr` sequential
    /// doubly robust, and the example counts are conversations.
    #[serde(default)]
    pub rl: Option<RlReport>,
}

/// One estimator's value of a policy with its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The estimate (NaN, written `null`, when there was nothing to estimate from).
    #[serde(deserialize_with = "null_as_nan")]
    pub value: f64,
    /// Lower end of the interval.
    #[serde(deserialize_with = "null_as_nan")]
    pub lo: f64,
    /// Upper end of the interval.
    #[serde(deserialize_with = "null_as_nan")]
    pub hi: f64,
    /// Samples it rests on.
    pub n: usize,
}

/// A policy's value by each off-policy estimator.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimates {
    /// Inverse propensity scoring.
    pub ips: Estimate,
    /// Self-normalised IPS.
    pub snips: Estimate,
    /// Doubly robust.
    pub dr: Estimate,
    /// Kish's effective sample size of the importance weights, `(Σw)² / Σw²`: how many logged
    /// decisions the estimates really rest on (n when target = logging policy, about n/k for a
    /// deterministic target over k uniformly logged options).
    #[serde(default, deserialize_with = "null_as_nan")]
    pub effective_samples: f64,
}

/// How a neural-linear candidate's trunk was trained.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrunkReport {
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Epochs run.
    pub epochs: usize,
    /// Rows trained on.
    pub examples: usize,
    /// Mean squared error of the trunk + its regression head on the training rows, before
    /// the first step and after the last epoch.
    pub mse_start: f64,
    /// See `mse_start`.
    pub mse_end: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// How an RL candidate was trained.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RlReport {
    /// The learner (`cql`, `policy_gradient`).
    pub learner: String,
    /// Conversations trained on.
    pub episodes: usize,
    /// Decisions trained on.
    pub decisions: usize,
    /// Gradient steps taken in this run (after a resumed checkpoint's).
    pub steps: usize,
    /// Steps taken from a checkpoint.
    pub resumed_at: usize,
    /// Mean loss over the first and the last 10 % of the steps run.
    pub loss_start: f64,
    /// See `loss_start`.
    pub loss_end: f64,
    /// Rewards were divided by this while training (Q is scaled back on export).
    pub reward_scale: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// JSON has no NaN: serde_json writes it as `null`, and this reads it back.
fn null_as_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(value: f64) -> Estimate {
        Estimate {
            value,
            lo: value - 0.1,
            hi: value + 0.1,
            n: 40,
        }
    }

    #[test]
    fn records_round_trip_through_json_with_nan_as_null() {
        let empty = Estimate {
            value: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
            n: 0,
        };
        let verdict = Verdict {
            pass: false,
            rule: "dr lower bound below serving".into(),
            candidate: Estimates {
                ips: estimate(0.3),
                snips: empty,
                dr: estimate(0.31),
                effective_samples: 12.5,
            },
            serving: Estimates {
                ips: estimate(0.2),
                snips: estimate(0.21),
                dr: estimate(0.2),
                effective_samples: 40.0,
            },
            observed_mean: 0.2,
            train_examples: 160,
            holdout_examples: 40,
            trunk: None,
            rl: None,
        };
        let rec = AuditRecord::new(
            7,
            AuditEvent::Judged {
                candidate_version: "v3".into(),
                serving_version: "v2".into(),
                verdict: Box::new(verdict),
            },
        );
        assert_eq!(rec.id, "judged-v3");
        let line = serde_json::to_string(&rec).unwrap();
        assert!(line.contains(r#""event":"judged""#), "{line}");
        assert!(line.contains(r#""snips":{"value":null"#), "{line}");
        let back: AuditRecord = serde_json::from_str(&line).unwrap();
        back.check().unwrap();
        let AuditEvent::Judged { verdict, .. } = &back.event else {
            panic!("{back:?}")
        };
        assert!(verdict.candidate.snips.value.is_nan());
        assert_eq!(verdict.candidate.dr, estimate(0.31));

        let pushed = AuditRecord::new(
            8,
            AuditEvent::Pushed {
                version: "v3".into(),
                servers: vec!["http://127.0.0.1:50052".into()],
                push_ms: 3.5,
            },
        );
        let back: AuditRecord = serde_json::from_str(&serde_json::to_string(&pushed).unwrap()).unwrap();
        assert_eq!(back, pushed);
        assert_eq!(back.id, "pushed-v3");
    }

    #[test]
    fn unversioned_and_nameless_entries_are_refused() {
        // What the optimizer wrote before the record had a schema.
        let old = r#"{"time_ms":1,"candidate_version":"v2","serving_version":"v1","verdict":{}}"#;
        assert!(serde_json::from_str::<AuditRecord>(old).is_err());
        let mut rec = AuditRecord::new(
            1,
            AuditEvent::Superseded {
                version: "v4".into(),
                reason: "the pointer moved".into(),
            },
        );
        rec.schema = 2;
        assert!(matches!(rec.check(), Err(RecordError::Schema { found: 2, .. })));
        rec.schema = AUDIT_SCHEMA;
        rec.event = AuditEvent::Superseded {
            version: String::new(),
            reason: String::new(),
        };
        assert!(rec.check().is_err());
    }
}
