//! The optimizer: outcomes in, better policies out.
//!
//! - [`service`]: `ReportOutcome` (validated, idempotent, durable before the ack), a trainer on
//!   a cadence, the off-policy gate with its audit log, pushes to the servers' admin listeners —
//!   or, with `[cluster]`, the same on NATS JetStream streams and the cluster's SERVING pointer;
//! - [`audit`]: the audit trail (every candidate's verdict, every push), logged and served;
//! - [`ledger`]: decision records (`nudge_records`) joined with their outcomes, bounded, with a
//!   checkpoint so a restart reads only the logs' tails;
//! - [`reward`]: the reward file data scientists write;
//! - [`learn`] and [`neural`]: linear and neural-linear candidates, judged by [`ope`];
//! - [`episodes`], [`rl`] and [`seq_ope`]: conversations as episodes, the RL learners (CQL and
//!   importance-weighted policy gradient) and the sequential estimates that judge them;
//! - [`replay`]: what a reward file would train, on logs, pushing nothing;
//! - [`obd`]: the Open Bandit Dataset as Nudge logs.
pub mod audit;
pub mod episodes;
pub mod learn;
pub mod ledger;
pub mod neural;
pub mod obd;
pub mod ope;
pub mod replay;
pub mod reward;
pub mod rl;
pub mod seq_ope;
pub mod service;

use std::path::{Path, PathBuf};

/// Why the optimizer (or `replay`) could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum OptimizerError {
    /// A file the configuration names cannot be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A configuration file says something this code refuses.
    #[error("{path}: invalid configuration: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The reward file is wrong.
    #[error(transparent)]
    Reward(#[from] reward::RewardError),
    /// Learning settings are wrong, or a candidate could not be trained.
    #[error(transparent)]
    Learn(#[from] learn::LearnError),
    /// The registry or a version in it is wrong.
    #[error("policy registry: {0}")]
    Policy(#[from] nudge_policy::PolicyError),
    /// A log could not be read or written.
    #[error(transparent)]
    Log(#[from] nudge_records::LogError),
    /// The registry names no serving version.
    #[error("the registry has no serving version (SERVING)")]
    NoServingPolicy,
    /// The registry is empty and nothing says what the first version looks like.
    #[error("the registry is empty and no initial_schema is configured")]
    NoInitialSchema,
    /// The gRPC port could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A lock was poisoned by a panic.
    #[error("optimizer state lock poisoned")]
    Poisoned,
    /// `[cluster]` is wrong, or the cluster refused a write.
    #[error(transparent)]
    Cluster(#[from] nudge_cluster::ClusterError),
    /// A background task failed.
    #[error("task: {0}")]
    Task(String),
}

impl OptimizerError {
    pub(crate) fn file(path: &Path, source: std::io::Error) -> Self {
        OptimizerError::File {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn config(path: &Path, reason: impl Into<String>) -> Self {
        OptimizerError::Config {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
