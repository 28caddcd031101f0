//! Init mode: fetch every secret, validate all of them, then write all of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use backends::aws::AwsBackend;
use backends::azure::AzureBackend;
use backends::file::FileBackend;
use backends::gcp::GcpBackend;
use backends::vault::VaultBackend;
use backends::{BackendError, SecretBackend};
use tokio::time::Instant;

use std::path::{Path, PathBuf};

use crate::candidates::{Database, choose_key, find_database, is_empty_file};
use crate::config::{Config, SecretKind, SecretSpec, StoreKind, StoreSpec};
use crate::db::PLAINTEXT_DB_NAME;
use crate::exit::ExitStatus;
use crate::retry::{Backoff, RetryError, retry};
use crate::value::{Prepared, ValueError, prepare};
use crate::writer::{Placement, Staged, WriteError, remove_stale_temporaries};

/// A failure of `fetch` or `check`, with the status to exit with.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),

    #[error("store {store:?}: {error}")]
    Store {
        store: String,
        error: Box<BackendError>,
    },

    #[error("secret {secret:?}: {error}")]
    Backend {
        secret: String,
        error: Box<BackendError>,
    },

    #[error(
        "secret {secret:?}: gave up after {attempts} attempts because the deadline of {deadline_seconds} s passed; last error: {last}"
    )]
    Deadline {
        secret: String,
        attempts: u32,
        deadline_seconds: u64,
        last: Box<BackendError>,
    },

    #[error("{0}")]
    Value(#[from] ValueError),

    #[error("secret {secret:?}: {error}")]
    Write { secret: String, error: WriteError },

    #[error(
        "secret {secret:?}: no candidate version opens {database:?} (tried {tried}); run `portainer-key-agent db verify` with the key the database was created with, or restore the matching version in the store"
    )]
    KeyMismatch {
        secret: String,
        database: std::path::PathBuf,
        tried: String,
    },

    #[error("secret {secret:?}: {error}")]
    Database {
        secret: String,
        error: Box<crate::db::DbError>,
    },

    #[error("failed to install a signal handler: {0}")]
    Signal(String),

    #[error("no secret was written because the deadline of {deadline_seconds} s passed")]
    Timeout { deadline_seconds: u64 },
}

impl RunError {
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            RunError::Config(_) => ExitStatus::Configuration,
            RunError::Store { error, .. } | RunError::Backend { error, .. } => {
                ExitStatus::of_backend(error)
            }
            RunError::Deadline { .. } | RunError::Timeout { .. } => ExitStatus::Unavailable,
            RunError::Value(ValueError::FieldNotFound { .. }) => ExitStatus::NotFound,
            RunError::Value(ValueError::Invalid { .. }) => ExitStatus::InvalidValue,
            RunError::Write { .. } => ExitStatus::CannotWrite,
            RunError::KeyMismatch { .. } => ExitStatus::CheckFailed,
            RunError::Signal(_) => ExitStatus::Internal,
            RunError::Database { error, .. } => database_status(error),
        }
    }
}

fn database_status(error: &crate::db::DbError) -> ExitStatus {
    use crate::db::DbError;
    match error {
        DbError::Locked { .. } => ExitStatus::Locked,
        DbError::NotFound { .. } | DbError::NotAFile { .. } => ExitStatus::NotFound,
        DbError::KeyMismatch { .. } => ExitStatus::CheckFailed,
        _ => ExitStatus::InvalidValue,
    }
}

/// Time past the deadline after which a run stops even inside a store call. The
/// retry loop stops at the deadline itself, so this only bounds a call that ignores it.
pub const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The stores of a configuration, built once.
pub type Stores = BTreeMap<String, Arc<dyn SecretBackend>>;

/// Builds a client for every configured store; nothing is sent yet.
pub fn build_stores(config: &Config) -> Result<Stores, RunError> {
    let mut stores = Stores::new();
    for (name, spec) in &config.stores {
        let backend = build_store(spec).map_err(|error| RunError::Store {
            store: name.clone(),
            error: Box::new(error),
        })?;
        stores.insert(name.clone(), backend);
    }
    Ok(stores)
}

