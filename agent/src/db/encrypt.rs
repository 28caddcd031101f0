//! Turning a plaintext `portainer.db` into an encrypted `portainer.edb`.
//!
//! Portainer's own migration goes through a typed export that drops buckets
//! it does not know. This tool copies the file bucket by bucket instead, so
//! every bucket, key, bucket sequence and value byte is kept. Each value is
//! encrypted as Portainer stores it.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use super::bolt::{Layout, WriteBucket, WriteEntry, parse, write_database};
use super::crypto::PortainerKey;
use super::error::DbError;
use super::files::{StagedFile, parent_dir, remove_stale, sync_dir, temp_path};
use super::lock::{LockMode, LockedFile};
use super::verify::find_schema_version;
use super::{ENCRYPTED_DB_NAME, PLAINTEXT_DB_NAME, reject_lost_transaction, resolve_db_path};

/// Options of [`encrypt`].
#[derive(Debug, Clone, Default)]
pub struct EncryptOptions {
    /// Delete `portainer.db` once `portainer.edb` is written and verified.
    /// Portainer refuses to start while both files exist.
    pub remove_plaintext: bool,
}

/// Result of [`encrypt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptReport {
    /// The plaintext database that was read.
    pub source: PathBuf,
    /// The encrypted database that was created.
    pub target: PathBuf,
    /// Number of buckets copied.
    pub buckets: usize,
    /// Number of values encrypted.
    pub values: u64,
    /// Whether the plaintext database was deleted.
    pub plaintext_removed: bool,
}

/// Encrypts the plaintext database at `path` (a file, or a data directory
/// containing `portainer.db`) into `portainer.edb` in the same directory,
/// with the key derived from `key_file_bytes`.
///
/// Fails with [`DbError::AlreadyExists`] if `portainer.edb` exists. The
/// plaintext file is left untouched unless `options.remove_plaintext` is set.
pub fn encrypt(
    path: &Path,
    key_file_bytes: &[u8],
    options: &EncryptOptions,
) -> Result<EncryptReport, DbError> {
    if key_file_bytes.is_empty() {
        return Err(DbError::InvalidInput {
            reason: "the key file is empty; SHA-256 of nothing is a publicly known key",
        });
    }
    let source = resolve_db_path(path, PLAINTEXT_DB_NAME);
    let target = parent_dir(&source).join(ENCRYPTED_DB_NAME);
    if std::fs::symlink_metadata(&target).is_ok() {
        return Err(DbError::AlreadyExists { path: target });
    }

    let file = LockedFile::open(&source, LockMode::Exclusive)?;
    let temp = temp_path(&target, "encrypt");
    remove_stale(&temp)?;
    let data = file.map()?;
    let layout = parse(&data).map_err(|source_error| DbError::Corrupt {
        path: source.clone(),
        source: source_error,
    })?;
    reject_lost_transaction(&source, &layout)?;
    check_plaintext(&data, &layout)?;
    let key = PortainerKey::from_key_file_bytes(key_file_bytes);
    let encrypted = encrypt_image(&data, &layout, &key).map_err(|error| DbError::Unwritable {
        path: source.clone(),
        source: error,
    })?;

    let mut staged = StagedFile::create(temp, &file.metadata()?)?;
    staged.write_and_sync(&encrypted)?;
    drop(encrypted);
    check_encrypted_copy(&staged, &data, &layout, &key)?;
    drop(data);
    staged.create_as(&target)?;
    tracing::info!(source = %source.display(), target = %target.display(), "encrypted database");

    let plaintext_removed = options.remove_plaintext;
    if plaintext_removed {
        remove_plaintext(&source, file)?;
    }
    Ok(EncryptReport {
        source,
        target,
        buckets: layout.buckets.len(),
        values: layout.values.len() as u64,
        plaintext_removed,
    })
}

/// Rejects a source whose `version` bucket has no readable schema version:
/// it is encrypted already (encrypting it again would make it unreadable to
/// Portainer) or it is not a Portainer database.
fn check_plaintext(data: &[u8], layout: &Layout) -> Result<(), DbError> {
    let has_version_bucket = layout
        .buckets
        .iter()
        .any(|bucket| &data[bucket.name.clone()] == b"version");
    if has_version_bucket && find_schema_version(data, layout, None).is_none() {
        return Err(DbError::InvalidInput {
            reason: "the source database has no plaintext schema version in its version \
                     bucket, so it is encrypted already or not a Portainer database; check it \
                     with `db verify` and its key",
        });
    }
    Ok(())
}

/// Builds the encrypted file image, with the source's page size.
fn encrypt_image(
    data: &[u8],
    layout: &Layout,
    key: &PortainerKey,
) -> Result<Vec<u8>, super::bolt::WriteError> {
    let mut buckets: Vec<WriteBucket<'_>> = layout
        .buckets
        .iter()
        .map(|bucket| WriteBucket {
            name: &data[bucket.name.clone()],
            sequence: bucket.sequence,
            entries: layout
                .entries(bucket)
                .iter()
                .map(|entry| WriteEntry {
                    key: &data[entry.key.clone()],
                    value: Cow::Owned(key.encrypt(&data[entry.value.clone()])),
                })
                .collect(),
        })
        .collect();
    write_database(layout.page_size, layout.meta.root_sequence, &mut buckets)
}

/// Checks that the written copy contains exactly the source's buckets,
/// sequences, keys and (decrypted) values, in the same order.
fn check_encrypted_copy(
    staged: &StagedFile,
    source: &[u8],
    layout: &Layout,
    key: &PortainerKey,
) -> Result<(), DbError> {
    let failed = |reason| DbError::CopyVerificationFailed {
        path: staged.path().to_path_buf(),
        reason,
    };
    let written = staged.map()?;
    let copy = parse(&written).map_err(|_| failed("the copy is not a valid BoltDB file"))?;
    if copy.buckets.len() != layout.buckets.len() || copy.values.len() != layout.values.len() {
        return Err(failed("bucket or value counts differ"));
    }
    for (original, rewritten) in layout.buckets.iter().zip(&copy.buckets) {
        let same = source[original.name.clone()] == written[rewritten.name.clone()]
            && original.sequence == rewritten.sequence
            && original.entries.len() == rewritten.entries.len();
        if !same {
            return Err(failed("bucket names or sequences differ"));
        }
    }
    for (original, rewritten) in layout.values.iter().zip(&copy.values) {
        if source[original.key.clone()] != written[rewritten.key.clone()] {
            return Err(failed("keys differ"));
        }
        let plaintext = key
            .decrypt(&written[rewritten.value.clone()])
            .map_err(|_| failed("a value does not authenticate"))?;
        if plaintext.as_slice() != &source[original.value.clone()] {
            return Err(failed("a value differs after decryption"));
        }
    }
    Ok(())
}

fn remove_plaintext(source: &Path, lock: LockedFile) -> Result<(), DbError> {
    std::fs::remove_file(source).map_err(|error| DbError::Write {
        path: source.to_path_buf(),
        source: error,
    })?;
    drop(lock);
    sync_dir(parent_dir(source))
}
