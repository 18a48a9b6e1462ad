//! Errors at the model core's boundary. Each names the file, tensor or field at fault, because
//! the person reading it is an operator at start-up or a client developer reading a gRPC status.
use std::path::PathBuf;

/// Why a bundle, an encoder directory or one of their files could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file does not parse.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Where and why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// A file parses but says something this code refuses.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file (or directory) at fault.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// One tensor is missing, has the wrong shape or dtype, or holds non-finite values.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    Tensor {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor's name in that file.
        tensor: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file's bytes do not match the sha256 its manifest records.
    #[error("{path}: sha256 mismatch: manifest says {expected}, file has {actual}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The manifest's sha256.
        expected: String,
        /// The file's sha256.
        actual: String,
    },
    /// `tokenizer.json` cannot be used.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What the tokenizers crate said.
        reason: String,
    },
    /// A tensor operation failed while building or probing the model.
    #[error("compute: {0}")]
    Candle(#[from] candle_core::Error),
}

impl LoadError {
    /// An [`LoadError::Invalid`] for `path`.
    pub fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        LoadError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An [`LoadError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LoadError::Io {
            path: path.into(),
            source,
        }
    }
}

/// A text the tokenizer could not encode.
#[derive(Debug, thiserror::Error)]
#[error("cannot be tokenized: {0}")]
pub struct TokenizeError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// An encoder pass that failed. The batch it belonged to gets the error; the model keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The tensor library refused or failed an operation.
    #[error("encoder pass failed: {0}")]
    Compute(#[from] candle_core::Error),
    /// The backend panicked inside its kernels; caught so one batch cannot take the model down.
    #[error("the encoder panicked on this batch")]
    Panicked,
    /// The GPU refused the batch or failed on it (the message names the device and why).
    #[error("{0}")]
    Device(String),
}
