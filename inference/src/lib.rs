//! Nudge serving: the gRPC server that understands customer messages and decides offers.
//!
//! A request's way: `service` (Nlu: validate, tokenize) → `batcher` (queue, length-sorted
//! batches) → the model core's backend (`nudge_model::Backend`, one encoder pass) → heads →
//! `nlu::interpret` (the out-of-scope rule) → the answer. A decision's way: `decide` (validate →
//! featurize → choose → record → answer) → the decision log (`nudge_records`) → the optimizer
//! → a registry version → `PolicyAdmin.LoadPolicy` on the admin listener → `decide::PolicyStore`.
//!
//! `server::start` wires it: the data listener (Nlu, Decisions), the admin listener (ModelAdmin,
//! PolicyAdmin), `/metrics`, bearer-token auth and TLS per [`ServeConfig`].
//!
//! With `[cluster]` ([`ClusterConfig`]) the decision log is also forwarded to a NATS JetStream
//! stream, and the policy served follows the cluster's SERVING pointer (`nudge_cluster`).
#![warn(missing_docs)]

mod atomic;
mod auth;
pub mod batcher;
mod cluster;
mod config;
pub mod console;
mod conversations;
mod decide;
mod error;
pub mod experiment;
pub mod kpi;
mod memory;
pub mod metrics;
mod model_admin;
pub mod nlu;
mod server;
mod service;

pub use auth::BearerAuth;
pub use config::{Secret, ServeConfig, TlsConfig};
pub use conversations::{RiskConfig, StrategyConfig, StrategyLoadError};
pub use decide::{validate_decide_request, DecisionsConfig};
pub use error::RequestError;
pub use nudge_cluster::ClusterConfig;
pub use server::{start, RunningServer, ServeError};
pub use service::Limits;
