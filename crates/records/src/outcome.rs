//! Outcome records: what happened after a decision (shown, clicked, converted…), as the
//! optimizer logs each `ReportOutcome` before acknowledging it, and the reward fields those
//! events add up to — the names data scientists write reward expressions over.
use crate::{Record, RecordError};
use serde::{Deserialize, Serialize};

/// Schema version of [`OutcomeRecord`].
pub const OUTCOME_SCHEMA: u32 = 1;

/// What happened after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// The offer was displayed.
    Shown,
    /// The customer clicked it.
    Click,
    /// The customer put it in the cart.
    AddToCart,
    /// The customer bought (carries revenue and margin).
    Convert,
    /// The customer declined it.
    Decline,
    /// The customer asked for no more marketing.
    OptOut,
    /// The customer complained.
    Complaint,
}

impl OutcomeKind {
    /// Every kind.
    pub const ALL: [OutcomeKind; 7] = [
        OutcomeKind::Shown,
        OutcomeKind::Click,
        OutcomeKind::AddToCart,
        OutcomeKind::Convert,
        OutcomeKind::Decline,
        OutcomeKind::OptOut,
        OutcomeKind::Complaint,
    ];

    /// The kind's name as records spell it (`add_to_cart`).
    pub fn name(self) -> &'static str {
        match self {
            OutcomeKind::Shown => "shown",
            OutcomeKind::Click => "click",
            OutcomeKind::AddToCart => "add_to_cart",
            OutcomeKind::Convert => "convert",
            OutcomeKind::Decline => "decline",
            OutcomeKind::OptOut => "opt_out",
            OutcomeKind::Complaint => "complaint",
        }
    }

    /// The reward field one event of this kind counts towards.
    pub fn counted_as(self) -> RewardField {
        match self {
            OutcomeKind::Shown => RewardField::Shown,
            OutcomeKind::Click => RewardField::Click,
            OutcomeKind::AddToCart => RewardField::AddToCart,
            OutcomeKind::Convert => RewardField::Conversion,
            OutcomeKind::Decline => RewardField::Decline,
            OutcomeKind::OptOut => RewardField::OptOut,
            OutcomeKind::Complaint => RewardField::Complaint,
        }
    }
}

/// A number a decision's outcomes add up to, by which reward expressions are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RewardField {
    /// Times shown.
    Shown,
    /// Clicks.
    Click,
    /// Add-to-carts.
    AddToCart,
    /// Conversions.
    Conversion,
    /// Declines.
    Decline,
    /// Opt-outs.
    OptOut,
    /// Complaints.
    Complaint,
    /// Revenue, summed over conversions.
    Revenue,
    /// Margin, summed over conversions.
    Margin,
}

impl RewardField {
    /// Every field, in the order [`OutcomeTotals`] stores them.
    pub const ALL: [RewardField; 9] = [
        RewardField::Shown,
        RewardField::Click,
        RewardField::AddToCart,
        RewardField::Conversion,
        RewardField::Decline,
        RewardField::OptOut,
        RewardField::Complaint,
        RewardField::Revenue,
        RewardField::Margin,
    ];

    /// The name used in reward expressions.
    pub fn name(self) -> &'static str {
        match self {
            RewardField::Shown => "shown",
            RewardField::Click => "click",
            RewardField::AddToCart => "add_to_cart",
            RewardField::Conversion => "conversion",
            RewardField::Decline => "decline",
            RewardField::OptOut => "opt_out",
            RewardField::Complaint => "complaint",
            RewardField::Revenue => "revenue",
            RewardField::Margin => "margin",
        }
    }

    /// The field a reward expression names, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What happened after one decision, summed over its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct OutcomeTotals([f64; 9]);

impl OutcomeTotals {
    /// Adds one event.
    pub fn add(&mut self, o: &OutcomeRecord) {
        self.0[o.kind.counted_as().index()] += 1.0;
        if o.kind == OutcomeKind::Convert {
            self.0[RewardField::Revenue.index()] += o.revenue;
            self.0[RewardField::Margin.index()] += o.margin;
        }
    }

    /// The total of `field`.
    pub fn get(&self, field: RewardField) -> f64 {
        self.0[field.index()]
    }

    /// Sets `field` (tests and what-if tools).
    pub fn set(&mut self, field: RewardField, v: f64) {
        self.0[field.index()] = v;
    }
}

/// One outcome event as the optimizer logs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// [`OUTCOME_SCHEMA`] when written.
    pub schema: u32,
    /// The reporter's id for the event (idempotency key).
    pub event_id: String,
    /// The decision it follows.
    pub decision_id: String,
    /// What happened.
    pub kind: OutcomeKind,
    /// Revenue of a conversion.
    pub revenue: f64,
    /// Margin of a conversion.
    pub margin: f64,
    /// When it happened, Unix milliseconds.
    pub time_ms: u64,
    /// When the optimizer received it.
    pub received_ms: u64,
    /// After the decision's reward window: kept for the record, never trained on.
    pub late: bool,
}

impl Record for OutcomeRecord {
    const PREFIX: &'static str = "outcomes";

    fn id(&self) -> &str {
        &self.event_id
    }

    fn check(&self) -> Result<(), RecordError> {
        if self.schema != OUTCOME_SCHEMA {
            return Err(RecordError::Schema {
                found: self.schema,
                supported: OUTCOME_SCHEMA,
            });
        }
        if !self.revenue.is_finite() || !self.margin.is_finite() {
            return Err(RecordError::invalid("revenue", "revenue and margin must be finite"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_counts_towards_its_field_and_conversions_carry_money() {
        let mut t = OutcomeTotals::default();
        for kind in OutcomeKind::ALL {
            t.add(&OutcomeRecord {
                schema: OUTCOME_SCHEMA,
                event_id: "e".into(),
                decision_id: "d".into(),
                kind,
                revenue: 10.0,
                margin: 3.0,
                time_ms: 0,
                received_ms: 0,
                late: false,
            });
        }
        for f in RewardField::ALL {
            let want = match f {
                RewardField::Revenue => 10.0,
                RewardField::Margin => 3.0,
                _ => 1.0,
            };
            assert_eq!(t.get(f), want, "{f:?}");
            assert_eq!(RewardField::from_name(f.name()), Some(f));
        }
        let json = serde_json::to_string(&OutcomeKind::AddToCart).unwrap();
        assert_eq!(json, "\"add_to_cart\"");
    }
}
