//! A conversation's state: what was said (masked), understood, linked and offered, turn by
//! turn — what rules, guardrails and hand-off decide on. The store bounds it: conversations
//! idle longer than the TTL are dropped, and past the cap the longest-idle one goes first; each
//! conversation keeps only its recent turns. Text is masked (`pii::mask`) before it is kept.
use crate::channel::Channel;
use crate::pii;
use crate::rules::{IntentRoles, Stage};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// Turns kept per conversation (older ones are summarised by the counters).
pub const RECENT_TURNS: usize = 10;
/// Products remembered per conversation.
pub const MAX_PRODUCTS: usize = 32;
/// Offer events remembered per conversation.
pub const MAX_OFFER_EVENTS: usize = 64;

/// What one turn was understood as.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TurnFacts {
    /// The customer's text (masked before it is kept); empty for a proactive turn.
    pub text: String,
    /// The intent, `None` when out of scope.
    pub intent: Option<String>,
    /// The intent's confidence.
    pub confidence: f32,
    /// The sentiment label.
    pub sentiment: Option<String>,
    /// Negative-emotion score in [0, 1].
    pub negative: f32,
    /// SKUs linked in this turn.
    pub products: Vec<String>,
    /// When (unix ms).
    pub at_ms: i64,
}

/// A kept turn, as the agent's summary shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnSummary {
    /// 1-based turn number.
    pub turn: u32,
    /// The text with personal data masked.
    pub text: String,
    /// The intent (`None`: out of scope).
    pub intent: Option<String>,
    /// The sentiment label.
    pub sentiment: Option<String>,
    /// Negative-emotion score.
    pub negative: f32,
}

/// What became of an offer made in the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfferStatus {
    /// Shown, no answer yet.
    Shown,
    /// Accepted.
    Accepted,
    /// Declined.
    Declined,
}

/// One offer made in the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferEvent {
    /// The offer.
    pub offer: String,
    /// The decision that made it.
    pub decision_id: String,
    /// The turn it was made on.
    pub turn: u32,
    /// When (unix ms).
    pub at_ms: i64,
    /// What became of it.
    pub status: OfferStatus,
}

/// A conversation's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// The caller's conversation id.
    pub id: String,
    /// The customer, as a keyed hash (never the raw id).
    pub customer: String,
    /// Where it happens.
    pub channel: Channel,
    /// Turns so far (customer messages and proactive turns).
    pub turns: u32,
    /// Where it stands.
    pub stage: Stage,
    /// The last [`RECENT_TURNS`] turns.
    pub recent: VecDeque<TurnSummary>,
    /// Intents seen, in order of first appearance.
    pub intents: Vec<String>,
    /// Products linked so far.
    pub products: BTreeSet<String>,
    /// Offers made.
    pub offers: Vec<OfferEvent>,
    /// Consecutive turns with negative sentiment, up to the last.
    pub negative_streak: u32,
    /// Consecutive out-of-scope or low-confidence turns, up to the last.
    pub unsure_streak: u32,
    /// The customer complained in this conversation.
    pub complained: bool,
    /// The customer asked for a person.
    pub asked_for_human: bool,
    /// Last activity (unix ms).
    pub last_active_ms: i64,
}

impl Conversation {
    /// A new, empty conversation.
    pub fn new(id: &str, customer: &str, channel: Channel, now_ms: i64) -> Conversation {
        Conversation {
            id: id.to_string(),
            customer: customer.to_string(),
            channel,
            turns: 0,
            stage: Stage::Open,
            recent: VecDeque::new(),
            intents: Vec::new(),
            products: BTreeSet::new(),
            offers: Vec::new(),
            negative_streak: 0,
            unsure_streak: 0,
            complained: false,
            asked_for_human: false,
            last_active_ms: now_ms,
        }
    }

