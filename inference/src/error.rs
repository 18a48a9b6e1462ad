//! Why a request failed. Each variant maps to one gRPC code (`service::to_status`), and each
//! message names the field at fault, because the reader is a client developer.

/// Why a call could not be answered.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum RequestError {
    /// The request itself is wrong (`INVALID_ARGUMENT`).
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field at fault (`text`, `texts[3]`, `candidates[0].id`…).
        field: String,
        /// Why.
        reason: String,
    },
    /// No model of that name is served (`NOT_FOUND`).
    #[error("model: no model named `{0}` is served")]
    UnknownModel(String),
    /// A named thing (conversation, decision) does not exist (`NOT_FOUND`); the message
    /// starts with the field.
    #[error("{0}")]
    NotFound(String),
    /// The batch queue is full (`RESOURCE_EXHAUSTED`).
    #[error("the batch queue is full ({0} requests waiting); retry with backoff")]
    QueueFull(usize),
    /// The decision log's writer queue is full (`RESOURCE_EXHAUSTED`): the disk is behind.
    #[error("decision log: the writer queue is full ({0} decisions waiting); retry with backoff")]
    LogFull(usize),
    /// The server is stopping (`UNAVAILABLE`).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The server is not in a state to answer (`FAILED_PRECONDITION`), e.g. no policy loaded.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A durable write failed (`UNAVAILABLE`: retry later; nothing was answered).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a failing encoder pass (`INTERNAL`).
    #[error("inference failed: {0}")]
    Internal(String),
}

impl RequestError {
    /// An [`RequestError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        RequestError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl RequestError {
    /// A failed decision-log append: `RESOURCE_EXHAUSTED` when the writer is behind, else
    /// `UNAVAILABLE` (nothing was answered; the caller retries).
    pub(crate) fn decision_log(e: nudge_records::LogError) -> Self {
        match e {
            nudge_records::LogError::Full(n) => RequestError::LogFull(n),
            e => RequestError::Unavailable(format!("decision log: {e}")),
        }
    }
}

impl From<nudge_model::BackendError> for RequestError {
    fn from(e: nudge_model::BackendError) -> Self {
        RequestError::Internal(e.to_string())
    }
}
