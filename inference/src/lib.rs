//! Nudge serving: model bundles, the BERT encoder, the dynamic batcher, heads, the gRPC
//! services and their metrics.
pub mod bundle;
pub mod encoder;
pub mod error;
pub mod heads;
pub mod import;
pub mod model;

pub use error::{LoadError, RequestError};
pub use model::{NluModel, NluOutput};
pub mod batcher;
pub mod decide;
pub mod eval;
pub mod finetune;
pub mod metrics;
pub mod model_admin;
pub mod server;
pub mod service;
pub mod train;
