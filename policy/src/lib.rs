//! Offer policies shared by the server (which decides) and the optimizer (which trains): the
//! feature schema, Bayesian linear and neural-linear reward models, exploration with exact
//! propensities, and the versioned on-disk policy format both sides validate.
pub mod error;
pub mod features;
pub mod linalg;
pub mod model;
pub mod policy;
pub mod version;

pub use error::PolicyError;
pub use features::FeatureSchema;
pub use model::{RewardModel, Trunk};
pub use policy::{Choice, Exploration, Policy};
pub use version::{PolicyManifest, PolicyVersion};
