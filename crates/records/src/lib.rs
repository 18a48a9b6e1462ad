//! The records Nudge's processes exchange, and the logs that carry them.
//!
//! A server appends a [`DecisionRecord`] for every decision before answering it; the optimizer
//! appends an [`OutcomeRecord`] for every reported outcome before acknowledging it, joins the
//! two, and learns. These types are the contract between them: one definition, a `schema`
//! version in every record, and readers ([`Tailer`]) that count and report — with file and
//! line — every line that does not parse as the type they expect, instead of skipping it.
//!
//! The optimizer's audit trail ([`AuditRecord`]) and the console's change log
//! ([`ChangeRecord`]) are records of the same kind.
//!
//! The logs ([`EventLog`]) are segmented, append-only JSON Lines files (`pandas.read_json(f,
//! lines=True)`, `polars.read_ndjson(f)`) with group-committed fsync.
#![warn(missing_docs)]

pub mod audit;
pub mod change;
pub mod decision;
pub mod event;
mod log;
pub mod outcome;
mod tail;

pub use audit::{AuditEvent, AuditRecord, AUDIT_SCHEMA};
pub use change::{ChangeRecord, CHANGE_SCHEMA};
pub use decision::{DecisionRecord, LoggedOffer, DECISION_SCHEMA};
pub use event::{ConversationEvent, EventKind, EVENT_SCHEMA};
pub use log::{segments, Durability, EventLog, LogConfig, LogError};
pub use outcome::{OutcomeKind, OutcomeRecord, OutcomeTotals, RewardField, OUTCOME_SCHEMA};
pub use tail::{read_all, Cursor, Malformed, Tailer};

/// A record type that lives in its own log.
pub trait Record: serde::de::DeserializeOwned + serde::Serialize {
    /// Segment file prefix: `<PREFIX>-<ms>-<seq>.jsonl`.
    const PREFIX: &'static str;

    /// The key that makes a record unique (a decision id, an outcome's event id): every copy
    /// of a record delivered twice (a retry, a replay after a crash) carries the same one, and
    /// readers that must count each record once deduplicate by it.
    fn id(&self) -> &str;

    /// Checks what serde cannot: the schema version first, then the type's invariants.
    fn check(&self) -> Result<(), RecordError>;
}

/// Why a parsed record is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    /// Written by a version of Nudge whose record this reader does not know.
    #[error("schema {found} is not supported (this reader reads {supported})")]
    Schema {
        /// The record's `schema`.
        found: u32,
        /// The version this reader reads.
        supported: u32,
    },
    /// A field breaks the record's invariants.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl RecordError {
    fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        RecordError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
