//! Capped, jittered exponential backoff within a deadline.

use std::future::Future;
use std::time::Duration;

use backends::BackendError;
use tokio::time::Instant;

/// Backoff parameters, checked on construction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// Creates a backoff; `initial` must be positive and at most `max`, and
    /// `multiplier` at least 1.
    pub fn new(initial: Duration, max: Duration, multiplier: f64) -> Result<Self, String> {
        if initial.is_zero() || initial > max {
            return Err(format!(
                "backoff initial delay {initial:?} must be positive and at most the max {max:?}"
            ));
        }
        if !(1.0..=16.0).contains(&multiplier) {
            return Err(format!(
                "backoff multiplier {multiplier} must be between 1 and 16"
            ));
        }
        Ok(Self {
            initial,
            max,
            multiplier,
        })
    }

    /// Returns the ceiling for retry number `attempt` (0 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .powi(attempt.min(64).try_into().unwrap_or(i32::MAX));
        let ceiling = self.initial.as_secs_f64() * factor;
        Duration::from_secs_f64(ceiling.min(self.max.as_secs_f64()))
    }

    /// Returns a delay between half the ceiling and the ceiling, so many agents
    /// restarted together do not retry in step.
    pub fn delay(&self, attempt: u32, unit_random: f64) -> Duration {
        let ceiling = self.ceiling(attempt).as_secs_f64();
        let jitter = unit_random.clamp(0.0, 1.0);
        Duration::from_secs_f64(ceiling * (0.5 + 0.5 * jitter))
    }
}

/// Reason a retried operation ended without success.
#[derive(Debug)]
pub enum RetryError {
    /// A permanent error: retrying cannot help.
    Permanent(BackendError),
    /// The deadline passed; `last` is the latest transient error.
    DeadlineExceeded { attempts: u32, last: BackendError },
}

/// Runs `operation` until it succeeds, fails permanently, or `deadline` passes.
pub async fn retry<T, F, Fut>(
    backoff: Backoff,
    deadline: Instant,
    what: &str,
    mut operation: F,
) -> Result<T, RetryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BackendError>>,
{
    let mut attempt = 0;
    let mut last: Option<BackendError> = None;
    loop {
        let result = match tokio::time::timeout_at(deadline, operation()).await {
            Ok(result) => result,
            Err(_) => Err(last.take().unwrap_or_else(|| BackendError::Unavailable {
                store: what.to_owned(),
                detail: "the request was still running at the deadline".to_owned(),
            })),
        };
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) if !error.is_transient() => return Err(RetryError::Permanent(error)),
            Err(error) => error,
        };

        attempt += 1;
        let now = Instant::now();
        if now >= deadline {
            return Err(RetryError::DeadlineExceeded {
                attempts: attempt,
                last: error,
            });
        }
        // The last wait is cut short so one more attempt starts before the deadline.
        let delay = backoff
            .delay(attempt - 1, rand::random())
            .min(deadline - now);
        tracing::warn!(%error, attempt, retry_in_ms = delay.as_millis(), "{what} failed; retrying");
        last = Some(error);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn delay_stays_within_half_ceiling_and_max(
            initial_ms in 1u64..5_000,
            extra_ms in 0u64..60_000,
            multiplier in 1.0f64..16.0,
            attempt in 0u32..200,
            unit in 0.0f64..=1.0,
        ) {
            let initial = Duration::from_millis(initial_ms);
            let max = initial + Duration::from_millis(extra_ms);
            let backoff = Backoff::new(initial, max, multiplier).expect("valid");

            let delay = backoff.delay(attempt, unit);
            let ceiling = backoff.ceiling(attempt);

            prop_assert!(delay <= max);
            prop_assert!(delay <= ceiling);
            prop_assert!(delay.as_secs_f64() >= ceiling.as_secs_f64() * 0.5 - 1e-9);
            prop_assert!(ceiling >= initial.min(max));
        }

        #[test]
        fn ceiling_never_decreases(attempt in 0u32..100) {
            let backoff = Backoff::default();

            prop_assert!(backoff.ceiling(attempt + 1) >= backoff.ceiling(attempt));
        }
    }

    #[test]
    fn invalid_backoff_is_rejected() {
        assert!(Backoff::new(Duration::ZERO, Duration::from_secs(1), 2.0).is_err());
        assert!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1), 2.0).is_err());
        assert!(Backoff::new(Duration::from_secs(1), Duration::from_secs(2), 0.5).is_err());
    }

    fn unavailable() -> BackendError {
        BackendError::Unavailable {
            store: "test".into(),
            detail: "down".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_stop_at_deadline() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(10);

        let result: Result<(), _> = retry(Backoff::default(), deadline, "test", || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(unavailable()) }
        })
        .await;

        assert!(matches!(result, Err(RetryError::DeadlineExceeded { .. })));
        assert!(Instant::now() <= deadline);
        let count = calls.load(Ordering::SeqCst);
        assert!((3..=40).contains(&count), "{count} calls");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_error_is_not_retried() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(10);

        let result: Result<(), _> = retry(Backoff::default(), deadline, "test", || {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Err(BackendError::NotFound {
                    store: "test".into(),
                    path: "x".into(),
                    detail: "404".into(),
                    hint: "none".into(),
                })
            }
        })
        .await;

        assert!(matches!(result, Err(RetryError::Permanent(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
