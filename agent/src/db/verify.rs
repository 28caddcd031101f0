//! Checking that every value of an encrypted database opens with a key.

use std::path::{Path, PathBuf};
use std::thread;

use zeroize::Zeroizing;

use super::bolt::{FreelistForm, Layout, SkippedMeta, ValueRef, parse};
use super::crypto::{PASS_THROUGH_VALUE, PortainerKey};
use super::error::DbError;
use super::lock::{LockMode, LockedFile};
use super::parallel::thread_count;
use super::{ENCRYPTED_DB_NAME, resolve_db_path};

/// Result of [`verify`]: bucket names and value counts. It contains no key
/// material and no decrypted value except the schema version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The database file that was checked.
    pub path: PathBuf,
    /// Page size in bytes.
    pub page_size: usize,
    /// Transaction id of the active meta page.
    pub txid: u64,
    /// A newer meta page that could not be used: the file lost its newest
    /// transaction, and bbolt may fail to open it.
    pub skipped_newer_meta: Option<SkippedMeta>,
    /// Freelist form of the file.
    pub freelist: FreelistForm,
    /// Top-level buckets in key order.
    pub buckets: Vec<BucketSummary>,
    /// Encrypted values that authenticated (all of them, on success).
    pub encrypted_values: u64,
    /// Values stored as the bare, unencrypted `false`.
    pub pass_through_values: u64,
    /// Portainer's schema version from bucket `version`, if recognised.
    pub schema_version: Option<SchemaVersion>,
}

/// One bucket's name and value count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSummary {
    /// Bucket name; bytes that are not UTF-8 are replaced.
    pub name: String,
    /// Number of key/value pairs.
    pub values: u64,
    /// The bucket's sequence counter.
    pub sequence: u64,
}

/// The schema version Portainer stored in bucket `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaVersion {
    /// The key it was found under: `VERSION` (JSON, Portainer 2.17 and later)
    /// or `DB_VERSION` (a bare number, 2.16 and older).
    pub key: String,
    /// The version string, such as `2.21.0` or `35`.
    pub version: String,
}

/// Checks that every value of the database at `db_path` (a file, or a data
/// directory containing `portainer.edb`) authenticates with the key derived
/// from `key_file_bytes`.
///
/// Takes a shared lock, as a read-only bbolt open does, so it fails with
/// [`DbError::Locked`] while Portainer runs. A key that opens no value returns
/// [`DbError::KeyMismatch`]. A database without encrypted values proves
/// nothing about the key; `encrypted_values` is then 0.
pub fn verify(db_path: &Path, key_file_bytes: &[u8]) -> Result<VerifyReport, DbError> {
    let path = resolve_db_path(db_path, ENCRYPTED_DB_NAME);
    let file = LockedFile::open(&path, LockMode::Shared)?;
    let data = file.map()?;
    let key = PortainerKey::from_key_file_bytes(key_file_bytes);
    verify_bytes(&path, &data, &key)
}

/// Returns true when `db_path` (a file, or a data directory containing
/// `portainer.edb`) is a database whose schema version reads without a key,
/// that is, a plaintext database. Errors count as false.
pub fn is_plaintext(db_path: &Path) -> bool {
    let path = resolve_db_path(db_path, ENCRYPTED_DB_NAME);
    let Ok(file) = LockedFile::open(&path, LockMode::Shared) else {
        return false;
    };
    let Ok(data) = file.map() else {
        return false;
    };
    parse(&data).is_ok_and(|layout| find_schema_version(&data, &layout, None).is_some())
}

