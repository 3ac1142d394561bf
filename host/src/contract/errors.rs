//! The two error types every floor shares: what a backend call can fail
//! with, and what a capability call can fail with, the guest-visible cases
//! apart from a host failure that ends the instance.

/// A backend call that failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot be reached or failed to answer; worth a retry.
    #[error("{0}")]
    Unavailable(String),
    /// The backend refused the request as malformed.
    #[error("{0}")]
    Invalid(String),
    /// The backend refused the request as too large.
    #[error("{0}")]
    TooLarge(String),
}

/// A failed capability call. The first four reach the guest as its
/// `capability-error`; `Trap` ends the instance.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityFailure {
    /// Outside the tenant's grants.
    #[error("denied: {0}")]
    Denied(String),
    /// The backend is down or slow.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call is malformed.
    #[error("invalid: {0}")]
    Invalid(String),
    /// An argument is over a size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// A host failure: the instance cannot go on.
    #[error("host failure: {0}")]
    Trap(String),
}

impl From<BackendError> for CapabilityFailure {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable(m) => Self::Unavailable(m),
            BackendError::Invalid(m) => Self::Invalid(m),
            BackendError::TooLarge(m) => Self::TooLarge(m),
        }
    }
}