    /// Takes a turn into the state. `unsure_below`: confidence under which a turn counts as
    /// unsure; `negative_above`: negative score over which it counts as negative.
    pub fn observe(&mut self, f: &TurnFacts, roles: &IntentRoles, unsure_below: f32, negative_above: f32) {
        self.turns += 1;
        self.last_active_ms = self.last_active_ms.max(f.at_ms);
        if let Some(i) = &f.intent {
            if !self.intents.contains(i) {
                self.intents.push(i.clone());
            }
            if roles.issue.contains(i) {
                self.stage = Stage::Issue;
            } else if roles.resolved.contains(i) && self.stage == Stage::Issue {
                self.stage = Stage::Resolved;
            }
            self.complained |= roles.complaint.contains(i);
            self.asked_for_human |= roles.human.contains(i);
        }
        let negative = f.negative > negative_above || f.sentiment.as_deref() == Some("negative");
        self.negative_streak = if negative { self.negative_streak + 1 } else { 0 };
        let unsure = f.intent.is_none() || f.confidence < unsure_below;
        self.unsure_streak = if unsure { self.unsure_streak + 1 } else { 0 };
        for p in &f.products {
            if self.products.len() < MAX_PRODUCTS {
                self.products.insert(p.clone());
            }
        }
        self.recent.push_back(TurnSummary {
            turn: self.turns,
            text: pii::mask(&f.text),
            intent: f.intent.clone(),
            sentiment: f.sentiment.clone(),
            negative: f.negative,
        });
        while self.recent.len() > RECENT_TURNS {
            self.recent.pop_front();
        }
    }

    /// A proactive turn without news (the customer has been idle).
    pub fn idle_turn(&mut self, now_ms: i64) {
        self.turns += 1;
        self.last_active_ms = self.last_active_ms.max(now_ms);
    }

    /// A proactive turn saying the customer's problem is solved.
    pub fn mark_resolved(&mut self, now_ms: i64) {
        self.turns += 1;
        self.last_active_ms = self.last_active_ms.max(now_ms);
        self.stage = Stage::Resolved;
    }

    /// Remembers an offer made on the current turn.
    pub fn offered(&mut self, offer: &str, decision_id: &str, now_ms: i64) {
        if self.offers.len() >= MAX_OFFER_EVENTS {
            self.offers.remove(0);
        }
        self.offers.push(OfferEvent {
            offer: offer.to_string(),
            decision_id: decision_id.to_string(),
            turn: self.turns,
            at_ms: now_ms,
            status: OfferStatus::Shown,
        });
    }

    /// Records the customer's answer to the offer made by `decision_id`; false when the
    /// conversation has no such offer.
    pub fn answered(&mut self, decision_id: &str, status: OfferStatus) -> bool {
        match self.offers.iter_mut().rev().find(|o| o.decision_id == decision_id) {
            Some(o) => {
                o.status = status;
                true
            }
            None => false,
        }
    }

    /// The turn of the latest declined offer.
    pub fn last_decline_turn(&self) -> Option<u32> {
        self.offers
            .iter()
            .filter(|o| o.status == OfferStatus::Declined)
            .map(|o| o.turn)
            .max()
    }

    /// Offers made in this conversation.
    pub fn offers_made(&self) -> usize {
        self.offers.len()
    }

    /// Offers with this status.
    pub fn offers_with(&self, status: OfferStatus) -> usize {
        self.offers.iter().filter(|o| o.status == status).count()
    }

