//! Docker Swarm mode: `swarm sync` turns every configured secret into a Swarm
//! secret and attaches it to Portainer's service.
//!
//! Swarm secrets are immutable, so each value becomes a new secret named after its
//! keyed digest, and a change is a service update that restarts the task. The
//! value leaves the agent only in the body of the Engine API's create request.

pub mod engine;
pub mod plan;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    Secret, ServiceSpec, TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets,
};
use clap::{Args, Subcommand};
use tokio::time::Instant;

use crate::cli::SourceArgs;
use crate::config::{Config, SecretSpec};
use crate::exit::ExitStatus;
use crate::fetch::{DEADLINE_GRACE, RunError, Stores, build_stores, fetch_all, log_start};
use crate::value::Prepared;
use plan::{Attached, Decision, DigestKey, LABEL_DIGEST, LABEL_MANAGED};

/// Swarm rejects secrets larger than 500 KB (swarmkit's `MaxSecretSize`).
pub const MAX_SECRET_BYTES: usize = 500 * 1024;

/// `swarm` subcommands.
#[derive(Debug, Args)]
pub struct SwarmArgs {
    #[command(subcommand)]
    pub command: SwarmCommand,
}

#[derive(Debug, Subcommand)]
pub enum SwarmCommand {
    /// Create a Swarm secret for every configured secret and attach it to the
    /// service at the secret's target; remove managed secrets no service uses.
    /// Talks to the engine at DOCKER_HOST (unix:// only) or /var/run/docker.sock,
    /// which must be a swarm manager.
    #[command(after_long_help = SYNC_HELP)]
    Sync(SyncArgs),
}

/// Options of `swarm sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Name or ID of Portainer's Swarm service, such as portainer_portainer.
    #[arg(long, env = "PORTAINER_KEY_AGENT_SWARM_SERVICE")]
    pub service: String,

    /// Replace the service's encryption key when the store contains a different one.
    /// Use it only after `rotate-key` has re-encrypted the database with the new key.
    #[arg(long, env = "PORTAINER_KEY_AGENT_ALLOW_KEY_CHANGE")]
    pub allow_key_change: bool,

    /// Run again every N seconds until SIGTERM or SIGINT; without it, run once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), env = "PORTAINER_KEY_AGENT_INTERVAL_SECONDS")]
    pub interval_seconds: Option<u64>,
}

const SYNC_HELP: &str = "\
Exit status (swarm sync):
  0   every secret is current, or a key change is pending (logged); interval mode
      stopped by SIGTERM or SIGINT
  66  the service, a secret, version or JSON field was not found
  69  the Docker engine or the store stayed unreachable
  73  the Docker engine rejected a request (such as: not a swarm manager)
  77  access to the Docker socket or the store was denied
  78  the configuration is invalid (also: DOCKER_HOST is not unix://)
  Other statuses as for fetch; see portainer-key-agent --help.";

/// A failure of `swarm sync`, with the status to exit with. Carries no secret.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),

    #[error("{0}")]
    Fetch(#[from] RunError),

    #[error(
        "DOCKER_HOST {host:?} is not supported; use unix:///path/to/docker.sock on a manager node"
    )]
    UnsupportedHost { host: String },

    #[error(
        "failed to {step} ({object}): {error}{hint}",
        hint = if *permission_denied { "; the agent needs read and write access to the Docker socket" } else { "" }
    )]
    Unreachable {
        step: String,
        object: String,
        permission_denied: bool,
        error: String,
    },

    #[error("failed to {step} ({object}): the Docker engine returned {status_code}: {message}")]
    Rejected {
        step: String,
        object: String,
        status_code: u16,
        message: String,
    },

    #[error("the Docker engine returned {object} without {field}")]
    Incomplete { object: String, field: &'static str },

    #[error(
        "secret {secret:?}: {bytes} bytes is more than Swarm's maximum of {MAX_SECRET_BYTES} bytes"
    )]
    TooLarge { secret: String, bytes: usize },

    #[error("the sync did not finish within the deadline of {deadline_seconds} s")]
    Timeout { deadline_seconds: u64 },

    #[error("failed to install a signal handler: {0}")]
    Signal(String),
}

