//! Sidecar mode: deliver every file, then keep each one current.
//!
//! Each secret is checked on its own interval (with jitter): the store's cheap
//! version call first, the value only when the version changed, and the file only
//! when its content differs. A new encryption key passes the rotation guard: it is
//! written only once Portainer's database opens with it, so a key rotated in the
//! store before the database never bricks Portainer. Failures keep the last good
//! file, mark the agent degraded and retry with capped, jittered backoff.

mod audit;
mod hooks;
mod limited;
mod portainer_api;
pub mod state;
pub mod status;
mod tokens;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use backends::{SecretBackend, SecretBytes};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use crate::candidates::{Database, choose_key, find_database};
use crate::config::{Config, SecretKind, SecretSpec};
use crate::fetch::{RunError, Stores, build_stores, fetch_one, log_start, placement};
use crate::retry::Backoff;
use crate::value::Prepared;
use audit::{Audit, Event};
use limited::{Limited, RateLimiter};
use state::{SecretStatus, State};

/// Shortest time one check may take before it counts as failed, whatever the
/// interval: enough for a login, a version call and a read on a slow network.
const MIN_CHECK_TIME: Duration = Duration::from_secs(5);

/// Signal that the main container has exited.
#[derive(Clone, Debug)]
pub enum ExitWhen {
    PidFile(PathBuf),
    ProcessName(String),
}

/// Command-line options of `watch`.
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    /// The configuration file, re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
    pub exit_when: Option<ExitWhen>,
}

/// Reason the event loop woke up.
enum Wake {
    Due,
    Terminate(&'static str),
    Reload,
    TokenFileChanged,
    MainExited,
}

/// The sidecar and everything it tracks.
struct Watcher {
    config: Config,
    stores: Stores,
    state: Arc<Mutex<State>>,
    limiter: Arc<RateLimiter>,
    audit: Audit,
    http: reqwest::Client,
    due: BTreeMap<String, Instant>,
    failures: BTreeMap<String, u32>,
}

/// Runs the sidecar until SIGTERM, SIGINT, or the main container's exit.
pub async fn run(config: Config, options: WatchOptions) -> Result<(), RunError> {
    log_start(&config, "watch");
    let state = Arc::new(Mutex::new(State {
        started: Some(SystemTime::now()),
        ..State::default()
    }));
    if let Some(listen) = config.watch.status.clone() {
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(error) = status::serve(listen, state).await {
                tracing::error!(%error, "status endpoint stopped");
            }
        });
    }

    let mut watcher = Watcher::new(config, state)?;
    watcher.remove_stale_temporaries();
    watcher.event_loop(&options).await
}

impl Watcher {
    fn new(config: Config, state: Arc<Mutex<State>>) -> Result<Self, RunError> {
        let limiter = Arc::new(RateLimiter::new(config.watch.max_requests_per_minute));
        let stores = limited_stores(&config, &limiter, &state)?;
        let audit = Audit::new(
            config.watch.audit.clone(),
            config.watch.audit_key_file.as_deref(),
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let mut watcher = Self {
            config,
            stores,
            state,
            limiter,
            audit,
            http,
            due: BTreeMap::new(),
            failures: BTreeMap::new(),
        };
        watcher.reset_schedule();
        Ok(watcher)
    }

    fn remove_stale_temporaries(&self) {
        for secret in &self.config.secrets {
            crate::writer::remove_stale_temporaries(&secret.target);
        }
    }

    /// Makes every secret due now and registers it in the status.
    fn reset_schedule(&mut self) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.secrets.retain(|name, _| {
            self.config
                .secrets
                .iter()
                .any(|secret| &secret.name == name)
        });
        for secret in &self.config.secrets {
            self.due.insert(secret.name.clone(), now);
            let status = state.secrets.entry(secret.name.clone()).or_default();
            status.store.clone_from(&secret.store);
        }
        self.due.retain(|name, _| {
            self.config
                .secrets
                .iter()
                .any(|secret| &secret.name == name)
        });
    }