/// Verifies a file image already in memory; `path` is used in errors only.
pub(crate) fn verify_bytes(
    path: &Path,
    data: &[u8],
    key: &PortainerKey,
) -> Result<VerifyReport, DbError> {
    let layout = parse(data).map_err(|source| DbError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    let counts = authenticate_all(data, &layout, key);
    if counts.failed > 0 {
        return Err(if counts.failed == counts.encrypted {
            DbError::KeyMismatch {
                path: path.to_path_buf(),
            }
        } else {
            DbError::ValuesDoNotAuthenticate {
                path: path.to_path_buf(),
                failed: counts.failed,
                total: counts.encrypted,
                first_bucket: bucket_of(data, &layout, counts.first_failed.unwrap_or(0)),
            }
        });
    }

    Ok(VerifyReport {
        path: path.to_path_buf(),
        page_size: layout.page_size,
        txid: layout.meta.txid,
        skipped_newer_meta: layout.skipped_newer_meta,
        freelist: layout.freelist,
        buckets: summarize_buckets(data, &layout),
        encrypted_values: counts.encrypted,
        pass_through_values: counts.pass_through,
        schema_version: find_schema_version(data, &layout, Some(key)),
    })
}

#[derive(Debug, Default)]
struct Counts {
    encrypted: u64,
    failed: u64,
    pass_through: u64,
    /// Index in `Layout::values` of the first value that failed.
    first_failed: Option<usize>,
}

/// Returns the name of the bucket that contains value number `index`.
fn bucket_of(data: &[u8], layout: &Layout, index: usize) -> String {
    layout
        .buckets
        .iter()
        .find(|bucket| bucket.entries.contains(&index))
        .map(|bucket| String::from_utf8_lossy(&data[bucket.name.clone()]).into_owned())
        .unwrap_or_default()
}

/// Authenticates every value, spreading large files over threads.
fn authenticate_all(data: &[u8], layout: &Layout, key: &PortainerKey) -> Counts {
    let bytes: usize = layout.values.iter().map(|entry| entry.value.len()).sum();
    let threads = thread_count(bytes);
    let per_thread = layout.values.len().div_ceil(threads).max(1);
    thread::scope(|scope| {
        let workers: Vec<_> = layout
            .values
            .chunks(per_thread)
            .enumerate()
            .map(|(chunk, entries)| {
                let first_index = chunk * per_thread;
                scope.spawn(move || authenticate_entries(data, entries, first_index, key))
            })
            .collect();
        workers
            .into_iter()
            .fold(Counts::default(), |total, worker| {
                let counts = worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                Counts {
                    encrypted: total.encrypted + counts.encrypted,
                    failed: total.failed + counts.failed,
                    pass_through: total.pass_through + counts.pass_through,
                    first_failed: total.first_failed.or(counts.first_failed),
                }
            })
    })
}

/// Authenticates `entries`, which start at index `first_index` of the layout's
/// values.
fn authenticate_entries(
    data: &[u8],
    entries: &[ValueRef],
    first_index: usize,
    key: &PortainerKey,
) -> Counts {
    let mut counts = Counts::default();
    let largest = entries.iter().map(|entry| entry.value.len()).max();
    let mut scratch = Zeroizing::new(Vec::with_capacity(largest.unwrap_or(0)));
    for (offset, entry) in entries.iter().enumerate() {
        let value = &data[entry.value.clone()];
        if value == PASS_THROUGH_VALUE {
            counts.pass_through += 1;
            continue;
        }
        counts.encrypted += 1;
        if !key.authenticates(value, &mut scratch) {
            counts.failed += 1;
            counts.first_failed.get_or_insert(first_index + offset);
        }
    }
    counts
}

pub(crate) fn summarize_buckets(data: &[u8], layout: &Layout) -> Vec<BucketSummary> {
    layout
        .buckets
        .iter()
        .map(|bucket| BucketSummary {
            name: String::from_utf8_lossy(&data[bucket.name.clone()]).into_owned(),
            values: bucket.entries.len() as u64,
            sequence: bucket.sequence,
        })
        .collect()
}

/// Looks for the schema version in bucket `version`; values are decrypted
/// with `key` when given.
pub(crate) fn find_schema_version(
    data: &[u8],
    layout: &Layout,
    key: Option<&PortainerKey>,
) -> Option<SchemaVersion> {
    let bucket = layout
        .buckets
        .iter()
        .find(|bucket| &data[bucket.name.clone()] == b"version")?;
    for entry in layout.entries(bucket) {
        let name = &data[entry.key.clone()];
        let stored = &data[entry.value.clone()];
        let plaintext = match key {
            Some(key) => key.decrypt(stored).ok()?,
            None => Zeroizing::new(stored.to_vec()),
        };
        let version = match name {
            b"VERSION" => version_from_json(&plaintext),
            b"DB_VERSION" => version_from_bare(&plaintext),
            _ => None,
        };
        if let Some(version) = version {
            let key = String::from_utf8_lossy(name).into_owned();
            return Some(SchemaVersion { key, version });
        }
    }
    None
}

fn version_from_json(plaintext: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(plaintext).ok()?;
    let version = value.get("SchemaVersion")?.as_str()?;
    is_version_string(version).then(|| version.to_owned())
}

fn version_from_bare(plaintext: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(plaintext).ok()?.trim();
    let text = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::String(inner)) => inner,
        _ => text.to_owned(),
    };
    is_version_string(&text).then_some(text)
}

/// Accepts only short version-like strings, so nothing else stored in the
/// bucket can reach a report.
fn is_version_string(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 32
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b".+-".contains(&byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parsers_accept_both_forms() {
        let json = br#"{"SchemaVersion":"2.21.0","MigratorCount":0,"Edition":1}"#;
        assert_eq!(version_from_json(json).as_deref(), Some("2.21.0"));
        assert_eq!(version_from_bare(b"35").as_deref(), Some("35"));
        assert_eq!(version_from_bare(b"\"24\"").as_deref(), Some("24"));
    }

    #[test]
    fn version_parsers_reject_other_text() {
        assert_eq!(version_from_bare(b"secret value with spaces"), None);
        assert_eq!(version_from_json(br#"{"SchemaVersion":{"a":1}}"#), None);
        assert_eq!(version_from_bare(&[0xff, 0xfe]), None);
    }
}