    /// What an agent taking over reads first: recent turns (already masked), the intents and
    /// products of the conversation, and the offers made with their answers.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "conversation {} · channel {} · {} turns · stage {:?}\n",
            self.id,
            self.channel.name(),
            self.turns,
            self.stage
        );
        for t in &self.recent {
            s.push_str(&format!(
                "  #{} [{} / {}] {}\n",
                t.turn,
                t.intent.as_deref().unwrap_or("out of scope"),
                t.sentiment.as_deref().unwrap_or("-"),
                t.text
            ));
        }
        if !self.intents.is_empty() {
            s.push_str(&format!("intents: {}\n", self.intents.join(", ")));
        }
        if !self.products.is_empty() {
            s.push_str(&format!(
                "products: {}\n",
                self.products.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        for o in &self.offers {
            s.push_str(&format!("offer {} on turn {}: {:?}\n", o.offer, o.turn, o.status));
        }
        s
    }
}

/// Bounds of the conversation store.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreLimits {
    /// A conversation idle this long is forgotten.
    pub ttl_seconds: u64,
    /// Most conversations kept; past it the longest-idle one is dropped.
    pub max_conversations: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            ttl_seconds: 24 * 3600,
            max_conversations: 100_000,
        }
    }
}

/// Conversations by id, bounded by TTL and count.
#[derive(Debug, Default)]
pub struct ConversationStore {
    limits: StoreLimits,
    map: HashMap<String, Conversation>,
}

impl ConversationStore {
    /// An empty store.
    pub fn new(limits: StoreLimits) -> ConversationStore {
        ConversationStore {
            limits,
            map: HashMap::new(),
        }
    }

    /// The conversation `id`, started if unknown (or expired). A known id with another customer
    /// is a new conversation too: ids are the caller's, and a reused one must not leak state.
    pub fn open(&mut self, id: &str, customer: &str, channel: Channel, now_ms: i64) -> &mut Conversation {
        let ttl_ms = i64::try_from(self.limits.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        let fresh = match self.map.get(id) {
            Some(c) => c.customer != customer || now_ms.saturating_sub(c.last_active_ms) > ttl_ms,
            None => true,
        };
        if fresh {
            if !self.map.contains_key(id) && self.map.len() >= self.limits.max_conversations {
                self.evict(now_ms, ttl_ms);
            }
            self.map
                .insert(id.to_string(), Conversation::new(id, customer, channel, now_ms));
        }
        self.map
            .entry(id.to_string())
            .or_insert_with(|| Conversation::new(id, customer, channel, now_ms))
    }

    /// The conversation `id`, if kept.
    pub fn get(&self, id: &str) -> Option<&Conversation> {
        self.map.get(id)
    }

    /// The conversation `id` to change, if kept.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Conversation> {
        self.map.get_mut(id)
    }

    /// Conversations kept.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No conversation kept.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every kept conversation (for snapshots).
    pub fn iter(&self) -> impl Iterator<Item = &Conversation> {
        self.map.values()
    }

    /// Puts back a conversation read from a snapshot (expired ones are not).
    pub fn restore(&mut self, c: Conversation, now_ms: i64) {
        let ttl_ms = i64::try_from(self.limits.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        if now_ms.saturating_sub(c.last_active_ms) <= ttl_ms && self.map.len() < self.limits.max_conversations {
            self.map.insert(c.id.clone(), c);
        }
    }

    /// Drops the expired conversations, then, while still full, the longest-idle one.
    fn evict(&mut self, now_ms: i64, ttl_ms: i64) {
        self.map
            .retain(|_, c| now_ms.saturating_sub(c.last_active_ms) <= ttl_ms);
        while self.map.len() >= self.limits.max_conversations {
            let Some(oldest) = self.map.values().min_by_key(|c| c.last_active_ms).map(|c| c.id.clone()) else {
                break;
            };
            self.map.remove(&oldest);
        }
    }
}

/// The format of a saved conversation store; files with another are refused.
pub const SNAPSHOT_SCHEMA: u32 = 1;

/// Everything the conversation layer remembers, as saved across a restart. Text in it is
/// already masked and customers are keyed hashes, so a snapshot holds no personal data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Always [`SNAPSHOT_SCHEMA`].
    pub schema: u32,
    /// When it was taken (unix ms).
    pub taken_ms: i64,
    /// Every kept conversation.
    pub conversations: Vec<Conversation>,
    /// Caps, opt-outs and budgets across conversations.
    pub ledger: crate::engine::Ledger,
}

