//! `rotate-key`: the key-rotation runbook, re-runnable after any interruption.
//!
//! 1. Obtain the new key: a pending version already in the store (AWS `AWSPENDING`,
//!    Vault field `<field>_pending`), or 32 random bytes stored as one.
//! 2. Check that Portainer is stopped (the database lock is free).
//! 3. Re-encrypt the database from the current key to the new one (`db rotate`),
//!    which verifies the result before it replaces the file.
//! 4. Promote the new key (AWS: move `AWSCURRENT`; Vault: write the fields with
//!    check-and-set), only once the database opens with it.
//!
//! Each step first looks at what is already done, so a second run after a crash
//! continues where the first stopped.

use std::path::{Path, PathBuf};

use backends::aws::AwsBackend;
use backends::vault::VaultBackend;
use backends::{BackendError, SecretBackend, SecretBytes, SecretRequest, SecretValue};
use base64::Engine;
use serde_json::Value;

use crate::candidates::{PENDING_SUFFIX, PREVIOUS_SUFFIX};
use crate::config::{Config, Encoding, SecretKind, SecretSpec, StoreKind};
use crate::db::{BackupFileOutcome, DbError, ENCRYPTED_DB_NAME, RotateOptions};
use crate::exit::ExitStatus;
use crate::value::prepare;

/// Bytes of randomness in a generated key.
const GENERATED_KEY_BYTES: usize = 32;

/// Options of the runbook.
#[derive(Clone, Debug)]
pub struct RotateKeyOptions {
    /// Name of the encryption-key secret; the only one when `None`.
    pub secret: Option<String>,
    /// Portainer's data directory, holding `portainer.edb`.
    pub data_dir: PathBuf,
    /// Print the plan without changing anything.
    pub dry_run: bool,
    /// Keep a copy of the database under the old key here.
    pub backup: Option<PathBuf>,
}

/// A runbook failure. Carries no key material.
#[derive(Debug, thiserror::Error)]
pub enum RotateKeyError {
    #[error("{0}")]
    Config(String),

    #[error("{0}")]
    InvalidConfig(#[from] crate::config::ConfigError),

    #[error("{step}: {error}")]
    Store {
        step: &'static str,
        error: Box<BackendError>,
    },

    #[error("{step}: {error}")]
    Database {
        step: &'static str,
        error: Box<DbError>,
    },

    #[error("{0}")]
    Value(#[from] crate::value::ValueError),

    #[error(
        "the database {database:?} opens with neither the current nor the new key; restore the key it was encrypted with, or check --data-dir"
    )]
    NeitherKey { database: PathBuf },
}

impl RotateKeyError {
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            RotateKeyError::Config(_) | RotateKeyError::InvalidConfig(_) => {
                ExitStatus::Configuration
            }
            RotateKeyError::Store { error, .. } => ExitStatus::of_backend(error),
            RotateKeyError::Database { error, .. } => match **error {
                DbError::Locked { .. } => ExitStatus::Locked,
                DbError::NotFound { .. } => ExitStatus::NotFound,
                _ => ExitStatus::InvalidValue,
            },
            RotateKeyError::Value(_) => ExitStatus::InvalidValue,
            RotateKeyError::NeitherKey { .. } => ExitStatus::CheckFailed,
        }
    }
}

/// The store of the key, with the calls rotation needs.
enum RotationStore {
    Aws(AwsBackend),
    Vault(Box<VaultBackend>),
}

/// A key in its stored form and as key-file bytes.
struct KeyVersion {
    stored: SecretValue,
    file_bytes: SecretBytes,
}

