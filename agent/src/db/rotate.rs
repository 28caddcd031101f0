//! Re-encrypting every value of a database under a new key.
//!
//! Each value keeps its length (`plaintext + 28` bytes), so the rotation
//! rewrites values in place on an in-memory copy of the file. It then clears
//! everything the active tree does not reach (free pages, the older meta's
//! tree, unused bytes inside pages) and rewrites both meta pages to point at
//! the active tree, so no old-key ciphertext is left in the file. The copy is
//! written next to the original, fsynced, verified with the new key and
//! renamed over the original. A process killed at any point leaves either the
//! old file or the new one; the next run removes the temporary copy.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::thread;

use super::bolt::{Layout, parse, write_meta_page};
use super::crypto::{AuthenticationFailed, PASS_THROUGH_VALUE, PortainerKey};
use super::error::DbError;
use super::files::{StagedFile, parent_dir, remove_stale, temp_path};
use super::lock::{LockMode, LockedFile};
use super::parallel::{split_ranges, thread_count};
use super::verify::verify_bytes;
use super::{BACKUP_FILE, ENCRYPTED_DB_NAME, resolve_db_path};

/// A point in the rotation of one file, reported after it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RotateStep {
    /// The lock is held and leftovers of an earlier run are removed.
    Locked,
    /// Values are re-encrypted and stale data cleared, in memory.
    Reencrypted,
    /// The temporary copy is written and fsynced.
    CopyWritten,
    /// The temporary copy opened with the new key.
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
    /// An existing file there is overwritten. `None` keeps no copy.
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

struct KeyPair {
    old: PortainerKey,
    new: PortainerKey,
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

    let mut data = file.read_all()?;
    let layout = parse(&data).map_err(|source| DbError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    let counts = match reencrypt(&mut data, &layout, keys) {
        Ok(counts) => counts,
        Err(AuthenticationFailed) => return classify_failure(path, &file.read_all()?, keys),
    };
    let cleared_bytes = clear_stale_data(&mut data, &layout);
    step(RotateStep::Reencrypted);

    let mut staged = StagedFile::create(temp, &file.metadata()?)?;
    staged.write_and_sync(&data)?;
    step(RotateStep::CopyWritten);

    // The copy is read back from the file, into the same buffer to spare a
    // second allocation of the file's size.
    staged.read_back_into(&mut data)?;
    check_copy(staged.path(), &data, keys, counts.encrypted)?;
    drop(data);
    step(RotateStep::CopyVerified);

    if let Some(backup) = backup {
        write_backup(&file, backup)?;
        step(RotateStep::BackupWritten);
    }
    staged.replace(path)?;
    step(RotateStep::Replaced);
    tracing::info!(path = %path.display(), values = counts.encrypted, "rotated database key");

    Ok(FileOutcome::Rotated {
        encrypted_values: counts.encrypted,
        pass_through_values: counts.pass_through,
        cleared_bytes,
    })
}

/// Decides why the old key failed: the file may already be rotated, or the
/// old key is wrong, or the file mixes keys.
fn classify_failure(path: &Path, original: &[u8], keys: &KeyPair) -> Result<FileOutcome, DbError> {
    if verify_bytes(path, original, &keys.new).is_ok() {
        return Ok(FileOutcome::AlreadyNewKey);
    }
    verify_bytes(path, original, &keys.old)?;
    // The old key opened every value on a second read, so the file changed
    // under the lock; report it as a mismatch rather than guess.
    Err(DbError::KeyMismatch {
        path: path.to_path_buf(),
    })
}

fn check_copy(path: &Path, written: &[u8], keys: &KeyPair, expected: u64) -> Result<(), DbError> {
    let failed = |reason| DbError::CopyVerificationFailed {
        path: path.to_path_buf(),
        reason,
    };
    let report = verify_bytes(path, written, &keys.new)
        .map_err(|_| failed("values do not authenticate with the new key"))?;
    if report.encrypted_values != expected {
        return Err(failed("the number of encrypted values changed"));
    }
    Ok(())
}

fn write_backup(file: &LockedFile, backup: &Path) -> Result<(), DbError> {
    let original = file.read_all()?;
    let mut staged = StagedFile::create(temp_path(backup, "backup"), &file.metadata()?)?;
    staged.write_and_sync(&original)?;
    staged.replace(backup)
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    encrypted: u64,
    pass_through: u64,
}

/// Re-encrypts every value in place, spreading large files over threads.
fn reencrypt(
    data: &mut [u8],
    layout: &Layout,
    keys: &KeyPair,
) -> Result<Counts, AuthenticationFailed> {
    let mut ranges: Vec<Range<usize>> = layout
        .values
        .iter()
        .map(|entry| entry.value.clone())
        .collect();
    ranges.sort_unstable_by_key(|range| range.start);
    let bytes = ranges.iter().map(|range| range.len()).sum();
    let groups = split_ranges(&ranges, thread_count(bytes));

    thread::scope(|scope| {
        let mut rest = data;
        let mut base = 0;
        let mut workers = Vec::with_capacity(groups.len());
        for group in groups {
            let end = group.iter().map(|range| range.end).max().unwrap_or(base);
            let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(end - base);
            let chunk_base = base;
            workers.push(scope.spawn(move || reencrypt_group(chunk, chunk_base, group, keys)));
            rest = tail;
            base = end;
        }
        workers
            .into_iter()
            .try_fold(Counts::default(), |total, worker| {
                let counts = worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                Ok(Counts {
                    encrypted: total.encrypted + counts.encrypted,
                    pass_through: total.pass_through + counts.pass_through,
                })
            })
    })
}

/// Re-encrypts the values of one group; `chunk` starts at file offset `base`.
fn reencrypt_group(
    chunk: &mut [u8],
    base: usize,
    ranges: &[Range<usize>],
    keys: &KeyPair,
) -> Result<Counts, AuthenticationFailed> {
    let mut rng = rand::rng();
    let mut counts = Counts::default();
    for range in ranges {
        let value = &mut chunk[range.start - base..range.end - base];
        if value == PASS_THROUGH_VALUE {
            counts.pass_through += 1;
            continue;
        }
        keys.old.open_in_place(value)?;
        keys.new.seal_in_place(value, &mut rng);
        counts.encrypted += 1;
    }
    Ok(counts)
}

/// Zeroes every byte the active tree does not use and makes both meta pages
/// point at the active tree. Returns the number of bytes zeroed outside the
/// meta pages.
pub(crate) fn clear_stale_data(data: &mut [u8], layout: &Layout) -> u64 {
    let mut cleared = 0;
    for range in layout.unreachable_ranges() {
        cleared += range.len() as u64;
        data[range].fill(0);
    }

    // The other meta page gets the same tree one txid earlier, so bbolt still
    // opens the active one and its next commit lands on the other page.
    let page_size = layout.page_size;
    let active = layout.meta;
    let older_txid = active.txid.checked_sub(1).unwrap_or(1);
    for page in 0..2u64 {
        let mut meta = active;
        if page != layout.active_meta_page {
            meta.txid = older_txid;
        }
        let start = page as usize * page_size;
        write_meta_page(&mut data[start..start + page_size], page, &meta);
    }
    cleared
}
