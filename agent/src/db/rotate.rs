//! Re-encrypting every value of a database under a new key.
//!
//! Each value keeps its length (`plaintext + 28` bytes), so the rotation maps
//! the original and writes a copy next to it chunk by chunk, with every value
//! re-encrypted in place and everything the active tree does not reach (free
//! pages, the older meta's tree, unused bytes inside pages) zeroed. Both meta
//! pages of the copy point at the active tree, so no old-key ciphertext is
//! left in it. The copy is fsynced, verified with the new key and renamed over
//! the original. A process killed at any point leaves either the old file or
//! the new one; the next run removes the temporary copy.

use std::path::{Path, PathBuf};

use super::bolt::{Layout, parse};
use super::crypto::PortainerKey;
use super::error::DbError;
use super::files::{StagedFile, parent_dir, remove_stale, temp_path};
use super::lock::{LockMode, LockedFile};
use super::reencrypt::{KeyPair, ReencryptError, reencrypt_into};
use super::verify::verify_bytes;
use super::{BACKUP_FILE, ENCRYPTED_DB_NAME, reject_lost_transaction, resolve_db_path};

/// A point in the rotation of one file, reported after it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RotateStep {
    /// The lock is held and leftovers of an earlier run are removed.
    Locked,
    /// The temporary copy contains every value re-encrypted and no stale data.
    Reencrypted,
    /// The temporary copy is fsynced.
    CopyWritten,
    /// The temporary copy parses to the original's tree. Every value in it
    /// was read back and authenticated with the new key as it was written.
    CopyVerified,
    /// The requested backup of the original is written.
    BackupWritten,
    /// The copy replaced the original and the directory is fsynced.
    Replaced,
}

/// Options of [`rotate`].
#[derive(Debug, Clone, Default)]
pub struct RotateOptions {
    /// Path for a copy of the database as it was, still under the old key.
    /// An existing file there is replaced. `None` keeps no copy. Paths the
    /// rotation writes itself are rejected.
    pub backup: Option<PathBuf>,
    /// Called after each step with the file being rotated, for progress
    /// reports; tests use it to kill the process at chosen points.
    pub on_step: Option<fn(&Path, RotateStep)>,
}

/// Outcome for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Every value was re-encrypted under the new key.
    Rotated {
        /// Values re-encrypted.
        encrypted_values: u64,
        /// `false` values copied unchanged.
        pass_through_values: u64,
        /// Bytes of stale data zeroed.
        cleared_bytes: u64,
    },
    /// The file already opened with the new key (an earlier run finished it).
    AlreadyNewKey,
}

impl std::fmt::Display for FileOutcome {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileOutcome::Rotated {
                encrypted_values,
                pass_through_values,
                cleared_bytes,
            } => write!(
                formatter,
                "rotated: {encrypted_values} values re-encrypted, {pass_through_values} \"false\" \
                 values copied, {cleared_bytes} bytes of stale data zeroed"
            ),
            FileOutcome::AlreadyNewKey => {
                formatter.write_str("already opens with the new key; left as it is")
            }
        }
    }
}

/// Outcome for Portainer's pre-migration backup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupFileOutcome {
    /// There is no backup file.
    Absent,
    /// The backup file was handled like the database.
    Done(FileOutcome),
    /// The backup file opens with neither key or is damaged, so it was left
    /// as it is; it may still hold data under another key.
    Skipped {
        /// Reason the file was left unchanged.
        reason: String,
    },
}

/// Result of [`rotate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateReport {
    /// The database file.
    pub database: PathBuf,
    /// Outcome for the database file.
    pub outcome: FileOutcome,
    /// The backup of the original, if one was requested and written.
    pub backup: Option<PathBuf>,
    /// Path of Portainer's pre-migration backup file.
    pub backup_file: PathBuf,
    /// Outcome for the backup file.
    pub backup_file_outcome: BackupFileOutcome,
}

/// Re-encrypts every value of the database at `path` (a file, or a data
/// directory containing `portainer.edb`) from `old_key` to `new_key`, given as
/// key file bytes, then does the same for `backups/portainer.edb.bak` next to
/// it if present.
///
/// Running it again after an interruption finishes the job: a file that
/// already opens with the new key is left as it is.
pub fn rotate(
    path: &Path,
    old_key: &[u8],
    new_key: &[u8],
    options: &RotateOptions,
) -> Result<RotateReport, DbError> {
    if new_key.is_empty() {
        return Err(DbError::InvalidInput {
            reason: "the new key file is empty; SHA-256 of nothing is a publicly known key",
        });
    }
    if old_key == new_key {
        return Err(DbError::InvalidInput {
            reason: "the old and new key files are identical",
        });
    }
    let database = resolve_db_path(path, ENCRYPTED_DB_NAME);
    if let Some(backup) = &options.backup {
        check_backup_path(backup, &database)?;
    }
    let keys = KeyPair {
        old: PortainerKey::from_key_file_bytes(old_key),
        new: PortainerKey::from_key_file_bytes(new_key),
    };

    let outcome = rotate_file(&database, &keys, options.backup.as_deref(), options.on_step)?;
    let backup = match (&outcome, &options.backup) {
        (FileOutcome::Rotated { .. }, Some(backup)) => Some(backup.clone()),
        _ => None,
    };
    let backup_file = parent_dir(&database).join(BACKUP_FILE);
    let backup_file_outcome = rotate_backup_file(&backup_file, &keys, options.on_step)?;

    Ok(RotateReport {
        database,
        outcome,
        backup,
        backup_file,
        backup_file_outcome,
    })
}

