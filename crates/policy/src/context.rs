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
