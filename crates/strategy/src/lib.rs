//! The strategy engine: what a marketing-minded service bot may offer, to whom, when, and at
//! what exact price. Pure logic — no transport, no model — so every rule can be tested alone:
//!
//! - [`Catalog`]: products and offers from TOML (and CSV), validated with file, line and field;
//! - [`money::Cents`] and [`pricing::quote`]: integer prices, documented rounding, explicit
//!   stacking, never negative, overflow-checked;
//! - [`link::SkuLinker`]: product mentions in zh/en text → SKUs (normalised, longest match,
//!   ambiguity reported);
//! - [`rules::Rules`]: the operators' file — when an offer becomes eligible, its priority, what
//!   is forbidden;
//! - [`guardrails::Guardrails`]: caps, cool-downs, consent, opt-out, budgets, quiet hours,
//!   negative sentiment — applied after rules and before any policy;
//! - [`conversation`]: a conversation's state, hand-off signals and the agent's summary, with
//!   personal data masked by [`pii::mask`].
#![warn(missing_docs)]

pub mod catalog;
mod channel;
pub mod conversation;
pub mod engine;
mod error;
pub mod guardrails;
mod hours;
pub mod link;
pub mod money;
pub mod pii;
pub mod pricing;
pub mod rules;

pub use catalog::{Catalog, Offer, OfferKind, Product};
pub use channel::Channel;
pub use error::StrategyError;
pub use money::Cents;