/// Rejects a backup path that names a file the rotation writes or rotates
/// itself, because the copy under the old key would not survive.
fn check_backup_path(backup: &Path, database: &Path) -> Result<(), DbError> {
    let portainer_backup = parent_dir(database).join(BACKUP_FILE);
    let reserved = [
        database.to_path_buf(),
        temp_path(database, "rotate"),
        temp_path(database, "backup"),
        temp_path(&portainer_backup, "rotate"),
        portainer_backup,
    ];
    if names_any_of(backup, &reserved) {
        return Err(DbError::InvalidInput {
            reason: "the backup path names the database, backups/portainer.edb.bak or a \
                     temporary copy, which the rotation replaces; choose another path",
        });
    }
    Ok(())
}

/// Returns true when `path` names the same file as one of `others`, once the
/// directories are resolved (links, `..`). The files need not exist, but a
/// path whose directory is missing matches nothing.
pub(crate) fn names_any_of<P: AsRef<Path>>(path: &Path, others: &[P]) -> bool {
    let Some(path) = comparable_path(path) else {
        return false;
    };
    others
        .iter()
        .any(|other| comparable_path(other.as_ref()).as_ref() == Some(&path))
}

fn comparable_path(path: &Path) -> Option<PathBuf> {
    let directory = parent_dir(path).canonicalize().ok()?;
    Some(directory.join(path.file_name()?))
}

fn rotate_backup_file(
    path: &Path,
    keys: &KeyPair,
    on_step: Option<fn(&Path, RotateStep)>,
) -> Result<BackupFileOutcome, DbError> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(BackupFileOutcome::Absent);
    }
    match rotate_file(path, keys, None, on_step) {
        Ok(outcome) => Ok(BackupFileOutcome::Done(outcome)),
        Err(
            error @ (DbError::KeyMismatch { .. }
            | DbError::ValuesDoNotAuthenticate { .. }
            | DbError::Corrupt { .. }
            | DbError::NotAFile { .. }),
        ) => {
            let reason = error.to_string();
            tracing::warn!(path = %path.display(), %reason, "left the backup file unchanged");
            Ok(BackupFileOutcome::Skipped { reason })
        }
        Err(error) => Err(error),
    }
}

fn rotate_file(
    path: &Path,
    keys: &KeyPair,
    backup: Option<&Path>,
    on_step: Option<fn(&Path, RotateStep)>,
) -> Result<FileOutcome, DbError> {
    let step = |done| {
        if let Some(hook) = on_step {
            hook(path, done);
        }
    };
    let file = LockedFile::open(path, LockMode::Exclusive)?;
    let temp = temp_path(path, "rotate");
    remove_stale(&temp)?;
    step(RotateStep::Locked);

    let source = file.map()?;
    let layout = parse(&source).map_err(|source| DbError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    reject_lost_transaction(path, &layout)?;
    let staged = StagedFile::create(temp, &file.metadata()?)?;
    let counts = match reencrypt_into(&source, &layout, keys, &staged) {
        Ok(counts) => counts,
        Err(ReencryptError::Io(error)) => return Err(error),
        Err(ReencryptError::CopyRejected) => {
            return Err(copy_failed(
                staged.path(),
                "a value read back from the copy does not authenticate with the new key",
            ));
        }
        Err(ReencryptError::Authentication) => {
            drop(staged);
            return classify_failure(path, &source, keys);
        }
    };
    step(RotateStep::Reencrypted);

    staged.sync()?;
    step(RotateStep::CopyWritten);

    check_copy(staged.path(), &staged.map()?, &layout)?;
    step(RotateStep::CopyVerified);

    if let Some(backup) = backup {
        write_backup(&file, &source, backup)?;
        step(RotateStep::BackupWritten);
    }
    file.check_still_at_path()?;
    staged.replace(path)?;
    step(RotateStep::Replaced);
    tracing::info!(path = %path.display(), values = counts.encrypted, "rotated database key");

    Ok(FileOutcome::Rotated {
        encrypted_values: counts.encrypted,
        pass_through_values: counts.pass_through,
        cleared_bytes: counts.cleared,
    })
}

/// Decides why the old key failed: the file may already be rotated, or the
/// old key is wrong, or the file mixes keys.
fn classify_failure(path: &Path, original: &[u8], keys: &KeyPair) -> Result<FileOutcome, DbError> {
    if verify_bytes(path, original, &keys.new).is_ok() {
        return Ok(FileOutcome::AlreadyNewKey);
    }
    verify_bytes(path, original, &keys.old)?;
    // The old key opens every value one by one, so the rewrite failed on
    // values that share bytes (a damaged file) or on a file that changed
    // under the lock. Report it as a mismatch rather than guess.
    Err(DbError::KeyMismatch {
        path: path.to_path_buf(),
    })
}

/// Checks that the copy parses to the same tree as the original: the same
/// buckets, keys and value positions. Together with the read-back check of
/// every value during the rewrite, this proves the whole copy opens with the
/// new key.
fn check_copy(path: &Path, copy: &[u8], original: &Layout) -> Result<(), DbError> {
    let layout =
        parse(copy).map_err(|_| copy_failed(path, "the copy is not a valid BoltDB file"))?;
    if layout.buckets != original.buckets || layout.values != original.values {
        return Err(copy_failed(
            path,
            "the copy's buckets or values differ from the original's",
        ));
    }
    Ok(())
}

fn copy_failed(path: &Path, reason: &'static str) -> DbError {
    DbError::CopyVerificationFailed {
        path: path.to_path_buf(),
        reason,
    }
}

fn write_backup(file: &LockedFile, original: &[u8], backup: &Path) -> Result<(), DbError> {
    let temp = temp_path(backup, "backup");
    remove_stale(&temp)?;
    let mut staged = StagedFile::create(temp, &file.metadata()?)?;
    staged.write_and_sync(original)?;
    staged.replace(backup)
}
