//! A customer simulator for Nudge: seeded customers with a hidden need (a problem to solve or a
//! purchase to make), patience and price sensitivity talk to a running server through its
//! public gRPC API, in real Chinese and English messages, react to its offers, and buy, leave,
//! complain or opt out. What they do is a small Markov decision process ([`World`]) whose exact
//! optimum is computed by dynamic programming, so a learned policy's regret is measurable.
//!
//! - [`SimConfig`]: `sim.toml`, every probability the simulator draws;
//! - [`World`]: the customers' hidden dynamics, their optimum and the value of any policy;
//! - [`Messages`]: what customers write;
//! - [`run`]: conversations against a server (and outcomes to an optimizer) over gRPC;
//! - [`Summary`]: the business figures of a run.
#![warn(missing_docs)]

mod config;
mod driver;
mod messages;
mod summary;
mod world;

pub use config::{Appeal, MessageFiles, Need, Reaction, Segment, SimConfig, SimError};
pub use driver::{run, ConversationResult, Target};
pub use messages::{Lang, Messages};
pub use summary::Summary;
pub use world::{totals, BotTurn, Branch, Event, Latent, Prices, World};