    async fn event_loop(&mut self, options: &WatchOptions) -> Result<(), RunError> {
        let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
        let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
        let (_token_watcher, mut token_events) = tokens::watch_token_files(&self.config);
        let mut exit_poll = tokio::time::interval(Duration::from_secs(1));

        loop {
            let wake = tokio::select! {
                () = self.wait_for_due() => Wake::Due,
                _ = terminate.recv() => Wake::Terminate("SIGTERM"),
                _ = interrupt.recv() => Wake::Terminate("SIGINT"),
                _ = hangup.recv() => Wake::Reload,
                Some(()) = token_events.recv() => Wake::TokenFileChanged,
                _ = exit_poll.tick(), if options.exit_when.is_some() => {
                    if main_exited(options.exit_when.as_ref()) { Wake::MainExited } else { continue }
                }
            };
            match wake {
                // Only a stop request interrupts a check; a check never stops inside a
                // file write, because writes do not await.
                Wake::Due => tokio::select! {
                    () = self.check_due() => {}
                    _ = terminate.recv() => return stopping("SIGTERM"),
                    _ = interrupt.recv() => return stopping("SIGINT"),
                },
                Wake::Terminate(why) => return stopping(why),
                Wake::MainExited => {
                    tracing::info!("stopping: the main container's process exited");
                    return Ok(());
                }
                Wake::Reload => self.reload(options.config_path.as_deref()),
                Wake::TokenFileChanged => self.expedite_failing(),
            }
        }
    }

    /// Sleeps until the earliest secret is due.
    async fn wait_for_due(&self) {
        match self.due.values().min() {
            Some(due) => tokio::time::sleep_until(*due).await,
            None => std::future::pending::<()>().await,
        }
    }

    /// Checks the secret that is due first.
    async fn check_due(&mut self) {
        let Some(name) = self
            .due
            .iter()
            .min_by_key(|(_, due)| **due)
            .map(|(name, _)| name.clone())
        else {
            return;
        };
        let Some(secret) = self
            .config
            .secrets
            .iter()
            .find(|secret| secret.name == name)
            .cloned()
        else {
            self.due.remove(&name);
            return;
        };

        let outcome = self.check(&secret).await;
        let next = match outcome {
            Ok(()) => {
                self.failures.remove(&name);
                self.interval_of(&secret)
            }
            Err(error) => self.record_failure(&secret, &error),
        };
        self.schedule(&secret, next).await;
    }

    fn interval_of(&self, secret: &SecretSpec) -> Duration {
        let base = secret.interval.unwrap_or(self.config.watch.interval);
        let spread = base.mul_f64(self.config.watch.jitter * rand::random::<f64>());
        base + spread
    }

    /// Returns the time one check may take, retries included: the secret's
    /// interval, but at least `MIN_CHECK_TIME` so that a slow login can finish,
    /// and at most `deadline_seconds`. A check never holds up the other secrets,
    /// or the report of an outage, for longer than that.
    fn check_budget(&self, secret: &SecretSpec) -> Duration {
        let interval = secret.interval.unwrap_or(self.config.watch.interval);
        interval.max(MIN_CHECK_TIME).min(self.config.deadline)
    }

    /// Returns the backoff between retries of a failing secret: from 1 s (or the
    /// interval when shorter), doubling up to the interval.
    fn failure_backoff(&self, secret: &SecretSpec) -> Backoff {
        let interval = secret.interval.unwrap_or(self.config.watch.interval);
        Backoff::new(Duration::from_secs(1).min(interval), interval, 2.0).unwrap_or_default()
    }

    fn record_failure(&mut self, secret: &SecretSpec, error: &RunError) -> Duration {
        let backoff = self.failure_backoff(secret);
        let failures = self.failures.entry(secret.name.clone()).or_insert(0);
        *failures += 1;
        let delay = backoff.delay(*failures - 1, rand::random());
        tracing::warn!(secret = %secret.name, failures = *failures, retry_in_seconds = delay.as_secs_f64(), "check failed; keeping the current file: {error}");

        let mut state = lock(&self.state);
        let status = state.secrets.entry(secret.name.clone()).or_default();
        status.last_failure = Some(SystemTime::now());
        status.last_error = Some(error.to_string());
        delay
    }

