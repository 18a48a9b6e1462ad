//! Guardrails: the limits no rule, policy or caller can lift. They run after the rules and
//! before the policy, and again when an offer is committed, so a policy that picks something the
//! guardrails removed — or a caller that skips a step — still cannot show it. Every offer they
//! remove comes back with the reason.
//!
//! Limits on the conversation (no offer at all): marketing consent missing, opted out, the
//! customer negative, complaining or asking for a person, a cap reached (per conversation, per
//! customer per day), a cool-down after a decline, quiet hours. Limits on one offer: not on this
//! channel or not valid now, budget spent.
use crate::catalog::Offer;
use crate::channel::Channel;
use crate::conversation::Conversation;
use crate::hours;
use serde::{Deserialize, Serialize};
use std::fmt;

/// `[strategy.guardrails]` in the server's TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Guardrails {
    /// Most offers shown in one conversation.
    pub max_offers_per_conversation: u32,
    /// Most offers shown to one customer per day (shop's local day).
    pub max_offers_per_customer_per_day: u32,
    /// Turns without an offer after the customer declined one.
    pub cooldown_turns_after_decline: u32,
    /// No offer when the turn's negative-emotion score is above this.
    pub max_negative: f32,
    /// Local hours `[from, to)` in which no offer is made (wraps past midnight).
    pub quiet_hours: Option<[u8; 2]>,
    /// Confidence under which a turn counts as unsure (for hand-off).
    pub unsure_below: f32,
    /// Hand off after this many negative turns in a row.
    pub handoff_after_negative_turns: u32,
    /// Hand off after this many unsure (out-of-scope or low-confidence) turns in a row.
    pub handoff_after_unsure_turns: u32,
}

impl Default for Guardrails {
    fn default() -> Self {
        Self {
            max_offers_per_conversation: 2,
            max_offers_per_customer_per_day: 3,
            cooldown_turns_after_decline: 3,
            max_negative: 0.5,
            quiet_hours: None,
            unsure_below: 0.35,
            handoff_after_negative_turns: 2,
            handoff_after_unsure_turns: 3,
        }
    }
}

/// A guardrail setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("guardrails.{field}: {reason}")]
pub struct SettingError {
    /// The setting.
    pub field: &'static str,
    /// Its allowed range.
    pub reason: String,
}

/// What the guardrails know about the customer beyond the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CustomerFacts {
    /// The customer agreed to marketing.
    pub marketing_consent: bool,
    /// The customer opted out (now or before: opt-outs are remembered).
    pub opted_out: bool,
    /// Offers shown to the customer today, all conversations.
    pub offers_today: u32,
}

/// Why an offer was not made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Skip {
    /// No marketing consent.
    NoConsent,
    /// The customer opted out.
    OptedOut,
    /// The customer is negative now.
    Negative,
    /// The customer complained in this conversation.
    Complaint,
    /// The customer asked for a person.
    AskedForHuman,
    /// The conversation's cap is reached.
    ConversationCap,
    /// The customer's daily cap is reached.
    DailyCap,
    /// A decline was too recent.
    CoolDown,
    /// Quiet hours.
    QuietHours,
    /// The offer is not made on this channel.
    Channel,
    /// The offer is not valid at this time.
    NotValidNow,
    /// The offer's budget is spent.
    BudgetSpent,
    /// The rules did not allow it, or forbade it.
    NotAllowed,
    /// The external risk check said no, failed or timed out.
    Risk {
        /// What it said.
        detail: String,
    },
}

