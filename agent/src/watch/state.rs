//! Status of each secret and store in the sidecar, for health and metrics.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Per-secret status. Holds versions and times, never a value.
#[derive(Clone, Debug, Default)]
pub struct SecretStatus {
    pub store: String,
    /// Store version of the content in the file.
    pub version: Option<String>,
    pub last_success: Option<SystemTime>,
    pub last_failure: Option<SystemTime>,
    pub last_error: Option<String>,
    pub next_check: Option<SystemTime>,
    /// Store version waiting for the database to be rotated.
    pub rotation_pending: Option<String>,
    pub written_once: bool,
    /// False after a failed write, until a write succeeds.
    pub current: bool,
}

/// Request and error counts of one store, by operation and error kind.
#[derive(Clone, Debug, Default)]
pub struct StoreCounters {
    pub requests: BTreeMap<&'static str, u64>,
    pub errors: BTreeMap<&'static str, u64>,
    pub lease_expires_at: Option<SystemTime>,
}

/// Everything the status endpoint reports.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub secrets: BTreeMap<String, SecretStatus>,
    pub stores: BTreeMap<String, StoreCounters>,
    pub started: Option<SystemTime>,
}

impl State {
    /// Returns true when every file was written at least once and no write is failing.
    pub fn is_ready(&self) -> bool {
        !self.secrets.is_empty()
            && self
                .secrets
                .values()
                .all(|secret| secret.written_once && secret.current)
    }

    /// Names the secrets whose latest check failed.
    pub fn degraded(&self) -> Vec<&str> {
        self.secrets
            .iter()
            .filter(
                |(_, secret)| match (secret.last_failure, secret.last_success) {
                    (Some(failure), Some(success)) => failure > success,
                    (Some(_), None) => true,
                    (None, _) => false,
                },
            )
            .map(|(name, _)| name.as_str())
            .collect()
    }

    pub fn count_request(&mut self, store: &str, operation: &'static str) {
        let counters = self.stores.entry(store.to_owned()).or_default();
        *counters.requests.entry(operation).or_default() += 1;
    }

    pub fn count_error(&mut self, store: &str, kind: &'static str) {
        let counters = self.stores.entry(store.to_owned()).or_default();
        *counters.errors.entry(kind).or_default() += 1;
    }