    async fn schedule(&mut self, secret: &SecretSpec, delay: Duration) {
        self.due.insert(secret.name.clone(), Instant::now() + delay);
        let expiry = self.stores[&secret.store]
            .token_expires_in()
            .await
            .ok()
            .flatten();
        let mut state = lock(&self.state);
        if let Some(left) = expiry {
            state
                .stores
                .entry(secret.store.clone())
                .or_default()
                .lease_expires_at = Some(SystemTime::now() + left);
        }
        state
            .secrets
            .entry(secret.name.clone())
            .or_default()
            .next_check = Some(SystemTime::now() + delay);
        tracing::debug!(secret = %secret.name, next_check_in_seconds = delay.as_secs_f64(), "next check scheduled");
    }

    /// Checks one secret: version, value, guard, write, hooks.
    async fn check(&mut self, secret: &SecretSpec) -> Result<(), RunError> {
        let known = lock(&self.state)
            .secrets
            .get(&secret.name)
            .cloned()
            .unwrap_or_default();
        let budget = self.check_budget(secret);
        let deadline = Instant::now() + budget;
        let store: &dyn SecretBackend = self.stores[&secret.store].as_ref();

        if known.written_once && known.rotation_pending.is_none() {
            let request = secret.request();
            let what = format!("checking the version of secret {:?}", secret.name);
            let version =
                crate::retry::retry(self.failure_backoff(secret), deadline, &what, || {
                    store.resolve_version(&request)
                })
                .await
                .map_err(|error| retry_error(secret, budget, error))?;
            if known.version.as_deref() == Some(version.version.as_str()) {
                self.mark_success(secret, None);
                return Ok(());
            }
            tracing::info!(secret = %secret.name, from = known.version.as_deref().unwrap_or("none"), to = %version.version, "new version in the store");
        }

        let previous = std::fs::read(&secret.target).ok().map(SecretBytes::new);
        let prepared = self
            .fetch_value(secret, previous.is_none(), deadline)
            .await?;
        if previous.as_ref().map(SecretBytes::expose) == Some(prepared.bytes.expose()) {
            self.mark_delivered(secret, &prepared.version);
            return Ok(());
        }

        if secret.kind == SecretKind::EncryptionKey
            && previous.is_some()
            && let Some(reason) = self.guard_refuses(secret, &prepared)?
        {
            self.mark_pending(secret, &prepared, &reason);
            return Ok(());
        }
        self.deliver(secret, &prepared, previous).await
    }

    /// Fetches the value; a first delivery of a key picks the version that opens
    /// the database.
    async fn fetch_value(
        &self,
        secret: &SecretSpec,
        first: bool,
        deadline: Instant,
    ) -> Result<Prepared, RunError> {
        let fetch = async |candidate: &SecretSpec, deadline: Instant| {
            fetch_one(&self.config, &self.stores, candidate, deadline).await
        };
        let database = self.encrypted_database();
        match database {
            Some(database) if first && secret.kind == SecretKind::EncryptionKey => {
                let store_kind = &self.config.store_of(secret).kind;
                choose_key(store_kind, secret, &database, deadline, fetch).await
            }
            _ => fetch(secret, deadline).await,
        }
    }

    fn encrypted_database(&self) -> Option<PathBuf> {
        match find_database(self.config.watch.data_dir.as_deref()?) {
            Database::Encrypted(path) => Some(path),
            Database::PlaintextOnly(_) | Database::Missing => None,
        }
    }

