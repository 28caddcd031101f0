//! Pieces shared by the OAuth 2.0 token exchanges of the Azure and GCP stores:
//! the projected token file, cached access tokens and bearer headers.

use std::path::Path;
use std::time::Duration;

use reqwest::header::HeaderValue;
use serde_json::Value;
use tokio::time::Instant;

use crate::{BackendError, SecretBytes};

/// Largest reply body accepted from a token endpoint or a secret store.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Maximum time before its expiry at which a cached access token is replaced.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// An access token and the instant after which it is not used any more.
pub(crate) struct CachedToken {
    pub(crate) value: SecretBytes,
    pub(crate) refresh_at: Instant,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CachedToken")
            .field("refresh_at", &self.refresh_at)
            .finish_non_exhaustive()
    }
}

impl CachedToken {
    /// Caches `value` until `lifetime` minus a margin of at most five minutes, and
    /// never past half of a short lifetime.
    pub(crate) fn new(value: SecretBytes, lifetime: Duration) -> Self {
        let margin = MAX_REFRESH_MARGIN.min(lifetime / 2);
        Self {
            value,
            refresh_at: Instant::now() + lifetime.saturating_sub(margin),
        }
    }

    pub(crate) fn is_fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

/// Reads a projected service-account token (a JWT) from `path`, on every call, so
/// a token that the kubelet replaced is picked up at the next exchange.
pub(crate) fn read_token_file(
    store: &str,
    path: &Path,
    hint: &str,
) -> Result<SecretBytes, BackendError> {
    let mut bytes = std::fs::read(path).map(SecretBytes::new).map_err(|error| {
        BackendError::Authentication {
            store: store.to_owned(),
            detail: format!("failed to read the token file {path:?}: {error}"),
            hint: hint.to_owned(),
        }
    })?;
    let trimmed_len = bytes.expose().trim_ascii_end().len();
    bytes.expose_mut().truncate(trimmed_len);
    let is_text = std::str::from_utf8(bytes.expose()).is_ok();
    if bytes.is_empty() || !is_text {
        return Err(BackendError::Authentication {
            store: store.to_owned(),
            detail: format!("the token file {path:?} is empty or not text"),
            hint: hint.to_owned(),
        });
    }
    Ok(bytes)
}

/// Builds `Bearer <token>` as a header value that `Debug` output redacts.
pub(crate) fn bearer_header(store: &str, token: &SecretBytes) -> Result<HeaderValue, BackendError> {
    let mut bytes = SecretBytes::copy_from(b"Bearer ");
    bytes.expose_mut().extend_from_slice(token.expose());
    let mut value =
        HeaderValue::from_bytes(bytes.expose()).map_err(|_| BackendError::InvalidResponse {
            store: store.to_owned(),
            path: String::new(),
            detail: "the access token contains characters that are not allowed in a header"
                .to_owned(),
            hint: "check the token endpoint URL".to_owned(),
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Reads `expires_in` (seconds, as a number or a numeric string) from a token reply.
pub(crate) fn expires_in(reply: &Value) -> Option<Duration> {
    let seconds = match reply.get("expires_in")? {
        Value::Number(number) => number.as_u64()?,
        Value::String(text) => text.parse().ok()?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

/// Takes a string field out of a parsed reply as secret bytes, leaving an empty
/// string behind.
pub(crate) fn take_secret_string(reply: &mut Value, field: &str) -> Option<SecretBytes> {
    match reply.get_mut(field)? {
        Value::String(text) => Some(SecretBytes::from(std::mem::take(text))),
        _ => None,
    }
}

/// Shortens a message from a server to one line of at most 300 characters.
pub(crate) fn short_message(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_token_keeps_margin() {
        let token = CachedToken::new(SecretBytes::copy_from(b"t"), Duration::from_secs(3600));

        let left = token.refresh_at - Instant::now();

        assert!(left <= Duration::from_secs(3300), "{left:?}");
        assert!(left > Duration::from_secs(3200), "{left:?}");
    }

    #[test]
    fn short_lifetime_refreshes_at_half() {
        let token = CachedToken::new(SecretBytes::copy_from(b"t"), Duration::from_secs(60));

        let left = token.refresh_at - Instant::now();

        assert!(left <= Duration::from_secs(30), "{left:?}");
    }

    #[test]
    fn expires_in_accepts_number_and_string() {
        let number = serde_json::json!({"expires_in": 3599});
        let text = serde_json::json!({"expires_in": "3599"});

        assert_eq!(expires_in(&number), Some(Duration::from_secs(3599)));
        assert_eq!(expires_in(&text), Some(Duration::from_secs(3599)));
        assert_eq!(expires_in(&serde_json::json!({})), None);
    }

    #[test]
    fn bearer_header_is_sensitive() {
        let header = bearer_header("store", &SecretBytes::copy_from(b"abc")).expect("header");

        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("abc"));
    }

    #[test]
    fn token_file_is_trimmed_and_required() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "header.payload.signature\n").expect("write");

        let token = read_token_file("store", &path, "hint").expect("token");
        std::fs::write(&path, "\n").expect("write");
        let empty = read_token_file("store", &path, "hint").expect_err("empty");

        assert_eq!(token.expose(), b"header.payload.signature");
        assert!(
            matches!(empty, BackendError::Authentication { .. }),
            "{empty}"
        );
    }
}
