//! Errors at the library boundary. Each names the file, tensor or field at fault, because the
//! person reading it is an operator at start-up or a client developer reading a gRPC status.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: tensor `{tensor}`: {reason}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("{path}: sha256 mismatch: manifest says {expected}, file has {actual}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("compute: {0}")]
    Candle(#[from] candle_core::Error),
}

impl LoadError {
    pub fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        LoadError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LoadError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Why a text could not be understood. Mapped to gRPC statuses in `service`.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum RequestError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("model: no model named `{0}` is served")]
    UnknownModel(String),
    #[error("the batch queue is full ({0} requests waiting); retry with backoff")]
    QueueFull(usize),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("inference failed: {0}")]
    Internal(String),
}

impl RequestError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        RequestError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
