//! Errors of every store, classified once.

/// A failure to read from a store.
///
/// Each variant names the store (`store`), the object (`path`) and what to do
/// (`hint`); none carries a secret. [`BackendError::is_transient`] decides retries.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The store rejected the agent's identity, or the identity could not be read.
    #[error("authentication to {store} failed: {detail}; {hint}")]
    Authentication {
        store: String,
        detail: String,
        hint: String,
    },

    /// The identity was accepted but is not allowed to read this secret.
    #[error("permission denied reading {path:?} from {store}: {detail}; {hint}")]
    PermissionDenied {
        store: String,
        path: String,
        detail: String,
        hint: String,
    },

    /// The secret, the version or the mount does not exist.
    #[error("{path:?} not found in {store}: {detail}; {hint}")]
    NotFound {
        store: String,
        path: String,
        detail: String,
        hint: String,
    },

    /// The store could not be reached or returned a temporary failure
    /// (connection refused, timeout, 5xx, throttling).
    #[error("{store} is unavailable: {detail}")]
    Unavailable { store: String, detail: String },

    /// The store replied, but not in a form the agent can use.
    #[error("unexpected response from {store} for {path:?}: {detail}; {hint}")]
    InvalidResponse {
        store: String,
        path: String,
        detail: String,
        hint: String,
    },

    /// The store's settings cannot work (bad address, unreadable CA bundle).
    #[error("invalid settings for {store}: {detail}; {hint}")]
    Configuration {
        store: String,
        detail: String,
        hint: String,
    },
}

impl BackendError {
    /// Tells whether retrying the same request can succeed.
    ///
    /// The match is exhaustive on purpose: a new variant must decide here.
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::Unavailable { .. } => true,
            BackendError::Authentication { .. }
            | BackendError::PermissionDenied { .. }
            | BackendError::NotFound { .. }
            | BackendError::InvalidResponse { .. }
            | BackendError::Configuration { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_transient() {
        let unavailable = BackendError::Unavailable {
            store: "vault".into(),
            detail: "connection refused".into(),
        };
        let denied = BackendError::PermissionDenied {
            store: "vault".into(),
            path: "secret/x".into(),
            detail: "403".into(),
            hint: "grant read".into(),
        };

        assert!(unavailable.is_transient());
        assert!(!denied.is_transient());
    }
}
