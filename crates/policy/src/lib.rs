//! Offer policies shared by the server (which decides) and the optimizer (which trains):
//!
//! - [`context`]: the names of the context features every decision carries;
//! - [`FeatureSchema`]: which named features a policy reads, and their `[1, c] ⊗ [1, o]` product;
//! - [`RewardModel`]: Bayesian linear reward model, optionally on an MLP trunk (neural-linear);
//! - [`Policy`] and [`Exploration`]: ε-greedy, softmax, LinUCB and Thompson sampling, each
//!   with the exact propensity of the option it chose;
//! - [`PolicyVersion`]: the versioned on-disk format both sides validate before serving;
//! - [`Registry`]: versions on disk and the one that is serving.
#![warn(missing_docs)]

pub mod context;
mod error;
mod features;
pub mod linalg;
mod model;
mod policy;
mod registry;
pub mod version;

pub use error::PolicyError;
pub use features::FeatureSchema;
pub use model::{RewardModel, Trunk};
pub use policy::{Choice, Exploration, Policy};
pub use registry::{Registry, SERVING};
pub use version::{PolicyFiles, PolicyManifest, PolicyVersion};