fn build_store(spec: &StoreSpec) -> Result<Arc<dyn SecretBackend>, BackendError> {
    Ok(match &spec.kind {
        StoreKind::Vault(settings) => Arc::new(VaultBackend::new(settings.clone())?),
        StoreKind::Aws(settings) => Arc::new(AwsBackend::new(settings)?),
        StoreKind::Azure(settings) => Arc::new(AzureBackend::new(settings.clone())?),
        StoreKind::Gcp(settings) => Arc::new(GcpBackend::new(settings.clone())?),
        StoreKind::File => Arc::new(FileBackend),
    })
}

/// Builds the writer settings of a secret.
pub fn placement(secret: &SecretSpec) -> Placement {
    Placement {
        target: secret.target.clone(),
        mode: secret.mode,
        owner: secret.owner,
        allow_disk: secret.allow_disk,
    }
}

/// Logs the effective configuration once, without secrets.
pub fn log_start(config: &Config, command: &str) {
    let stores: Vec<String> = config
        .stores
        .values()
        .map(|store| format!("{}={}", store.name, store.kind.type_name()))
        .collect();
    let secrets: Vec<String> = config
        .secrets
        .iter()
        .map(|secret| {
            format!(
                "{}({})->{}",
                secret.name,
                secret.kind.name(),
                secret.target.display()
            )
        })
        .collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        command,
        stores = %stores.join(" "),
        secrets = %secrets.join(" "),
        deadline_seconds = config.deadline.as_secs(),
        "portainer-key-agent starting"
    );
}

/// Fetches and validates every secret, then writes every file.
///
/// Nothing is written until every secret has been fetched and validated, so a bad
/// value never leaves some files new and others old.
pub async fn run(config: &Config, verify_db: Option<&Path>) -> Result<(), RunError> {
    log_start(config, "fetch");
    let stores = build_stores(config)?;
    preflight(config)?;
    let database = match verify_db {
        Some(path) => database_to_verify(path)?,
        None => None,
    };

    let deadline = Instant::now() + config.deadline;
    let fetching = fetch_all(config, &stores, database.as_deref(), deadline);
    let values = tokio::time::timeout_at(deadline + DEADLINE_GRACE, fetching)
        .await
        .map_err(|_| RunError::Timeout {
            deadline_seconds: config.deadline.as_secs(),
        })??;

    // Every file is staged before the first is replaced, so a target that cannot be
    // written (a read-only mount, a full tmpfs) leaves every old file in place.
    let mut staged = Vec::with_capacity(values.len());
    for (secret, prepared) in config.secrets.iter().zip(&values) {
        staged.push(stage_one(secret, prepared)?);
    }
    for ((secret, prepared), staged) in config.secrets.iter().zip(&values).zip(staged) {
        commit_one(secret, prepared, staged)?;
    }
    tracing::info!(files = values.len(), "every file written");
    Ok(())
}

/// Checks every target before any network call, and removes stale temporary files.
fn preflight(config: &Config) -> Result<(), RunError> {
    for secret in &config.secrets {
        let removed = remove_stale_temporaries(&secret.target);
        if removed > 0 {
            tracing::info!(secret = %secret.name, removed, "removed temporary files left by an interrupted run");
        }
        warn_unusual_key_name(secret);
        placement(secret).check().map_err(|error| RunError::Write {
            secret: secret.name.clone(),
            error,
        })?;
    }
    Ok(())
}

/// Warns when an encryption key's file name is not Portainer's default, because
/// Portainer silently runs unencrypted when `--secret-key-name` does not match it.
fn warn_unusual_key_name(secret: &SecretSpec) {
    let name = secret.target.file_name().unwrap_or_default();
    if secret.kind == SecretKind::EncryptionKey && name != "portainer" {
        tracing::warn!(
            secret = %secret.name,
            target = %secret.target.display(),
            "Portainer reads the key from /run/secrets/<--secret-key-name>, default \"portainer\"; pass --secret-key-name {} to Portainer or it will run unencrypted",
            name.to_string_lossy()
        );
    }
}

/// Returns the encrypted database that keys must open, if any: `path` is
/// Portainer's data directory or the `portainer.edb` file itself.
fn database_to_verify(path: &Path) -> Result<Option<PathBuf>, RunError> {
    if is_empty_file(path) {
        tracing::info!(database = %path.display(), "the database file is empty, and Portainer's bbolt initialises it as a new database, so there is no key to verify");
        return Ok(None);
    }
    if path.is_file() {
        return Ok(Some(path.to_path_buf()));
    }
    if !path.is_dir() {
        return Err(RunError::Config(crate::config::ConfigError {
            source: "--verify-db".to_owned(),
            problems: vec![format!(
                "{} does not exist; pass Portainer's data directory (the volume mounted at /data) or its portainer.edb",
                path.display()
            )],
        }));
    }
    Ok(database_in(path))
}