impl SwarmError {
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            SwarmError::Config(_) | SwarmError::UnsupportedHost { .. } => ExitStatus::Configuration,
            SwarmError::Fetch(error) => error.exit_status(),
            SwarmError::Unreachable {
                permission_denied: true,
                ..
            } => ExitStatus::Denied,
            SwarmError::Unreachable { .. } | SwarmError::Timeout { .. } => ExitStatus::Unavailable,
            SwarmError::Rejected {
                status_code: 404, ..
            } => ExitStatus::NotFound,
            SwarmError::Rejected { .. } => ExitStatus::CannotWrite,
            SwarmError::TooLarge { .. } => ExitStatus::InvalidValue,
            SwarmError::Incomplete { .. } | SwarmError::Signal(_) => ExitStatus::Internal,
        }
    }
}

/// Runs `swarm sync` once, or every `--interval-seconds` until SIGTERM or SIGINT.
///
/// In interval mode a failed pass is logged and retried at the next interval. A
/// signal stops the current pass at once. A secret that the pass created but did
/// not attach is removed by the next run.
pub async fn run(args: &SyncArgs) -> Result<(), SwarmError> {
    let config = args.source.load()?;
    log_start(&config, "swarm sync");
    let stores = build_stores(&config)?;
    let docker_host = std::env::var("DOCKER_HOST").ok();

    let Some(seconds) = args.interval_seconds else {
        return sync_bounded(&config, &stores, docker_host.as_deref(), args).await;
    };

    let interval = Duration::from_secs(seconds);
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut failures: u64 = 0;
    loop {
        let pass = sync_bounded(&config, &stores, docker_host.as_deref(), args);
        let outcome = tokio::select! {
            outcome = pass => Some(outcome),
            _ = terminate.recv() => None,
            _ = interrupt.recv() => None,
        };
        match outcome {
            None => break,
            Some(Ok(())) => failures = 0,
            Some(Err(error)) => {
                failures += 1;
                tracing::error!(
                    exit_status = error.exit_status().code(),
                    consecutive_failures = failures,
                    retry_in_seconds = seconds,
                    "swarm sync failed: {error}"
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("stopping on a signal");
    Ok(())
}

fn signal(
    kind: tokio::signal::unix::SignalKind,
) -> Result<tokio::signal::unix::Signal, SwarmError> {
    tokio::signal::unix::signal(kind).map_err(|error| SwarmError::Signal(error.to_string()))
}

/// Runs one pass, bounded by the configuration's deadline.
async fn sync_bounded(
    config: &Config,
    stores: &Stores,
    docker_host: Option<&str>,
    args: &SyncArgs,
) -> Result<(), SwarmError> {
    let deadline = Instant::now() + config.deadline;
    let pass = sync_once(config, stores, docker_host, args, deadline);
    tokio::time::timeout_at(deadline + DEADLINE_GRACE, pass)
        .await
        .map_err(|_| SwarmError::Timeout {
            deadline_seconds: config.deadline.as_secs(),
        })?
}

/// Fetches and validates every value, updates the service if a value changed, then
/// removes managed secrets that no service references.
async fn sync_once(
    config: &Config,
    stores: &Stores,
    docker_host: Option<&str>,
    args: &SyncArgs,
    deadline: Instant,
) -> Result<(), SwarmError> {
    let values = fetch_all(config, stores, None, deadline).await?;
    for (secret, prepared) in config.secrets.iter().zip(&values) {
        if prepared.bytes.len() > MAX_SECRET_BYTES {
            return Err(SwarmError::TooLarge {
                secret: secret.name.clone(),
                bytes: prepared.bytes.len(),
            });
        }
    }

    let docker = engine::connect(docker_host).await?;
    let digest_key = DigestKey::for_cluster(&engine::cluster_id(&docker).await?);
    let service = engine::inspect_service(&docker, &args.service).await?;
    let version = service
        .version
        .and_then(|version| version.index)
        .ok_or_else(|| incomplete(&args.service, "Version.Index"))?;
    let mut spec = service
        .spec
        .ok_or_else(|| incomplete(&args.service, "Spec"))?;
    let managed = engine::list_managed_secrets(&docker).await?;

    let mut references = current_references(&spec);
    let mut changed = Vec::new();
    for (secret, prepared) in config.secrets.iter().zip(&values) {
        let update = Update {
            docker: &docker,
            digest_key: &digest_key,
            managed: &managed,
            allow_key_change: args.allow_key_change,
            service: &args.service,
        };
        if update.apply(secret, prepared, &mut references).await? {
            changed.push(secret.name.as_str());
        }
    }

    if changed.is_empty() {
        tracing::info!(service = %args.service, service_version = version, "service unchanged");
    } else {
        set_references(&mut spec, references);
        let warnings = engine::update_service(&docker, &args.service, spec, version).await?;
        for warning in warnings {
            tracing::warn!(service = %args.service, "Docker engine warning: {warning}");
        }
        tracing::info!(
            service = %args.service,
            previous_service_version = version,
            secrets = %changed.join(","),
            "service updated; Swarm restarts its tasks with the new secrets"
        );
    }

    remove_unused(&docker).await
}

fn incomplete(service: &str, field: &'static str) -> SwarmError {
    SwarmError::Incomplete {
        object: format!("service {service:?}"),
        field,
    }
}

fn current_references(spec: &ServiceSpec) -> Vec<TaskSpecContainerSpecSecrets> {
    spec.task_template
        .as_ref()
        .and_then(|task| task.container_spec.as_ref())
        .and_then(|container| container.secrets.clone())
        .unwrap_or_default()
}

fn set_references(spec: &mut ServiceSpec, references: Vec<TaskSpecContainerSpecSecrets>) {
    let task = spec.task_template.get_or_insert_with(Default::default);
    let container = task.container_spec.get_or_insert_with(Default::default);
    container.secrets = Some(references);
}

fn reference_target(reference: &TaskSpecContainerSpecSecrets) -> Option<&str> {
    reference
        .file
        .as_ref()
        .and_then(|file| file.name.as_deref())
}

/// The state one pass shares while it decides each target.
struct Update<'a> {
    docker: &'a Docker,
    digest_key: &'a DigestKey,
    managed: &'a [Secret],
    allow_key_change: bool,
    service: &'a str,
}

impl Update<'_> {
    /// Decides one target and, when the value must be attached, creates its secret
    /// and swaps the reference. Returns whether the references changed.
    async fn apply(
        &self,
        secret: &SecretSpec,
        prepared: &Prepared,
        references: &mut Vec<TaskSpecContainerSpecSecrets>,
    ) -> Result<bool, SwarmError> {
        let target = plan::swarm_target(&secret.target);
        let digest = self.digest_key.digest(prepared.bytes.expose());
        let existing = references
            .iter()
            .find(|reference| reference_target(reference) == Some(target.as_str()));
        let attached = self.classify(existing);

        match plan::decide(secret.kind, &attached, &digest, self.allow_key_change) {
            Decision::Keep => {
                tracing::info!(secret = %secret.name, target, version = %prepared.version, "secret unchanged");
                Ok(false)
            }
            Decision::RotationPending => {
                let current = existing.and_then(|reference| reference.secret_name.clone());
                tracing::warn!(
                    secret = %secret.name,
                    service = self.service,
                    target,
                    attached = current.as_deref().unwrap_or(""),
                    store_version = %prepared.version,
                    "the store holds a different encryption key than the service uses; rotation pending; run rotate-key first, then sync with --allow-key-change"
                );
                Ok(false)
            }
            Decision::Attach => {
                let name = plan::secret_name(secret, &digest);
                let id = self
                    .find_or_create(secret, prepared, &name, &digest)
                    .await?;
                let replaced = existing.and_then(|reference| reference.secret_name.clone());
                references.retain(|reference| reference_target(reference) != Some(target.as_str()));
                references.push(reference(secret, &target, &id, &name));
                tracing::info!(
                    secret = %secret.name,
                    service = self.service,
                    target,
                    swarm_secret = name,
                    replaces = replaced.as_deref().unwrap_or(""),
                    version = %prepared.version,
                    "secret attached"
                );
                Ok(true)
            }
        }
    }

    fn classify(&self, existing: Option<&TaskSpecContainerSpecSecrets>) -> Attached {
        let Some(existing) = existing else {
            return Attached::Nothing;
        };
        let found = self
            .managed
            .iter()
            .find(|secret| secret.id.is_some() && secret.id == existing.secret_id);
        let digest = found
            .and_then(|secret| secret.spec.as_ref())
            .and_then(|spec| spec.labels.as_ref())
            .and_then(|labels| labels.get(LABEL_DIGEST));
        match digest {
            Some(digest) => Attached::Managed {
                digest: digest.clone(),
            },
            None => Attached::Unmanaged {
                name: existing.secret_name.clone().unwrap_or_default(),
            },
        }
    }

    /// Reuses a managed secret with this name and digest, left by an earlier run
    /// that stopped before the service update, or creates it.
    async fn find_or_create(
        &self,
        secret: &SecretSpec,
        prepared: &Prepared,
        name: &str,
        digest: &str,
    ) -> Result<String, SwarmError> {
        let reusable = self.managed.iter().find(|candidate| {
            let spec = candidate.spec.as_ref();
            spec.and_then(|spec| spec.name.as_deref()) == Some(name)
                && spec
                    .and_then(|spec| spec.labels.as_ref())
                    .and_then(|labels| labels.get(LABEL_DIGEST))
                    .map(String::as_str)
                    == Some(digest)
        });
        if let Some(id) = reusable.and_then(|found| found.id.clone()) {
            tracing::debug!(swarm_secret = name, "reusing an existing managed secret");
            return Ok(id);
        }

        let labels = plan::labels(secret, &prepared.version, digest);
        let id = engine::create_secret(self.docker, name, labels, prepared.bytes.expose()).await?;
        tracing::info!(secret = %secret.name, swarm_secret = name, swarm_secret_id = id, version = %prepared.version, bytes = prepared.bytes.len(), "Swarm secret created");
        Ok(id)
    }
}

/// Builds a service's reference to a secret, with the configured owner and mode.
fn reference(
    secret: &SecretSpec,
    target: &str,
    id: &str,
    name: &str,
) -> TaskSpecContainerSpecSecrets {
    let (uid, gid) = secret
        .owner
        .map(|owner| (owner.uid, owner.gid))
        .unwrap_or((0, 0));
    TaskSpecContainerSpecSecrets {
        file: Some(TaskSpecContainerSpecFile {
            name: Some(target.to_owned()),
            uid: Some(uid.to_string()),
            gid: Some(gid.to_string()),
            mode: Some(secret.mode),
        }),
        secret_id: Some(id.to_owned()),
        secret_name: Some(name.to_owned()),
    }
}

/// Removes managed secrets that no service references. A failure is logged and
/// left for the next run, because the new secrets are already in place.
///
/// NOTE: a secret that another agent has just created but not yet attached counts
/// as unused too, so that agent creates it again on its next run.
async fn remove_unused(docker: &Docker) -> Result<(), SwarmError> {
    let services = engine::list_services(docker).await?;
    let used: HashSet<String> = services
        .iter()
        .filter_map(|service| service.spec.as_ref())
        .flat_map(current_references)
        .filter_map(|reference| reference.secret_id)
        .collect();

    let managed = engine::list_managed_secrets(docker).await?;
    let mut removed = 0;
    for secret in &managed {
        let Some(id) = &secret.id else { continue };
        if used.contains(id) || !is_managed(secret) {
            continue;
        }
        let name = secret
            .spec
            .as_ref()
            .and_then(|spec| spec.name.clone())
            .unwrap_or_default();
        match engine::delete_secret(docker, id).await {
            Ok(()) => {
                removed += 1;
                tracing::info!(swarm_secret = name, swarm_secret_id = %id, "removed a managed secret that no service uses");
            }
            Err(error) => {
                tracing::warn!(swarm_secret = name, swarm_secret_id = %id, "failed to remove an unused managed secret; the next run tries again: {error}");
            }
        }
    }
    tracing::debug!(removed, "unused managed secrets removed");
    Ok(())
}

fn is_managed(secret: &Secret) -> bool {
    let labels: Option<&HashMap<String, String>> =
        secret.spec.as_ref().and_then(|spec| spec.labels.as_ref());
    labels
        .and_then(|labels| labels.get(LABEL_MANAGED))
        .map(String::as_str)
        == Some("true")
}
