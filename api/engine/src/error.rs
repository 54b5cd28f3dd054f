//! The engine's errors. Each carries a kind that front doors map to their wire format
//! (HTTP status for the Docker API, ttrpc codes for the shim) and a message worded the way
//! Docker words it, because scripts match on Docker's wording.

/// What went wrong, by kind.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No such object ("No such container: x", "No such image: x").
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state ("is already in use", "is running").
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed or names an option berth refuses.
    #[error("{0}")]
    InvalidArgument(String),
    /// Nothing to do (starting a running container).
    #[error("{0}")]
    NotModified(String),
    /// The operation is valid but berth does not support it yet.
    #[error("{0}")]
    Unsupported(String),
    /// The operation exists, but not for this object as it was configured (reading the
    /// logs of a container whose log driver keeps none): Docker's NotImplemented.
    #[error("{0}")]
    NotImplemented(String),
    /// The request is understood and refused by rule (removing a network in use, or a
    /// pre-defined one).
    #[error("{0}")]
    Forbidden(String),
    /// A failure of berth itself.
    #[error("{0}")]
    Internal(String),
}

/// The engine's result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    /// An internal error with context.
    pub fn internal(context: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        EngineError::Internal(format!("{context}: {err}"))
    }
}

impl From<std::io::Error> for EngineError {
    fn from(e: std::io::Error) -> Self {
        EngineError::Internal(e.to_string())
    }
}
