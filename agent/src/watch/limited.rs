//! A store wrapper that spaces requests to a global rate and counts them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backends::{
    BackendError, BackendFuture, SecretBackend, SecretRequest, SecretValue, SecretVersion,
};
use tokio::time::Instant;

use super::state::State;

/// Spaces requests so that at most `per_minute` start in any minute.
#[derive(Debug)]
pub struct RateLimiter {
    gap: Duration,
    next_free: tokio::sync::Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            gap: Duration::from_secs(60) / per_minute.max(1),
            next_free: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    /// Waits for the next free slot.
    pub async fn acquire(&self) {
        let start = {
            let mut next_free = self.next_free.lock().await;
            let start = (*next_free).max(Instant::now());
            *next_free = start + self.gap;
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// A store whose every request waits for the rate limiter and is counted.
#[derive(Debug)]
pub struct Limited {
    pub name: String,
    pub inner: Arc<dyn SecretBackend>,
    pub limiter: Arc<RateLimiter>,
    pub state: Arc<Mutex<State>>,
}

impl Limited {
    fn count<T>(&self, operation: &'static str, result: &Result<T, BackendError>) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.count_request(&self.name, operation);
        if let Err(error) = result {
            state.count_error(&self.name, error_kind(error));
        }
    }
}

/// Names an error kind for metrics.
pub fn error_kind(error: &BackendError) -> &'static str {
    match error {
        BackendError::Authentication { .. } => "authentication",
        BackendError::PermissionDenied { .. } => "permission_denied",
        BackendError::NotFound { .. } => "not_found",
        BackendError::Unavailable { .. } => "unavailable",
        BackendError::InvalidResponse { .. } => "invalid_response",
        BackendError::Configuration { .. } => "configuration",
    }
}

impl SecretBackend for Limited {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn fetch<'a>(&'a self, request: &'a SecretRequest) -> BackendFuture<'a, SecretValue> {
        Box::pin(async move {
            self.limiter.acquire().await;
            let result = self.inner.fetch(request).await;
            self.count("read", &result);
            result
        })
    }

    fn resolve_version<'a>(
        &'a self,
        request: &'a SecretRequest,
    ) -> BackendFuture<'a, SecretVersion> {
        Box::pin(async move {
            self.limiter.acquire().await;
            let result = self.inner.resolve_version(request).await;
            self.count("version", &result);
            result
        })
    }

    fn token_expires_in(&self) -> BackendFuture<'_, Option<Duration>> {
        self.inner.token_expires_in()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limiter_spaces_requests() {
        let limiter = RateLimiter::new(60);
        let start = Instant::now();

        for _ in 0..4 {
            limiter.acquire().await;
        }

        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    }
}