impl Snapshot {
    /// Writes the snapshot atomically: a temporary file, fsynced, renamed over `path`. A crash
    /// leaves the previous snapshot or the new one, never half of one.
    pub fn save(&self, path: &std::path::Path) -> Result<(), crate::StrategyError> {
        let io = |source| crate::StrategyError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let bytes = serde_json::to_vec(self).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a snapshot; `None` when there is none yet.
    pub fn load(path: &std::path::Path) -> Result<Option<Snapshot>, crate::StrategyError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(crate::StrategyError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let s: Snapshot = serde_json::from_slice(&bytes)
            .map_err(|e| crate::StrategyError::invalid(path, Some(e.line()), "", e.to_string()))?;
        if s.schema != SNAPSHOT_SCHEMA {
            return Err(crate::StrategyError::invalid(
                path,
                None,
                "schema",
                format!("{} is not supported (this server reads {SNAPSHOT_SCHEMA})", s.schema),
            ));
        }
        Ok(Some(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> IntentRoles {
        IntentRoles {
            issue: ["refund".to_string()].into(),
            resolved: ["thanks_bye".to_string()].into(),
            human: ["human_agent".to_string()].into(),
            complaint: ["complaint".to_string()].into(),
        }
    }

    fn facts(text: &str, intent: Option<&str>, negative: f32) -> TurnFacts {
        TurnFacts {
            text: text.into(),
            intent: intent.map(String::from),
            confidence: 0.9,
            sentiment: Some(if negative > 0.5 { "negative" } else { "neutral" }.into()),
            negative,
            products: vec![],
            at_ms: 0,
        }
    }

    #[test]
    fn stage_streaks_and_masked_history() {
        let mut c = Conversation::new("c1", "k", Channel::Web, 0);
        let r = roles();
        c.observe(
            &facts("refund to card 4242 4242 4242 4242", Some("refund"), 0.8),
            &r,
            0.5,
            0.5,
        );
        assert_eq!((c.stage, c.negative_streak), (Stage::Issue, 1));
        assert_eq!(c.recent[0].text, "refund to card [bank-card ****4242]");
        c.observe(&facts("still nothing", None, 0.9), &r, 0.5, 0.5);
        assert_eq!((c.negative_streak, c.unsure_streak), (2, 1));
        c.observe(&facts("ok thanks", Some("thanks_bye"), 0.1), &r, 0.5, 0.5);
        assert_eq!((c.stage, c.negative_streak, c.unsure_streak), (Stage::Resolved, 0, 0));
        for i in 0..20 {
            c.observe(&facts(&format!("t{i}"), Some("greeting"), 0.0), &r, 0.5, 0.5);
        }
        assert_eq!(c.recent.len(), RECENT_TURNS);
        assert_eq!(c.recent.back().map(|t| t.turn), Some(23));
        assert_eq!(c.intents, vec!["refund", "thanks_bye", "greeting"]);
    }

    #[test]
    fn the_store_is_bounded_by_ttl_and_count() {
        let mut s = ConversationStore::new(StoreLimits {
            ttl_seconds: 10,
            max_conversations: 3,
        });
        for (i, t) in [0, 1000, 2000].into_iter().enumerate() {
            s.open(&format!("c{i}"), "k", Channel::Web, t).turns = 5;
        }
        // Full: a fourth drops the longest-idle (c0).
        s.open("c3", "k", Channel::Web, 3000);
        assert_eq!(s.len(), 3);
        assert!(s.get("c0").is_none() && s.get("c1").is_some());
        // Known and fresh: kept as it is.
        assert_eq!(s.open("c1", "k", Channel::Web, 4000).turns, 5);
        // Expired: starts again.
        assert_eq!(s.open("c2", "k", Channel::Web, 2000 + 10_001).turns, 0);
        // Another customer on the same id: starts again.
        assert_eq!(s.open("c1", "other", Channel::Web, 5000).turns, 0);
    }
}
