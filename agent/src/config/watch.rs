//! Settings of the sidecar mode (`watch`): intervals, rotation guard, status
//! endpoint, audit trail, Portainer API and change hooks.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Default time between two version checks of a secret.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Default cap on store requests per minute, over all secrets.
pub const DEFAULT_MAX_REQUESTS_PER_MINUTE: u32 = 600;

/// Validated `[watch]` settings.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub interval: Duration,
    /// Random spread added to each interval, as a fraction of it (0 to 0.5).
    pub jitter: f64,
    pub max_requests_per_minute: u32,
    /// Portainer's data directory: enables the rotation guard for encryption keys.
    pub data_dir: Option<PathBuf>,
    /// Replaces an encryption key without checking it against the database.
    pub replace_key_without_database: bool,
    pub status: Option<StatusListen>,
    pub audit: Option<AuditSink>,
    /// File whose bytes key the audit digests, so they compare across restarts.
    pub audit_key_file: Option<PathBuf>,
    pub portainer_api: Option<PortainerApiSpec>,
    pub hooks: Vec<HookSpec>,
}

impl Default for WatchSpec {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            jitter: 0.1,
            max_requests_per_minute: DEFAULT_MAX_REQUESTS_PER_MINUTE,
            data_dir: None,
            replace_key_without_database: false,
            status: None,
            audit: None,
            audit_key_file: None,
            portainer_api: None,
            hooks: Vec::new(),
        }
    }
}

/// Address of the status endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusListen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

/// Destination of audit events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    File(PathBuf),
}

/// The running Portainer's API, for applying a changed admin password.
#[derive(Clone, Debug)]
pub struct PortainerApiSpec {
    pub url: url::Url,
    pub username: String,
    pub user_id: u64,
}

/// Action a hook takes when a secret's content changes.
#[derive(Clone, Debug)]
pub enum HookAction {
    /// Sends a signal to a process found by pid file or by command name.
    Signal { signal: i32, target: ProcessTarget },
    /// Runs a command with an empty environment and a time limit.
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
    /// Sends `POST` with a JSON body naming the secret and its version.
    Post { url: url::Url },
}

/// Process a signal hook targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessTarget {
    PidFile(PathBuf),
    Name(String),
}