/// Runs the runbook and prints each step and the next actions on stdout.
pub async fn run(config: &Config, options: &RotateKeyOptions) -> Result<(), RotateKeyError> {
    let secret = key_secret(config, options.secret.as_deref())?;
    let store = rotation_store(&config.store_of(secret).kind, secret)?;
    let database = options.data_dir.join(ENCRYPTED_DB_NAME);
    if !database.exists() {
        return Err(RotateKeyError::Config(format!(
            "{database:?} does not exist; pass --data-dir with Portainer's data directory (default /data)"
        )));
    }

    let current = read_current(&store, secret).await?;
    report(&format!(
        "1. current key: version {}",
        current.stored.version
    ));
    ensure_portainer_stopped(&database, &current)?;
    let (pending, generated) = match read_pending(&store, secret).await? {
        Some(pending) => (pending, false),
        None if options.dry_run => {
            report("2. no pending key: a new 32-byte key would be generated and stored as pending");
            report_dry_run_rest(secret);
            return Ok(());
        }
        None => (store_new_pending(&store, secret, &current).await?, true),
    };
    let origin = if generated {
        "generated and stored"
    } else {
        "found in the store"
    };
    report(&format!(
        "2. new key: version {} ({origin})",
        pending.stored.version
    ));

    if options.dry_run {
        report_dry_run_rest(secret);
        return Ok(());
    }
    rotate_database(&database, &current, &pending, options.backup.clone())?;
    let promoted = promote(&store, secret, &current, &pending).await?;
    report_next_steps(secret, &promoted);
    Ok(())
}

/// Fails while Portainer has the database open, before anything is stored.
fn ensure_portainer_stopped(database: &Path, current: &KeyVersion) -> Result<(), RotateKeyError> {
    match crate::db::verify(database, current.file_bytes.expose()) {
        Ok(_) => Ok(()),
        Err(error) if error.is_key_mismatch() => Ok(()),
        Err(error) => Err(RotateKeyError::Database {
            step: "check that Portainer is stopped",
            error: Box::new(error),
        }),
    }
}

fn key_secret<'a>(
    config: &'a Config,
    name: Option<&str>,
) -> Result<&'a SecretSpec, RotateKeyError> {
    let keys: Vec<&SecretSpec> = config
        .secrets
        .iter()
        .filter(|secret| secret.kind == SecretKind::EncryptionKey)
        .filter(|secret| name.is_none_or(|name| secret.name == name))
        .collect();
    match keys.as_slice() {
        [secret] if secret.version.is_none() && secret.stage.is_none() => Ok(secret),
        [secret] => Err(RotateKeyError::Config(format!(
            "secret {:?} pins a version or stage; remove the pin so the runbook can move the current version",
            secret.name
        ))),
        [] => Err(RotateKeyError::Config(
            "no encryption-key secret matches; name it with --secret".to_owned(),
        )),
        _ => Err(RotateKeyError::Config(
            "several encryption-key secrets; choose one with --secret".to_owned(),
        )),
    }
}

fn rotation_store(kind: &StoreKind, secret: &SecretSpec) -> Result<RotationStore, RotateKeyError> {
    let store_error = |error| RotateKeyError::Store {
        step: "connect to the store",
        error: Box::new(error),
    };
    match kind {
        StoreKind::Aws(settings) => AwsBackend::new(settings)
            .map(RotationStore::Aws)
            .map_err(store_error),
        StoreKind::Vault(_) if secret.field.is_none() => Err(RotateKeyError::Config(format!(
            "secret {:?} has no field; rotation keeps the pending and previous keys in the fields <field>{PENDING_SUFFIX} and <field>{PREVIOUS_SUFFIX}, so set field",
            secret.name
        ))),
        StoreKind::Vault(settings) => VaultBackend::new(settings.clone())
            .map(|vault| RotationStore::Vault(Box::new(vault)))
            .map_err(store_error),
        StoreKind::File => Err(RotateKeyError::Config(
            "a file store cannot hold versions; rotate with db rotate and replace the file yourself".to_owned(),
        )),
        StoreKind::Azure(_) | StoreKind::Gcp(_) => Err(RotateKeyError::Config(format!(
            "rotate-key supports aws and vault stores; store {:?} is of type {:?}, so rotate with db rotate and add the new version in the store yourself",
            secret.store,
            kind.type_name()
        ))),
    }
}

