use std::path::PathBuf;

/// Why a policy could not be read, validated, scored or stored.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Reading or writing a registry file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Something is malformed or inconsistent; `what` names the field or file.
    #[error("{what}: {reason}")]
    Invalid {
        /// The field, tensor or file at fault.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl PolicyError {
    /// An [`PolicyError::Invalid`] naming `what`.
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        PolicyError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
    /// An [`PolicyError::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PolicyError::Io {
            path: path.into(),
            source,
        }
    }
}
