//! Why training, evaluation or calibration failed. Model files keep the model core's own error
//! (`Model`); what is training's own — data files, job settings, checkpoints, the written
//! bundle — names the file (and line or example) so a data scientist can fix it.
use nudge_model::{BackendError, LoadError};
use std::path::PathBuf;

/// An error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An encoder or bundle could not be read or is invalid.
    #[error(transparent)]
    Model(#[from] LoadError),
    /// Running the encoder over the data failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The training arithmetic failed (candle).
    #[error("training: {0}")]
    Compute(#[from] candle_core::Error),
    /// Reading or writing a data file, cache, checkpoint or output failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A data file, a checkpoint or the job's settings are unusable; the reason names the line,
    /// example, field or flag.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file (or directory) at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl TrainError {
    /// A [`TrainError::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`TrainError::Invalid`] on `path`.
    pub fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        TrainError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