async fn read_current(
    store: &RotationStore,
    secret: &SecretSpec,
) -> Result<KeyVersion, RotateKeyError> {
    let stored = match store {
        RotationStore::Aws(aws) => aws.fetch(&secret.request()).await,
        RotationStore::Vault(vault) => vault.fetch(&secret.request()).await,
    }
    .map_err(|error| store_error("read the current key", error))?;
    key_version(secret, stored)
}

fn key_version(secret: &SecretSpec, stored: SecretValue) -> Result<KeyVersion, RotateKeyError> {
    let prepared = prepare(secret, stored.clone())?;
    Ok(KeyVersion {
        stored,
        file_bytes: prepared.bytes,
    })
}

fn store_error(step: &'static str, error: BackendError) -> RotateKeyError {
    RotateKeyError::Store {
        step,
        error: Box::new(error),
    }
}

/// Reads the pending key if the store has one that differs from the current key.
async fn read_pending(
    store: &RotationStore,
    secret: &SecretSpec,
) -> Result<Option<KeyVersion>, RotateKeyError> {
    let found = match store {
        RotationStore::Aws(aws) => {
            let request = SecretRequest {
                stage: Some("AWSPENDING".to_owned()),
                ..secret.request()
            };
            aws.fetch(&request)
                .await
                .map(|value| (value, secret.clone()))
        }
        RotationStore::Vault(vault) => vault.fetch(&secret.request()).await.map(|value| {
            let mut pending = secret.clone();
            pending.field = secret
                .field
                .as_ref()
                .map(|field| format!("{field}{PENDING_SUFFIX}"));
            (value, pending)
        }),
    };
    let (stored, pending_secret) = match found {
        Ok(found) => found,
        Err(BackendError::NotFound { .. }) => return Ok(None),
        Err(error) => return Err(store_error("read the pending key", error)),
    };

    match prepare(&pending_secret, stored.clone()) {
        Ok(prepared) => Ok(Some(KeyVersion {
            stored,
            file_bytes: prepared.bytes,
        })),
        Err(crate::value::ValueError::FieldNotFound { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Generates a key and stores it as pending. Returns it as stored.
async fn store_new_pending(
    store: &RotationStore,
    secret: &SecretSpec,
    current: &KeyVersion,
) -> Result<KeyVersion, RotateKeyError> {
    let encoded = generate_key(secret.encoding);
    match store {
        RotationStore::Aws(aws) => store_pending_aws(aws, secret, current, encoded).await,
        RotationStore::Vault(vault) => store_pending_vault(vault, secret, current, encoded).await,
    }
}

/// Returns 32 random bytes in the secret's stored form: base64 for
/// `encoding = "base64"`, else base64url text, so string-only stores can hold it.
fn generate_key(encoding: Encoding) -> SecretBytes {
    let mut random = SecretBytes::new(vec![0; GENERATED_KEY_BYTES]);
    rand::fill(random.expose_mut().as_mut_slice());
    let text = match encoding {
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(random.expose()),
        Encoding::Raw => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random.expose()),
    };
    SecretBytes::from(text)
}

async fn store_pending_aws(
    aws: &AwsBackend,
    secret: &SecretSpec,
    current: &KeyVersion,
    encoded: SecretBytes,
) -> Result<KeyVersion, RotateKeyError> {
    let (_, payload) = aws
        .get_with_payload(&secret.request())
        .await
        .map_err(|error| store_error("read the current key", error))?;
    let stored = match &secret.field {
        Some(field) => replace_fields(&current.stored.bytes, &[(field.as_str(), Some(&encoded))])?,
        None => encoded,
    };
    let token = format!("portainer-key-agent-{:032x}", rand::random::<u128>());
    let version = aws
        .put_version(&secret.path, &stored, payload, &["AWSPENDING"], &token)
        .await
        .map_err(|error| store_error("store the new key as AWSPENDING", error))?;
    let value = SecretValue {
        bytes: stored,
        is_json_object: false,
        version: version.version,
    };
    key_version(secret, value)
}

async fn store_pending_vault(
    vault: &VaultBackend,
    secret: &SecretSpec,
    current: &KeyVersion,
    encoded: SecretBytes,
) -> Result<KeyVersion, RotateKeyError> {
    let field = secret.field.as_deref().unwrap_or_default();
    let pending_field = format!("{field}{PENDING_SUFFIX}");
    let data = replace_fields(
        &current.stored.bytes,
        &[(pending_field.as_str(), Some(&encoded))],
    )?;
    let cas = vault_version(&current.stored)?;

    let version = vault
        .write_kv2(&secret.path, &data, cas)
        .await
        .map_err(|error| store_error("store the new key in the pending field", error))?;
    let mut pending = secret.clone();
    pending.field = Some(pending_field);
    let value = SecretValue {
        bytes: data,
        is_json_object: true,
        version: version.version,
    };
    let prepared = prepare(&pending, value.clone())?;
    Ok(KeyVersion {
        stored: value,
        file_bytes: prepared.bytes,
    })
}

fn vault_version(value: &SecretValue) -> Result<u64, RotateKeyError> {
    value.version.parse().map_err(|_| {
        RotateKeyError::Config(format!(
            "the key is on a KV v1 mount (version {:?}); rotation needs KV v2 for check-and-set writes",
            value.version
        ))
    })
}

/// Returns the JSON object in `stored` with each field set to a value, or removed
/// for `None`. Other fields, such as the admin password, are kept.
fn replace_fields(
    stored: &SecretBytes,
    changes: &[(&str, Option<&SecretBytes>)],
) -> Result<SecretBytes, RotateKeyError> {
    let mut object: serde_json::Map<String, Value> = serde_json::from_slice(stored.expose())
        .map_err(|_| {
            RotateKeyError::Config(
                "the stored secret is not a JSON object, but field is set".to_owned(),
            )
        })?;
    for (field, value) in changes {
        match value {
            Some(value) => {
                let text = String::from_utf8(value.expose().to_vec()).unwrap_or_default();
                object.insert((*field).to_owned(), Value::String(text));
            }
            None => {
                object.remove(*field);
            }
        }
    }
    let mut wrapped = Value::Object(object);
    let bytes = SecretBytes::new(serde_json::to_vec(&wrapped).unwrap_or_default());
    crate::value::wipe_json(&mut wrapped);
    Ok(bytes)
}

fn rotate_database(
    database: &Path,
    current: &KeyVersion,
    pending: &KeyVersion,
    backup: Option<PathBuf>,
) -> Result<(), RotateKeyError> {
    let database_error = |step, error| RotateKeyError::Database {
        step,
        error: Box::new(error),
    };
    let opens_with = |key: &KeyVersion| match crate::db::verify(database, key.file_bytes.expose()) {
        Ok(_) => Ok(true),
        Err(error) if error.is_key_mismatch() => Ok(false),
        Err(error) => Err(database_error("check the database", error)),
    };

    if opens_with(pending)? {
        report("3. database: already encrypted with the new key (an earlier run rotated it)");
        return Ok(());
    }
    if !opens_with(current)? {
        return Err(RotateKeyError::NeitherKey {
            database: database.to_path_buf(),
        });
    }

    let options = RotateOptions {
        backup,
        on_step: None,
    };
    let outcome = crate::db::rotate(
        database,
        current.file_bytes.expose(),
        pending.file_bytes.expose(),
        &options,
    )
    .map_err(|error| database_error("rotate the database", error))?;
    report(&format!("3. database: {}, verified", outcome.outcome));
    if let Some(backup) = outcome.backup {
        report(&format!(
            "   a copy under the old key is at {}",
            backup.display()
        ));
    }
    let backup_file = match &outcome.backup_file_outcome {
        BackupFileOutcome::Absent => "absent".to_owned(),
        BackupFileOutcome::Done(done) => done.to_string(),
        BackupFileOutcome::Skipped { reason } => format!("left as it is: {reason}"),
    };
    report(&format!(
        "   Portainer's backup {}: {backup_file}",
        outcome.backup_file.display()
    ));
    Ok(())
}

/// Makes the new key current and returns the store version that contains it.
async fn promote(
    store: &RotationStore,
    secret: &SecretSpec,
    current: &KeyVersion,
    pending: &KeyVersion,
) -> Result<String, RotateKeyError> {
    match store {
        RotationStore::Aws(aws) => promote_aws(aws, secret, current, pending).await,
        RotationStore::Vault(vault) => promote_vault(vault, secret, pending).await,
    }
}

async fn promote_aws(
    aws: &AwsBackend,
    secret: &SecretSpec,
    current: &KeyVersion,
    pending: &KeyVersion,
) -> Result<String, RotateKeyError> {
    let path = &secret.path;
    let step = |error| store_error("promote the new key to AWSCURRENT", error);
    aws.move_stage(
        path,
        "AWSCURRENT",
        Some(&pending.stored.version),
        Some(&current.stored.version),
    )
    .await
    .map_err(step)?;
    aws.move_stage(path, "AWSPENDING", None, Some(&pending.stored.version))
        .await
        .map_err(step)?;
    report(&format!(
        "4. store: AWSCURRENT is now version {}, AWSPREVIOUS version {}",
        pending.stored.version, current.stored.version
    ));
    Ok(pending.stored.version.clone())
}

async fn promote_vault(
    vault: &VaultBackend,
    secret: &SecretSpec,
    pending: &KeyVersion,
) -> Result<String, RotateKeyError> {
    let field = secret.field.as_deref().unwrap_or_default();
    let latest = vault
        .fetch(&secret.request())
        .await
        .map_err(|error| store_error("read the key before promotion", error))?;
    let old = key_version(secret, latest.clone())?;
    let pending_field = format!("{field}{PENDING_SUFFIX}");
    let previous_field = format!("{field}{PREVIOUS_SUFFIX}");
    let old_stored = stored_field(secret, &latest, field)?;
    let new_stored = stored_field(secret, &latest, &pending_field)?;
    if old.file_bytes == pending.file_bytes {
        report("4. store: the new key is already current");
        return Ok(latest.version);
    }

    let data = replace_fields(
        &latest.bytes,
        &[
            (field, Some(&new_stored)),
            (previous_field.as_str(), Some(&old_stored)),
            (pending_field.as_str(), None),
        ],
    )?;
    let cas = vault_version(&latest)?;
    let written = vault
        .write_kv2(&secret.path, &data, cas)
        .await
        .map_err(|error| store_error("promote the new key with check-and-set", error))?;
    report(&format!(
        "4. store: version {} holds the new key in {field:?} and the old one in {previous_field:?}",
        written.version
    ));
    Ok(written.version)
}

/// Returns a field's stored text, before encoding and newline handling.
fn stored_field(
    secret: &SecretSpec,
    value: &SecretValue,
    field: &str,
) -> Result<SecretBytes, RotateKeyError> {
    let object: serde_json::Map<String, Value> =
        serde_json::from_slice(value.bytes.expose()).unwrap_or_default();
    match object.get(field) {
        Some(Value::String(text)) => Ok(SecretBytes::copy_from(text.as_bytes())),
        _ => Err(RotateKeyError::Config(format!(
            "secret {:?}: field {field:?} is missing or not a string in {:?}",
            secret.name, secret.path
        ))),
    }
}

fn report_dry_run_rest(secret: &SecretSpec) {
    report(
        "3. the database would be re-encrypted under the new key and verified (Portainer must be stopped)",
    );
    report(&format!(
        "4. the new key would become the current version of {:?}",
        secret.path
    ));
    report("dry run: nothing was changed");
}

fn report_next_steps(secret: &SecretSpec, version: &str) {
    report(&format!(
        "done. Next: start Portainer; its init container fetches version {version} of {:?} to {}. Restart every Portainer replica that reads this key.",
        secret.path,
        secret.target.display()
    ));
}

#[allow(
    clippy::print_stdout,
    reason = "the runbook reports its steps on stdout"
)]
fn report(line: &str) {
    println!("{line}");
}