fn database_in(data_dir: &Path) -> Option<PathBuf> {
    match find_database(data_dir) {
        Database::Encrypted(path) => {
            let plaintext = data_dir.join(PLAINTEXT_DB_NAME);
            if plaintext.exists() {
                tracing::warn!(plaintext = %plaintext.display(), encrypted = %path.display(), "both a plaintext and an encrypted database exist, and Portainer does not start while both do; move the one Portainer should not use out of the data directory");
            }
            Some(path)
        }
        Database::PlaintextOnly(path) => {
            tracing::warn!(database = %path.display(), "the database is not encrypted yet; Portainer's own migration to encryption is unreliable since 2.20, so run `portainer-key-agent db encrypt` with this key before starting Portainer");
            None
        }
        Database::Missing => {
            tracing::info!(data_dir = %data_dir.display(), "no database yet, so there is no key to verify; Portainer will create it with the key written now");
            None
        }
    }
}

/// Fetches and prepares every secret in configuration order. With `database`, an
/// encryption key is written only in a version that opens it.
pub async fn fetch_all(
    config: &Config,
    stores: &Stores,
    database: Option<&Path>,
    deadline: Instant,
) -> Result<Vec<Prepared>, RunError> {
    let mut values = Vec::with_capacity(config.secrets.len());
    for secret in &config.secrets {
        let fetch = async |secret: &SecretSpec, deadline: Instant| {
            fetch_one(config, stores, secret, deadline).await
        };
        let prepared = match database {
            Some(database) if secret.kind == SecretKind::EncryptionKey => {
                let store = &config.store_of(secret).kind;
                choose_key(store, secret, database, deadline, fetch).await?
            }
            _ => fetch(secret, deadline).await?,
        };
        values.push(prepared);
    }
    Ok(values)
}

pub(crate) async fn fetch_one(
    config: &Config,
    stores: &Stores,
    secret: &SecretSpec,
    deadline: Instant,
) -> Result<Prepared, RunError> {
    let store = &stores[&secret.store];
    let request = secret.request();
    let what = format!("reading secret {:?} from {}", secret.name, store.describe());

    let value = retry(Backoff::default(), deadline, &what, || {
        store.fetch(&request)
    })
    .await
    .map_err(|error| match error {
        RetryError::Permanent(error) => RunError::Backend {
            secret: secret.name.clone(),
            error: Box::new(error),
        },
        RetryError::DeadlineExceeded { attempts, last } => RunError::Deadline {
            secret: secret.name.clone(),
            attempts,
            deadline_seconds: config.deadline.as_secs(),
            last: Box::new(last),
        },
    })?;

    let prepared = prepare(secret, value)?;
    if !crate::hardening::lock_in_memory(prepared.bytes.expose()) {
        tracing::warn!(secret = %secret.name, "failed to lock the value in memory because RLIMIT_MEMLOCK is too low; it could be swapped out");
    }
    tracing::debug!(secret = %secret.name, version = %prepared.version, bytes = prepared.bytes.len(), "secret fetched and validated");
    Ok(prepared)
}

fn stage_one(secret: &SecretSpec, prepared: &Prepared) -> Result<Staged, RunError> {
    placement(secret)
        .stage(prepared.bytes.expose())
        .map_err(|error| RunError::Write {
            secret: secret.name.clone(),
            error,
        })
}

fn commit_one(secret: &SecretSpec, prepared: &Prepared, staged: Staged) -> Result<(), RunError> {
    let medium = staged.commit().map_err(|error| RunError::Write {
        secret: secret.name.clone(),
        error,
    })?;
    tracing::info!(
        secret = %secret.name,
        kind = secret.kind.name(),
        target = %secret.target.display(),
        store = %secret.store,
        version = %prepared.version,
        bytes = prepared.bytes.len(),
        mode = format!("{:04o}", secret.mode),
        medium = ?medium,
        "file written"
    );
    Ok(())
}
