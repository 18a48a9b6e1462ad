//! What happened in conversations, one line per turn or outcome (`events-*.jsonl`): the source of
//! the console's KPIs and of experiment verdicts. A server writes one for every answered `Turn`
//! or `Nudge` and every `Conversations.Outcome`, and rebuilds its KPIs from the log at start;
//! analysts read the same files. The customer is the same keyed hash as in decision records,
//! never the id the bot sent; no message text is kept.
use crate::{OutcomeKind, Record, RecordError};
use serde::{Deserialize, Serialize};

/// The conversation event format this code writes and reads.
pub const EVENT_SCHEMA: u32 = 1;

/// What the event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A `Turn` (customer message) answered.
    Turn,
    /// A `Nudge` (a turn without a message) answered.
    Nudge,
    /// What the customer did with an offer.
    Outcome,
}

/// One turn or outcome of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationEvent {
    /// Always [`EVENT_SCHEMA`].
    pub schema: u32,
    /// Unique per event.
    pub id: String,
    /// When, in Unix milliseconds.
    pub time_ms: u64,
    /// Turn, nudge or outcome.
    pub kind: EventKind,
    /// The conversation.
    pub conversation_id: String,
    /// The customer as a keyed hash.
    pub customer: String,
    /// web, app, mini_program, phone or social.
    pub channel: String,
    /// The running experiment's id when the event happened, if one ran.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub experiment: String,
    /// The experiment arm the customer is in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub arm: String,
    /// The conversation's turn number after this turn (1: it started); 0 on outcomes.
    #[serde(default)]
    pub turn: u32,
    /// This turn solved the customer's problem (the conversation became `resolved`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resolved: bool,
    /// The turn's intent (empty: out of scope or no message).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub intent: String,
    /// How long the server took to answer the turn, in milliseconds.
    #[serde(default)]
    pub response_ms: f64,
    /// Why a person was asked to take over, if one was.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub handoff: String,
    /// The decision a turn made or an outcome reports on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub decision_id: String,
    /// The offer made (turn) or reported on (outcome); empty: none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub offer_id: String,
    /// The policy version that chose (`rules` without a policy).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_version: String,
    /// What the customer did (outcomes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OutcomeKind>,
    /// The order's value for a conversion, in cents.
    #[serde(default)]
    pub revenue_cents: i64,
}

impl Record for ConversationEvent {
    const PREFIX: &'static str = "events";

    fn id(&self) -> &str {
        &self.id
    }

    fn check(&self) -> Result<(), RecordError> {
        if self.schema != EVENT_SCHEMA {
            return Err(RecordError::Schema {
                found: self.schema,
                supported: EVENT_SCHEMA,
            });
        }
        if (self.kind == EventKind::Outcome) != self.outcome.is_some() {
            return Err(RecordError::invalid(
                "outcome",
                "set on outcome events and only on them",
            ));
        }
        if !self.response_ms.is_finite() || self.response_ms < 0.0 {
            return Err(RecordError::invalid(
                "response_ms",
                "must be a finite, non-negative number",
            ));
        }
        if self.revenue_cents < 0 {
            return Err(RecordError::invalid("revenue_cents", "must not be negative"));
        }
        Ok(())
    }
}
