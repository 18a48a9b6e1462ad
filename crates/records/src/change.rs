//! What operators changed, who and when: the audit trail every change made through the console
//! leaves (`changes-*.jsonl`), read back by the console's audit page and by anyone reviewing
//! who changed what.
use crate::{Record, RecordError};
use serde::{Deserialize, Serialize};

/// The change record format this code writes and reads.
pub const CHANGE_SCHEMA: u32 = 1;

/// One change (or sign-in) made by an operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// Always [`CHANGE_SCHEMA`].
    pub schema: u32,
    /// Unique per change.
    pub id: String,
    /// When, in Unix milliseconds.
    pub time_ms: u64,
    /// The operator's login name.
    pub user: String,
    /// Their role when they made it (`viewer`, `editor`).
    pub role: String,
    /// What was done: `rules.save`, `rules.rollback`, `catalog.save`, `catalog.rollback`,
    /// `products.save`, `products.rollback`, `model.serve`, `policy.rollback`,
    /// `experiment.start`, `experiment.stop`, `experiment.ship`, `login`, `login_failed`.
    pub action: String,
    /// What it was done to (`rules`, `catalog`, `products`, `model <name>`, `policy`,
    /// `experiment`, `session`).
    pub target: String,
    /// The version it made current, if it made one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// The operator's note, or what happened.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Record for ChangeRecord {
    const PREFIX: &'static str = "changes";

    fn id(&self) -> &str {
        &self.id
    }

    fn check(&self) -> Result<(), RecordError> {
        if self.schema != CHANGE_SCHEMA {
            return Err(RecordError::Schema {
                found: self.schema,
                supported: CHANGE_SCHEMA,
            });
        }
        if self.user.is_empty() || self.action.is_empty() {
            return Err(RecordError::invalid("user", "a change names its user and action"));
        }
        Ok(())
    }
}