impl Skip {
    /// The reason's name, as replies and metrics carry it.
    pub fn name(&self) -> &'static str {
        match self {
            Skip::NoConsent => "no_consent",
            Skip::OptedOut => "opted_out",
            Skip::Negative => "negative",
            Skip::Complaint => "complaint",
            Skip::AskedForHuman => "asked_for_human",
            Skip::ConversationCap => "conversation_cap",
            Skip::DailyCap => "daily_cap",
            Skip::CoolDown => "cool_down",
            Skip::QuietHours => "quiet_hours",
            Skip::Channel => "channel",
            Skip::NotValidNow => "not_valid_now",
            Skip::BudgetSpent => "budget_spent",
            Skip::NotAllowed => "not_allowed",
            Skip::Risk { .. } => "risk",
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::Risk { detail } => write!(f, "risk: {detail}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Why a conversation should go to a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffReason {
    /// The customer asked for one.
    AskedForHuman,
    /// The customer complained.
    Complaint,
    /// Several negative turns in a row.
    NegativeTurns,
    /// Several turns the bot did not understand.
    Unsure,
}

impl HandoffReason {
    /// The reason's name, as replies and metrics carry it.
    pub fn name(self) -> &'static str {
        match self {
            HandoffReason::AskedForHuman => "asked_for_human",
            HandoffReason::Complaint => "complaint",
            HandoffReason::NegativeTurns => "negative_turns",
            HandoffReason::Unsure => "unsure",
        }
    }
}

impl Guardrails {
    /// Refuses out-of-range settings, naming the field.
    pub fn validate(&self) -> Result<(), SettingError> {
        let bad = |field: &'static str, reason: String| Err(SettingError { field, reason });
        if !(0.0..=1.0).contains(&self.max_negative) {
            return bad("max_negative", format!("{} must be in [0, 1]", self.max_negative));
        }
        if !(0.0..=1.0).contains(&self.unsure_below) {
            return bad("unsure_below", format!("{} must be in [0, 1]", self.unsure_below));
        }
        if let Some([a, b]) = self.quiet_hours {
            if !hours::valid([a, b]) {
                return bad("quiet_hours", format!("[{a}, {b}] must be hours 0–24, not equal"));
            }
        }
        if self.handoff_after_negative_turns == 0 {
            return bad("handoff_after_negative_turns", "must be at least 1".into());
        }
        if self.handoff_after_unsure_turns == 0 {
            return bad("handoff_after_unsure_turns", "must be at least 1".into());
        }
        Ok(())
    }

    /// Whether any offer may be made on this turn; the first reason that forbids it otherwise.
    /// `negative`: this turn's negative-emotion score.
    pub fn check_conversation(
        &self,
        c: &Conversation,
        customer: &CustomerFacts,
        negative: f32,
        local_hour: u8,
    ) -> Result<(), Skip> {
        if customer.opted_out {
            return Err(Skip::OptedOut);
        }
        if !customer.marketing_consent {
            return Err(Skip::NoConsent);
        }
        if c.asked_for_human {
            return Err(Skip::AskedForHuman);
        }
        if c.complained {
            return Err(Skip::Complaint);
        }
        if negative > self.max_negative || c.negative_streak > 0 {
            return Err(Skip::Negative);
        }
        if c.offers_made() >= self.max_offers_per_conversation as usize {
            return Err(Skip::ConversationCap);
        }
        if customer.offers_today >= self.max_offers_per_customer_per_day {
            return Err(Skip::DailyCap);
        }
        if let Some(t) = c.last_decline_turn() {
            if c.turns <= t.saturating_add(self.cooldown_turns_after_decline) {
                return Err(Skip::CoolDown);
            }
        }
        if self.quiet_hours.is_some_and(|w| hours::contains(w, local_hour)) {
            return Err(Skip::QuietHours);
        }
        Ok(())
    }

    /// Whether `offer` itself may be made now; `accepted` is how much of its budget is used.
    pub fn check_offer(&self, offer: &Offer, channel: Channel, now_s: i64, accepted: u64) -> Result<(), Skip> {
        if !offer.channels.contains(&channel) {
            return Err(Skip::Channel);
        }
        if !offer.available(channel, now_s) {
            return Err(Skip::NotValidNow);
        }
        if offer.budget.is_some_and(|b| accepted >= b) {
            return Err(Skip::BudgetSpent);
        }
        Ok(())
    }

    /// Whether the conversation should go to a person, and why (the most serious reason first).
    pub fn handoff(&self, c: &Conversation) -> Option<HandoffReason> {
        if c.asked_for_human {
            Some(HandoffReason::AskedForHuman)
        } else if c.complained {
            Some(HandoffReason::Complaint)
        } else if c.negative_streak >= self.handoff_after_negative_turns {
            Some(HandoffReason::NegativeTurns)
        } else if c.unsure_streak >= self.handoff_after_unsure_turns {
            Some(HandoffReason::Unsure)
        } else {
            None
        }
    }
}
