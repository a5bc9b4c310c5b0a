//! The error every port returns, classified so callers know whether a retry can help.

use std::time::Duration;

/// An error from an external system (store, model, broker), as seen through its port.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PortError {
    /// The dependency could not answer now (down, overloaded, timed out); a retry may succeed.
    #[error("{dependency} is unavailable: {message}")]
    Unavailable {
        /// Which dependency (`sqlite`, `qdrant`, `openai`, ...).
        dependency: &'static str,
        /// What happened, safe to log.
        message: String,
        /// How long the dependency asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// The dependency answered, but its output was unusable (malformed JSON, schema violation).
    #[error("{dependency} returned invalid output: {message}")]
    InvalidOutput {
        /// Which dependency.
        dependency: &'static str,
        /// What was wrong with it.
        message: String,
    },
    /// The dependency refused the request for good (bad key, bad argument); do not retry.
    #[error("{dependency} rejected the request: {message}")]
    Rejected {
        /// Which dependency.
        dependency: &'static str,
        /// What to fix.
        message: String,
    },
    /// Another worker holds or finished the thing we tried to change (e.g. a lost batch lease).
    #[error("conflict: {0}")]
    Conflict(String),
}

impl PortError {
    /// Builds an [`PortError::Unavailable`] without a `Retry-After` hint.
    pub fn unavailable(dependency: &'static str, message: impl ToString) -> Self {
        Self::Unavailable {
            dependency,
            message: message.to_string(),
            retry_after: None,
        }
    }

    /// Builds an [`PortError::InvalidOutput`].
    pub fn invalid_output(dependency: &'static str, message: impl ToString) -> Self {
        Self::InvalidOutput {
            dependency,
            message: message.to_string(),
        }
    }

    /// Builds an [`PortError::Rejected`].
    pub fn rejected(dependency: &'static str, message: impl ToString) -> Self {
        Self::Rejected {
            dependency,
            message: message.to_string(),
        }
    }

    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::InvalidOutput { .. })
    }

    /// The wait the dependency asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short, bounded label for metrics (`unavailable`, `invalid_output`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "unavailable",
            Self::InvalidOutput { .. } => "invalid_output",
            Self::Rejected { .. } => "rejected",
            Self::Conflict(_) => "conflict",
        }
    }
}

/// Result of a port call.
pub type PortResult<T> = Result<T, PortError>;
