//! Choosing the key version that opens Portainer's database.
//!
//! A store can hold several versions of the key during a rotation: AWS labels
//! them `AWSCURRENT`, `AWSPENDING` and `AWSPREVIOUS`, and the `rotate-key` runbook
//! keeps Vault's in the fields `<field>`, `<field>_pending` and `<field>_previous`.
//! Before a key file is written, each candidate is tried against the database and
//! the first that opens it wins.

use std::path::{Path, PathBuf};

use tokio::time::Instant;

use crate::config::{SecretKind, SecretSpec, StoreKind};
use crate::db::{DbError, ENCRYPTED_DB_NAME, PLAINTEXT_DB_NAME};
use crate::fetch::RunError;
use crate::value::Prepared;

/// Field suffix of a key that a rotation has stored but not promoted yet.
pub const PENDING_SUFFIX: &str = "_pending";
/// Field suffix of the key a rotation replaced.
pub const PREVIOUS_SUFFIX: &str = "_previous";

/// One version of a secret to try, in order of preference.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Version label for logs: "current", "pending" or "previous".
    pub label: &'static str,
    pub secret: SecretSpec,
}

/// Lists the versions worth trying for `secret`, current first.
pub fn candidates(store: &StoreKind, secret: &SecretSpec) -> Vec<Candidate> {
    let current = Candidate {
        label: "current",
        secret: secret.clone(),
    };
    if secret.kind != SecretKind::EncryptionKey || secret.version.is_some() {
        return vec![current];
    }

    let mut list = vec![current];
    match store {
        StoreKind::Aws(_) if secret.stage.is_none() => {
            for (label, stage) in [("pending", "AWSPENDING"), ("previous", "AWSPREVIOUS")] {
                let mut variant = secret.clone();
                variant.stage = Some(stage.to_owned());
                list.push(Candidate {
                    label,
                    secret: variant,
                });
            }
        }
        StoreKind::Vault(_) => {
            if let Some(field) = &secret.field {
                for (label, suffix) in [("pending", PENDING_SUFFIX), ("previous", PREVIOUS_SUFFIX)]
                {
                    let mut variant = secret.clone();
                    variant.field = Some(format!("{field}{suffix}"));
                    list.push(Candidate {
                        label,
                        secret: variant,
                    });
                }
            }
        }
        StoreKind::Aws(_) | StoreKind::Azure(_) | StoreKind::Gcp(_) | StoreKind::File => {}
    }
    list
}

/// Database files found in a data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    Encrypted(PathBuf),
    PlaintextOnly(PathBuf),
    Missing,
}

/// Looks for Portainer's database files in `data_dir`. An empty
/// `portainer.edb` counts as missing, because bbolt initialises an empty file
/// as a new database under whatever key Portainer starts with.
pub fn find_database(data_dir: &Path) -> Database {
    let encrypted = data_dir.join(ENCRYPTED_DB_NAME);
    let plaintext = data_dir.join(PLAINTEXT_DB_NAME);
    if encrypted.exists() && !is_empty_file(&encrypted) {
        Database::Encrypted(encrypted)
    } else if plaintext.exists() {
        Database::PlaintextOnly(plaintext)
    } else {
        Database::Missing
    }
}

/// Returns true for an existing regular file of length 0.
pub fn is_empty_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file() && metadata.len() == 0)
}

/// Fetches the candidates of an encryption key in turn and returns the first whose
/// value opens `database`.
pub async fn choose_key(
    store_kind: &StoreKind,
    secret: &SecretSpec,
    database: &Path,
    deadline: Instant,
    fetch: impl AsyncFn(&SecretSpec, Instant) -> Result<Prepared, RunError>,
) -> Result<Prepared, RunError> {
    let mut tried = Vec::new();
    for candidate in candidates(store_kind, secret) {
        let prepared = match fetch(&candidate.secret, deadline).await {
            Ok(prepared) => prepared,
            Err(error) if candidate.label != "current" && is_absent(&error) => {
                tracing::debug!(secret = %secret.name, candidate = candidate.label, "no such version");
                continue;
            }
            Err(error) => return Err(error),
        };

        match crate::db::verify(database, prepared.bytes.expose()) {
            Ok(report) => {
                tracing::info!(
                    secret = %secret.name,
                    candidate = candidate.label,
                    version = %prepared.version,
                    database = %database.display(),
                    encrypted_values = report.encrypted_values,
                    "key opens the database"
                );
                return Ok(prepared);
            }
            Err(error) if error.is_key_mismatch() => {
                tracing::info!(secret = %secret.name, candidate = candidate.label, version = %prepared.version, "key does not open the database");
                tried.push(format!(
                    "{} (version {})",
                    candidate.label, prepared.version
                ));
            }
            Err(error) => return Err(database_error(secret, error)),
        }
    }
    Err(RunError::KeyMismatch {
        secret: secret.name.clone(),
        database: database.to_path_buf(),
        tried: tried.join(", "),
    })
}

fn is_absent(error: &RunError) -> bool {
    match error {
        RunError::Backend { error, .. } => {
            matches!(**error, backends::BackendError::NotFound { .. })
        }
        RunError::Value(crate::value::ValueError::FieldNotFound { .. }) => true,
        _ => false,
    }
}

fn database_error(secret: &SecretSpec, error: DbError) -> RunError {
    RunError::Database {
        secret: secret.name.clone(),
        error: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CONFIG: &str = r#"
[stores.aws]
type = "aws"
region = "us-east-1"
[stores.bao]
type = "vault"
address = "http://127.0.0.1:8200"
[stores.bao.auth]
method = "token-file"
path = "/nonexistent"
[[secrets]]
name = "aws-key"
kind = "encryption-key"
store = "aws"
path = "portainer"
target = "/run/secrets/portainer"
[[secrets]]
name = "vault-key"
kind = "encryption-key"
store = "bao"
path = "secret/portainer"
field = "key"
target = "/run/portainer/portainer"
[[secrets]]
name = "password"
kind = "admin-password"
store = "bao"
path = "secret/portainer"
field = "password"
target = "/run/portainer/admin-password"
"#;

    fn config() -> Config {
        Config::from_toml_str(CONFIG, "test.toml").expect("valid")
    }

    #[test]
    fn aws_key_tries_current_pending_previous() {
        let config = config();
        let secret = &config.secrets[0];

        let list = candidates(&config.store_of(secret).kind, secret);

        let stages: Vec<Option<&str>> = list.iter().map(|c| c.secret.stage.as_deref()).collect();
        assert_eq!(stages, [None, Some("AWSPENDING"), Some("AWSPREVIOUS")]);
    }

    #[test]
    fn vault_key_tries_suffixed_fields() {
        let config = config();
        let secret = &config.secrets[1];

        let list = candidates(&config.store_of(secret).kind, secret);

        let fields: Vec<&str> = list
            .iter()
            .filter_map(|c| c.secret.field.as_deref())
            .collect();
        assert_eq!(fields, ["key", "key_pending", "key_previous"]);
    }

    #[test]
    fn password_has_one_candidate() {
        let config = config();
        let secret = &config.secrets[2];

        assert_eq!(candidates(&config.store_of(secret).kind, secret).len(), 1);
    }

    #[test]
    fn empty_directory_has_no_database() {
        let dir = tempfile::tempdir().expect("temp dir");

        assert_eq!(find_database(dir.path()), Database::Missing);
    }
}