    /// Renders the Prometheus text exposition format.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        self.render_secret_metrics(&mut out);
        self.render_store_metrics(&mut out);
        gauge(
            &mut out,
            "pka_ready",
            "1 when every file is written and current.",
            &[("", bool_value(self.is_ready()))],
        );
        gauge(
            &mut out,
            "pka_degraded",
            "1 when the latest check of some secret failed.",
            &[("", bool_value(!self.degraded().is_empty()))],
        );
        out
    }

    fn render_secret_metrics(&self, out: &mut String) {
        let by_secret = |value: &dyn Fn(&SecretStatus) -> Option<f64>| -> Vec<(String, f64)> {
            self.secrets
                .iter()
                .filter_map(|(name, secret)| {
                    value(secret).map(|v| (format!("secret=\"{}\"", escape(name)), v))
                })
                .collect()
        };
        let series = [
            (
                "pka_secret_last_success_timestamp_seconds",
                "Unix time of the last successful check.",
                by_secret(&|s| s.last_success.map(seconds)),
            ),
            (
                "pka_secret_last_failure_timestamp_seconds",
                "Unix time of the last failed check.",
                by_secret(&|s| s.last_failure.map(seconds)),
            ),
            (
                "pka_secret_next_check_timestamp_seconds",
                "Unix time of the next scheduled check.",
                by_secret(&|s| s.next_check.map(seconds)),
            ),
            (
                "pka_secret_rotation_pending",
                "1 while a new key waits for the database to be rotated.",
                by_secret(&|s| Some(bool_value(s.rotation_pending.is_some()))),
            ),
        ];
        for (name, help, values) in series {
            let labelled: Vec<(&str, f64)> = values
                .iter()
                .map(|(labels, value)| (labels.as_str(), *value))
                .collect();
            gauge(out, name, help, &labelled);
        }

        let versions: Vec<(String, f64)> = self
            .secrets
            .iter()
            .filter_map(|(name, secret)| {
                let version = secret.version.as_ref()?;
                Some((
                    format!(
                        "secret=\"{}\",store=\"{}\",version=\"{}\"",
                        escape(name),
                        escape(&secret.store),
                        escape(version)
                    ),
                    1.0,
                ))
            })
            .collect();
        let labelled: Vec<(&str, f64)> = versions
            .iter()
            .map(|(labels, value)| (labels.as_str(), *value))
            .collect();
        gauge(
            out,
            "pka_secret_version_info",
            "Store version of the content in the file.",
            &labelled,
        );
    }

    fn render_store_metrics(&self, out: &mut String) {
        let mut requests = Vec::new();
        let mut errors = Vec::new();
        let mut leases = Vec::new();
        for (store, counters) in &self.stores {
            for (operation, count) in &counters.requests {
                requests.push((
                    format!("store=\"{}\",operation=\"{operation}\"", escape(store)),
                    *count as f64,
                ));
            }
            for (kind, count) in &counters.errors {
                errors.push((
                    format!("store=\"{}\",kind=\"{kind}\"", escape(store)),
                    *count as f64,
                ));
            }
            if let Some(expiry) = counters.lease_expires_at {
                leases.push((format!("store=\"{}\"", escape(store)), seconds(expiry)));
            }
        }
        counter(
            out,
            "pka_store_requests_total",
            "Store requests by operation.",
            &requests,
        );
        counter(
            out,
            "pka_store_errors_total",
            "Store errors by kind.",
            &errors,
        );
        let labelled: Vec<(&str, f64)> = leases
            .iter()
            .map(|(labels, value)| (labels.as_str(), *value))
            .collect();
        gauge(
            out,
            "pka_store_token_expiry_timestamp_seconds",
            "Unix time when the store login token expires.",
            &labelled,
        );
    }
}

fn seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

fn bool_value(flag: bool) -> f64 {
    if flag { 1.0 } else { 0.0 }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn gauge(out: &mut String, name: &str, help: &str, values: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, value) in values {
        write_sample(out, name, labels, *value);
    }
}

fn counter(out: &mut String, name: &str, help: &str, values: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, value) in values {
        write_sample(out, name, labels, *value);
    }
}

fn write_sample(out: &mut String, name: &str, labels: &str, value: f64) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(secret: SecretStatus) -> State {
        let mut state = State::default();
        state.secrets.insert("database-key".to_owned(), secret);
        state
    }

    #[test]
    fn ready_needs_every_file_written_and_current() {
        let written = SecretStatus {
            written_once: true,
            current: true,
            ..SecretStatus::default()
        };
        let failing_write = SecretStatus {
            written_once: true,
            current: false,
            ..SecretStatus::default()
        };

        assert!(state_with(written).is_ready());
        assert!(!state_with(failing_write).is_ready());
        assert!(!State::default().is_ready());
    }

    #[test]
    fn failure_after_success_is_degraded() {
        let now = SystemTime::now();
        let secret = SecretStatus {
            last_success: Some(now - Duration::from_secs(10)),
            last_failure: Some(now),
            ..SecretStatus::default()
        };

        assert_eq!(state_with(secret).degraded(), ["database-key"]);
    }

    #[test]
    fn metrics_carry_versions_and_pending_flag() {
        let secret = SecretStatus {
            store: "bao".to_owned(),
            version: Some("3".to_owned()),
            rotation_pending: Some("4".to_owned()),
            ..SecretStatus::default()
        };
        let mut state = state_with(secret);
        state.count_request("bao", "read");

        let text = state.render_metrics();

        assert!(
            text.contains(
                "pka_secret_version_info{secret=\"database-key\",store=\"bao\",version=\"3\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("pka_secret_rotation_pending{secret=\"database-key\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pka_store_requests_total{store=\"bao\",operation=\"read\"} 1"),
            "{text}"
        );
    }
}