    /// Returns why a changed key must not replace the file yet, or `None` to write it.
    fn guard_refuses(
        &self,
        secret: &SecretSpec,
        prepared: &Prepared,
    ) -> Result<Option<String>, RunError> {
        let Some(data_dir) = self.config.watch.data_dir.as_deref() else {
            if self.config.watch.replace_key_without_database {
                return Ok(None);
            }
            return Ok(Some("the database is not configured (watch.data_dir), so a changed key is never written after the first delivery; set watch.data_dir, or watch.replace_key_without_database = true".to_owned()));
        };
        let Database::Encrypted(database) = find_database(data_dir) else {
            return Ok(None);
        };
        match crate::db::verify(&database, prepared.bytes.expose()) {
            Ok(_) => Ok(None),
            Err(error) if error.is_key_mismatch() => Ok(Some(format!(
                "the new key does not open {}; rotate the database with `portainer-key-agent rotate-key` or `db rotate`",
                database.display()
            ))),
            // A running Portainer holds bbolt's exclusive lock, and it opened the
            // database with the key in the file now. The database can only be
            // rotated while Portainer is stopped, so the key waits, and the agent
            // is not degraded by a Portainer that is simply running.
            Err(crate::db::DbError::Locked { path }) => Ok(Some(format!(
                "{} is locked by a running Portainer, which uses the current key; stop Portainer and rotate the database with `portainer-key-agent rotate-key` or `db rotate`",
                path.display()
            ))),
            Err(error) => Err(RunError::Database {
                secret: secret.name.clone(),
                error: Box::new(error),
            }),
        }
    }

    async fn deliver(
        &mut self,
        secret: &SecretSpec,
        prepared: &Prepared,
        previous: Option<SecretBytes>,
    ) -> Result<(), RunError> {
        let written = placement(secret).write(prepared.bytes.expose());
        if let Err(error) = written {
            lock(&self.state)
                .secrets
                .entry(secret.name.clone())
                .or_default()
                .current = false;
            self.audit_event(secret, prepared, "failed", Some(&error.to_string()));
            return Err(RunError::Write {
                secret: secret.name.clone(),
                error,
            });
        }
        tracing::info!(secret = %secret.name, target = %secret.target.display(), version = %prepared.version, bytes = prepared.bytes.len(), "file written");
        self.audit_event(secret, prepared, "written", None);
        self.mark_delivered(secret, &prepared.version);

        let Some(previous) = previous else {
            return Ok(());
        };
        if secret.kind == SecretKind::AdminPassword {
            self.apply_password(&previous, &prepared.bytes).await;
        }
        let change = hooks::Change {
            secret: &secret.name,
            version: &prepared.version,
            target: &secret.target,
        };
        hooks::run_hooks(&self.config.watch.hooks, &self.http, &change).await;
        Ok(())
    }

    async fn apply_password(&self, previous: &SecretBytes, new: &SecretBytes) {
        let Some(api) = &self.config.watch.portainer_api else {
            return;
        };
        match portainer_api::change_password(&self.http, api, previous, new).await {
            Ok(()) => tracing::info!(
                user_id = api.user_id,
                "admin password changed in the running Portainer"
            ),
            Err(error) => tracing::error!(
                user_id = api.user_id,
                "failed to change the admin password in the running Portainer: {error}"
            ),
        }
    }

    fn audit_event(
        &self,
        secret: &SecretSpec,
        prepared: &Prepared,
        outcome: &str,
        detail: Option<&str>,
    ) {
        self.audit.record(&Event {
            secret: &secret.name,
            store: &secret.store,
            version: &prepared.version,
            target: &secret.target,
            bytes: prepared.bytes.expose(),
            outcome,
            detail,
        });
    }

    fn mark_success(&self, secret: &SecretSpec, version: Option<&str>) {
        let mut state = lock(&self.state);
        let status = state.secrets.entry(secret.name.clone()).or_default();
        status.last_success = Some(SystemTime::now());
        if let Some(version) = version {
            status.version = Some(version.to_owned());
        }
    }

    fn mark_delivered(&self, secret: &SecretSpec, version: &str) {
        self.mark_success(secret, Some(version));
        let mut state = lock(&self.state);
        let status = state.secrets.entry(secret.name.clone()).or_default();
        let was_pending = status.rotation_pending.take();
        status.written_once = true;
        status.current = true;
        if let Some(pending) = was_pending {
            tracing::info!(secret = %secret.name, version, pending_version = %pending, "rotation pending cleared");
        }
    }

    fn mark_pending(&self, secret: &SecretSpec, prepared: &Prepared, reason: &str) {
        let first_report = {
            let mut state = lock(&self.state);
            let status: &mut SecretStatus = state.secrets.entry(secret.name.clone()).or_default();
            status.last_success = Some(SystemTime::now());
            status.written_once = true;
            status.current = true;
            let first = status.rotation_pending.as_deref() != Some(prepared.version.as_str());
            status.rotation_pending = Some(prepared.version.clone());
            first
        };
        if first_report {
            tracing::warn!(secret = %secret.name, version = %prepared.version, "rotation pending: the key file is kept as it is because {reason}");
            self.audit_event(secret, prepared, "rotation-pending", Some(reason));
        }
    }