/// A validated `[[watch.hooks]]` entry.
#[derive(Clone, Debug)]
pub struct HookSpec {
    /// Secrets that trigger the hook; every secret when empty.
    pub secrets: Vec<String>,
    pub action: HookAction,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WatchToml {
    interval_seconds: Option<u64>,
    jitter: Option<f64>,
    max_requests_per_minute: Option<u32>,
    data_dir: Option<PathBuf>,
    replace_key_without_database: Option<bool>,
    status_listen: Option<String>,
    audit: Option<String>,
    audit_key_file: Option<PathBuf>,
    portainer_api: Option<PortainerApiToml>,
    #[serde(default)]
    hooks: Vec<HookToml>,
}

#[derive(Debug, Default, Deserialize)]
struct PortainerApiToml {
    url: Option<String>,
    username: Option<String>,
    user_id: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct HookToml {
    #[serde(default)]
    secrets: Vec<String>,
    signal: Option<String>,
    pid_file: Option<PathBuf>,
    process_name: Option<String>,
    command: Option<Vec<String>>,
    timeout_seconds: Option<u64>,
    url: Option<String>,
}

impl WatchToml {
    pub(super) fn validate(self, secret_names: &[String], problems: &mut Vec<String>) -> WatchSpec {
        let mut spec = WatchSpec::default();
        if let Some(seconds) = self.interval_seconds {
            if !(1..=86_400).contains(&seconds) {
                problems.push(format!(
                    "watch.interval_seconds: expected 1 to 86400, found {seconds}"
                ));
            }
            spec.interval = Duration::from_secs(seconds);
        }
        if let Some(jitter) = self.jitter {
            if !(0.0..=0.5).contains(&jitter) {
                problems.push(format!(
                    "watch.jitter: expected a fraction from 0 to 0.5, found {jitter}"
                ));
            }
            spec.jitter = jitter;
        }
        if let Some(limit) = self.max_requests_per_minute {
            if limit == 0 {
                problems.push("watch.max_requests_per_minute: must be at least 1".to_owned());
            }
            spec.max_requests_per_minute = limit.max(1);
        }
        spec.data_dir = self.data_dir;
        spec.replace_key_without_database = self.replace_key_without_database.unwrap_or(false);
        spec.status = self
            .status_listen
            .as_deref()
            .and_then(|text| parse_listen(text, problems));
        spec.audit = self.audit.map(|text| match text.as_str() {
            "stdout" => AuditSink::Stdout,
            _ => AuditSink::File(PathBuf::from(text)),
        });
        spec.audit_key_file = self.audit_key_file;
        spec.portainer_api = self.portainer_api.and_then(|api| api.validate(problems));
        spec.hooks = self
            .hooks
            .into_iter()
            .enumerate()
            .filter_map(|(index, hook)| hook.validate(index, secret_names, problems))
            .collect();
        spec
    }
}

fn parse_listen(text: &str, problems: &mut Vec<String>) -> Option<StatusListen> {
    if let Some(path) = text.strip_prefix("unix:") {
        return Some(StatusListen::Unix(PathBuf::from(path)));
    }
    match text.parse::<std::net::SocketAddr>() {
        Ok(address) => {
            if !address.ip().is_loopback() {
                tracing::warn!(%address, "the status endpoint listens beyond loopback; metrics reveal versions and timings, never values");
            }
            Some(StatusListen::Tcp(address))
        }
        Err(_) => {
            problems.push(format!(
                "watch.status_listen: {text:?} is neither IP:PORT such as \"127.0.0.1:8099\" nor unix:/path"
            ));
            None
        }
    }
}

impl PortainerApiToml {
    fn validate(self, problems: &mut Vec<String>) -> Option<PortainerApiSpec> {
        let url = match self.url.as_deref().map(url::Url::parse) {
            Some(Ok(url)) if matches!(url.scheme(), "http" | "https") => Some(url),
            Some(_) => {
                problems.push("watch.portainer_api.url: expected an http:// or https:// URL such as \"http://127.0.0.1:9000\"".to_owned());
                None
            }
            None => {
                problems
                    .push("watch.portainer_api.url: missing; set Portainer's address".to_owned());
                None
            }
        };
        Some(PortainerApiSpec {
            url: url?,
            username: self.username.unwrap_or_else(|| "admin".to_owned()),
            user_id: self.user_id.unwrap_or(1),
        })
    }
}

impl HookToml {
    fn validate(
        self,
        index: usize,
        secret_names: &[String],
        problems: &mut Vec<String>,
    ) -> Option<HookSpec> {
        let at = format!("watch.hooks[{index}]");
        for name in &self.secrets {
            if !secret_names.contains(name) {
                problems.push(format!("{at}.secrets: no secret named {name:?}"));
            }
        }
        let actions = [
            self.signal.is_some(),
            self.command.is_some(),
            self.url.is_some(),
        ];
        if actions.iter().filter(|set| **set).count() != 1 {
            problems.push(format!("{at}: set exactly one of signal, command or url"));
            return None;
        }

        let action = if let Some(signal) = &self.signal {
            self.signal_action(&at, signal, problems)?
        } else if let Some(argv) = self.command.clone() {
            if argv.is_empty() || argv[0].is_empty() {
                problems.push(format!("{at}.command: expected a program and its arguments, such as [\"/bin/kill\", \"-HUP\", \"1\"]"));
                return None;
            }
            let timeout = Duration::from_secs(self.timeout_seconds.unwrap_or(10).clamp(1, 600));
            HookAction::Command { argv, timeout }
        } else {
            let text = self.url.clone().unwrap_or_default();
            match url::Url::parse(&text) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => HookAction::Post { url },
                _ => {
                    problems.push(format!(
                        "{at}.url: {text:?} is not an http:// or https:// URL"
                    ));
                    return None;
                }
            }
        };
        Some(HookSpec {
            secrets: self.secrets,
            action,
        })
    }

    fn signal_action(
        &self,
        at: &str,
        signal: &str,
        problems: &mut Vec<String>,
    ) -> Option<HookAction> {
        let number = match signal.trim_start_matches("SIG") {
            "HUP" => libc_signal::HUP,
            "USR1" => libc_signal::USR1,
            "USR2" => libc_signal::USR2,
            "TERM" => libc_signal::TERM,
            _ => {
                problems.push(format!(
                    "{at}.signal: expected HUP, USR1, USR2 or TERM, found {signal:?}"
                ));
                return None;
            }
        };
        let target = match (&self.pid_file, &self.process_name) {
            (Some(path), None) => ProcessTarget::PidFile(path.clone()),
            (None, Some(name)) if !name.is_empty() => ProcessTarget::Name(name.clone()),
            _ => {
                problems.push(format!(
                    "{at}: a signal hook needs exactly one of pid_file or process_name"
                ));
                return None;
            }
        };
        Some(HookAction::Signal {
            signal: number,
            target,
        })
    }
}

/// Linux signal numbers used by hooks.
mod libc_signal {
    pub const HUP: i32 = 1;
    pub const USR1: i32 = 10;
    pub const USR2: i32 = 12;
    pub const TERM: i32 = 15;
}
