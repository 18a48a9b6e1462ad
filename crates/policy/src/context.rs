//! The names of the context features a server builds for every decision, so the server that
//! writes them, the optimizer that learns from them and the data scientist who writes a schema
//! all mean the same thing. A schema's `context` list names the features its policy reads;
//! names it does not list are ignored, names it lists but a decision lacks read as 0.
//!
//! | feature | value |
//! |---|---|
//! | any key of the request's `context` map | its value, as sent |
//! | `channel=<channel>` | 1 for the request's channel |
//! | `intent=<label>` | 1 for the understood intent (`intent=oos` when out of scope) |
//! | `intent_confidence` | probability of the best in-scope intent |
//! | `out_of_scope` | 1 when the message is out of scope, else 0 |
//! | `sentiment=<label>` | probability of each sentiment label |
//! | `emb_<i>` | i-th coordinate of the policy's fixed projection of the message embedding |
//! | `stage=<open\|issue\|resolved>`, `tier=<tier>` | 1 (Conversations/Turn) |
//! | `turn`, `offers_shown` | the turn number and offers already shown (Conversations/Turn) |
//!
//! Conversations/Turn gives each candidate the offer features of [`offer`]: `offer=<id>`,
//! `offer_kind=<kind>`, `discount_share` and `rule_priority`.

/// Prefix of the one-hot channel feature: `channel=web`.
pub const CHANNEL_PREFIX: &str = "channel=";
/// Prefix of the one-hot intent feature: `intent=refund`.
pub const INTENT_PREFIX: &str = "intent=";
/// Probability of the best in-scope intent.
pub const INTENT_CONFIDENCE: &str = "intent_confidence";
/// 1 when the message is out of scope.
pub const OUT_OF_SCOPE: &str = "out_of_scope";
/// Prefix of the per-label sentiment probabilities: `sentiment=negative`.
pub const SENTIMENT_PREFIX: &str = "sentiment=";
/// Prefix of the embedding projection's coordinates: `emb_0`, `emb_1`…
pub const EMBEDDING_PREFIX: &str = "emb_";

/// `channel=<channel>`.
pub fn channel(channel: &str) -> String {
    format!("{CHANNEL_PREFIX}{channel}")
}

/// `intent=<label>`.
pub fn intent(label: &str) -> String {
    format!("{INTENT_PREFIX}{label}")
}

/// `sentiment=<label>`.
pub fn sentiment(label: &str) -> String {
    format!("{SENTIMENT_PREFIX}{label}")
}

/// `emb_<i>`.
pub fn embedding(i: usize) -> String {
    format!("{EMBEDDING_PREFIX}{i}")
}

/// `stage=<open|issue|resolved>`: where the conversation stands (Conversations/Turn).
pub const STAGE_PREFIX: &str = "stage=";
/// `tier=<name>`: the customer's tier (Conversations/Turn).
pub const TIER_PREFIX: &str = "tier=";
/// The 1-based turn number in the conversation (Conversations/Turn).
pub const TURN: &str = "turn";
/// Offers already shown in the conversation (Conversations/Turn).
pub const OFFERS_SHOWN: &str = "offers_shown";

/// Offer features the strategy engine gives each candidate (Conversations/Turn), so policies
/// trained on its decisions read the same names.
pub mod offer {
    /// `offer=<id>`: which offer (one-hot).
    pub const ID_PREFIX: &str = "offer=";
    /// `offer_kind=<coupon|spend_save|percent_off|bundle|upgrade|warranty>` (one-hot).
    pub const KIND_PREFIX: &str = "offer_kind=";
    /// Discount as a share of the quote's list price, in [0, 1].
    pub const DISCOUNT_SHARE: &str = "discount_share";
    /// The highest priority of the rules that allowed it.
    pub const PRIORITY: &str = "rule_priority";

    /// `offer=<id>`.
    pub fn id(id: &str) -> String {
        format!("{ID_PREFIX}{id}")
    }

    /// `offer_kind=<kind>`.
    pub fn kind(kind: &str) -> String {
        format!("{KIND_PREFIX}{kind}")
    }
}

/// `stage=<stage>`.
pub fn stage(stage: &str) -> String {
    format!("{STAGE_PREFIX}{stage}")
}

/// `tier=<tier>`.
pub fn tier(tier: &str) -> String {
    format!("{TIER_PREFIX}{tier}")
}