    /// Re-reads the configuration; a bad one is reported and the old one kept.
    fn reload(&mut self, path: Option<&Path>) {
        let Some(path) = path else {
            tracing::warn!("SIGHUP ignored: the configuration came from flags, not a file");
            return;
        };
        let config = match Config::from_file(path) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(
                    "SIGHUP: keeping the running configuration because the new one is invalid: {error}"
                );
                return;
            }
        };
        match limited_stores(&config, &self.limiter, &self.state) {
            Ok(stores) => {
                self.forget_changed_secrets(&config);
                if config.watch.status != self.config.watch.status {
                    tracing::warn!(
                        "SIGHUP: a changed status_listen takes effect only after a restart"
                    );
                }
                self.stores = stores;
                self.config = config;
                self.reset_schedule();
                tracing::info!(path = %path.display(), "SIGHUP: configuration reloaded");
            }
            Err(error) => tracing::error!("SIGHUP: keeping the running configuration: {error}"),
        }
    }

    /// Drops what is known about secrets whose settings changed (a new target, mode
    /// or path), so the next check delivers them as at start.
    fn forget_changed_secrets(&mut self, new: &Config) {
        let mut state = lock(&self.state);
        for secret in &new.secrets {
            let old = self
                .config
                .secrets
                .iter()
                .find(|old| old.name == secret.name);
            if old.is_some_and(|old| old != secret) {
                state.secrets.remove(&secret.name);
                tracing::info!(secret = %secret.name, "SIGHUP: settings changed; delivering again");
            }
        }
    }

    /// Checks failing secrets now, because a replaced token file may fix their login.
    fn expedite_failing(&mut self) {
        if self.failures.is_empty() {
            return;
        }
        let now = Instant::now();
        for name in self.failures.keys() {
            self.due.insert(name.clone(), now);
        }
        tracing::info!(
            failing = self.failures.len(),
            "a token file changed; checking the failing secrets now"
        );
    }
}

fn limited_stores(
    config: &Config,
    limiter: &Arc<RateLimiter>,
    state: &Arc<Mutex<State>>,
) -> Result<Stores, RunError> {
    let stores = build_stores(config)?;
    Ok(stores
        .into_iter()
        .map(|(name, inner)| {
            let wrapped: Arc<dyn SecretBackend> = Arc::new(Limited {
                name: name.clone(),
                inner,
                limiter: limiter.clone(),
                state: state.clone(),
            });
            (name, wrapped)
        })
        .collect())
}

fn retry_error(
    secret: &SecretSpec,
    deadline: Duration,
    error: crate::retry::RetryError,
) -> RunError {
    match error {
        crate::retry::RetryError::Permanent(error) => RunError::Backend {
            secret: secret.name.clone(),
            error: Box::new(error),
        },
        crate::retry::RetryError::DeadlineExceeded { attempts, last } => RunError::Deadline {
            secret: secret.name.clone(),
            attempts,
            deadline_seconds: deadline.as_secs(),
            last: Box::new(last),
        },
    }
}

fn main_exited(exit_when: Option<&ExitWhen>) -> bool {
    match exit_when {
        None => false,
        Some(ExitWhen::ProcessName(name)) => hooks::find_processes(name).is_empty(),
        Some(ExitWhen::PidFile(path)) => {
            let pid = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.trim().parse::<i32>().ok());
            match pid.and_then(rustix::process::Pid::from_raw) {
                Some(pid) => rustix::process::test_kill_process(pid).is_err(),
                None => false,
            }
        }
    }
}

fn stopping(signal: &str) -> Result<(), RunError> {
    tracing::info!(signal, "stopping: received {signal}; files stay in place");
    Ok(())
}

fn signal_error(error: std::io::Error) -> RunError {
    RunError::Signal(error.to_string())
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
