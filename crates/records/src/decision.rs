//! The decision record: what a server logs for every `Decide` before answering it, and what
//! the optimizer learns from and judges other policies on. Written by the server and by
//! `import-obd`, read by the optimizer and `replay` — all through this one type.
use crate::{Record, RecordError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Schema version of [`DecisionRecord`]. Raise it (and teach readers the old one) whenever a
/// field changes meaning; readers refuse versions they do not know, loudly.
pub const DECISION_SCHEMA: u32 = 1;

/// One logged decision: everything needed to learn from it and to evaluate other policies on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DecisionRecord {
    /// [`DECISION_SCHEMA`] when written.
    pub schema: u32,
    /// Unique id (32 hex digits), the key outcomes refer to.
    pub decision_id: String,
    /// When the decision was made, Unix milliseconds.
    pub time_ms: u64,
    /// The caller's conversation id.
    pub conversation_id: String,
    /// HMAC-SHA256 of the customer id (hex, 32 chars); empty when none was given.
    pub customer: String,
    /// Channel the message came from (web, app, phone…), as the caller named it.
    pub channel: String,
    /// Policy version that decided.
    pub policy_version: String,
    /// NLU model version that understood the message (empty when the caller sent its own NLU).
    pub model_version: String,
    /// The context features the policy saw, by name (see `nudge_policy::context`).
    pub context: BTreeMap<String, f64>,
    /// The offers the caller proposed, in order.
    pub candidates: Vec<LoggedOffer>,
    /// Chosen offer id; empty for "no offer".
    pub offer_id: String,
    /// Index of the chosen option (candidates, then "no offer" when the policy allows it).
    pub option: usize,
    /// Probability with which `option` was chosen.
    pub propensity: f64,
    /// Probability of every option, in option order.
    pub probabilities: Vec<f64>,
    /// The policy's score of every option (empty for imported logs).
    pub scores: Vec<f64>,
    /// How the option was drawn (`greedy`, `explore`, `thompson`…; `logged` for imports).
    pub how: String,
}

/// One candidate offer as the policy saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoggedOffer {
    /// The caller's offer id.
    pub id: String,
    /// Its features, by name.
    pub features: BTreeMap<String, f64>,
}

impl Record for DecisionRecord {
    const PREFIX: &'static str = "decisions";

    fn id(&self) -> &str {
        &self.decision_id
    }

    fn check(&self) -> Result<(), RecordError> {
        if self.schema != DECISION_SCHEMA {
            return Err(RecordError::Schema {
                found: self.schema,
                supported: DECISION_SCHEMA,
            });
        }
        if self.decision_id.is_empty() {
            return Err(RecordError::invalid("decision_id", "empty"));
        }
        if self.option >= self.probabilities.len() {
            return Err(RecordError::invalid(
                "option",
                format!(
                    "{} is not below the {} probabilities",
                    self.option,
                    self.probabilities.len()
                ),
            ));
        }
        if !(self.propensity > 0.0 && self.propensity <= 1.0) {
            return Err(RecordError::invalid(
                "propensity",
                format!("{} is not in (0, 1]", self.propensity),
            ));
        }
        Ok(())
    }
}
