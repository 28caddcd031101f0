//! Audit trail: one JSON line per delivery or refusal.
//!
//! The content digest is HMAC-SHA-256 keyed with the audit key file, or with a
//! random per-process key when none is set. A plain SHA-256 of the key file would
//! be Portainer's AES key itself, and a plain hash of a short password is guessable.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::AuditSink;

/// One audit event.
#[derive(Clone, Debug)]
pub struct Event<'a> {
    pub secret: &'a str,
    pub store: &'a str,
    pub version: &'a str,
    pub target: &'a Path,
    pub bytes: &'a [u8],
    /// `written`, `unchanged`, `rotation-pending` or `failed`.
    pub outcome: &'a str,
    pub detail: Option<&'a str>,
}

/// Writes audit events to stdout or a file.
pub struct Audit {
    sink: Option<AuditSink>,
    key: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Audit")
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

impl Audit {
    /// Opens the trail; an unreadable key file falls back to a random key, logged.
    pub fn new(sink: Option<AuditSink>, key_file: Option<&Path>) -> Self {
        let key = match key_file.map(std::fs::read) {
            Some(Ok(bytes)) if !bytes.is_empty() => bytes,
            Some(_) => {
                tracing::warn!(path = ?key_file, "failed to read audit_key_file; digests use a random key and do not compare across restarts");
                random_key()
            }
            None => random_key(),
        };
        Self {
            sink,
            key: zeroize::Zeroizing::new(key),
        }
    }

    /// Returns the keyed digest of `bytes` as hex.
    pub fn digest(&self, bytes: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(bytes);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Records one event; failures to write are logged, not fatal.
    pub fn record(&self, event: &Event<'_>) {
        let Some(sink) = &self.sink else {
            return;
        };
        let line = serde_json::json!({
            "time": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default(),
            "event": "delivery",
            "secret": event.secret,
            "store": event.store,
            "version": event.version,
            "target": event.target,
            "bytes": event.bytes.len(),
            "digest": format!("hmac-sha256:{}", self.digest(event.bytes)),
            "outcome": event.outcome,
            "detail": event.detail,
        });
        let written = match sink {
            AuditSink::Stdout => writeln!(std::io::stdout().lock(), "{line}"),
            AuditSink::File(path) => append(path, &line.to_string()),
        };
        if let Err(error) = written {
            tracing::warn!(%error, "failed to write an audit event");
        }
    }
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{line}")
}

fn random_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    rand::fill(key.as_mut_slice());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_keyed_and_not_the_plain_hash() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key_file = dir.path().join("audit.key");
        std::fs::write(&key_file, b"audit key").expect("write key");
        let first = Audit::new(None, Some(&key_file));
        let second = Audit::new(None, Some(&key_file));
        let random = Audit::new(None, None);

        let plain = hex::encode(<Sha256 as sha2::Digest>::digest(b"abc"));

        assert_eq!(first.digest(b"abc"), second.digest(b"abc"));
        assert_ne!(first.digest(b"abc"), random.digest(b"abc"));
        assert_ne!(first.digest(b"abc"), plain);
    }

    #[test]
    fn events_are_json_lines_without_values() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("audit.log");
        let audit = Audit::new(Some(AuditSink::File(path.clone())), None);

        audit.record(&Event {
            secret: "database-key",
            store: "bao",
            version: "3",
            target: Path::new("/run/secrets/portainer"),
            bytes: b"hunter2-value",
            outcome: "written",
            detail: None,
        });

        let text = std::fs::read_to_string(path).expect("audit log");
        let event: serde_json::Value = serde_json::from_str(text.trim()).expect("json line");
        assert_eq!(event["outcome"], "written");
        assert_eq!(event["bytes"], 13);
        assert!(!text.contains("hunter2"), "{text}");
    }
}
