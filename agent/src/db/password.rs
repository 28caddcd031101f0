//! Resetting a Portainer user's password offline.
//!
//! Portainer stores users in bucket `users` under an 8-byte big-endian id
//! (its `ConvertToKey`), as JSON with a `Password` field holding a bcrypt
//! hash. Portainer's own `--admin-password-file` only applies before an
//! administrator exists, so a forgotten password needs this offline edit.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::bolt::{Layout, WriteBucket, WriteEntry, parse, write_database};
use super::crypto::PortainerKey;
use super::error::DbError;
use super::files::{StagedFile, remove_stale, temp_path};
use super::lock::{LockMode, LockedFile};
use super::reencrypt::clear_stale_data;
use super::user_json::set_password;
use super::verify::verify_bytes;
use super::{ENCRYPTED_DB_NAME, PLAINTEXT_DB_NAME, reject_lost_transaction, resolve_db_path};

/// bcrypt cost Portainer uses (`bcrypt.DefaultCost`).
const BCRYPT_COST: u32 = 10;
/// Maximum password length bcrypt hashes without truncation, in bytes.
pub const MAX_PASSWORD_LEN: usize = 72;

/// Result of [`reset_admin_password`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetPasswordReport {
    /// The database file.
    pub path: PathBuf,
    /// The user whose password was set.
    pub user_id: u64,
    /// Whether the value kept its length and was rewritten in place; otherwise
    /// the whole file was rebuilt.
    pub rewritten_in_place: bool,
}

/// Sets user `user_id`'s password to a bcrypt hash (cost 10) of `password`.
///
/// `path` is a database file or a data directory; in a directory the tool
/// uses `portainer.edb` when `key_file_bytes` is given, else `portainer.db`.
/// With a key, every value must authenticate first. The file is replaced
/// through a verified copy, and stale pages are cleared so the old hash does
/// not linger in free space.
pub fn reset_admin_password(
    path: &Path,
    key_file_bytes: Option<&[u8]>,
    user_id: u64,
    password: &[u8],
) -> Result<ResetPasswordReport, DbError> {
    check_password(password)?;
    let default_name = match key_file_bytes {
        Some(_) => ENCRYPTED_DB_NAME,
        None => PLAINTEXT_DB_NAME,
    };
    let path = resolve_db_path(path, default_name);
    let key = key_file_bytes.map(PortainerKey::from_key_file_bytes);
    let context = UserContext {
        path: &path,
        key: key.as_ref(),
        user_id,
    };

    let file = LockedFile::open(&path, LockMode::Exclusive)?;
    let temp = temp_path(&path, "reset-password");
    remove_stale(&temp)?;
    let mut data = file.read_all()?;
    let layout = parse(&data).map_err(|source| context.corrupt(source))?;
    reject_lost_transaction(&path, &layout)?;
    if let Some(key) = context.key {
        verify_bytes(&path, &data, key)?;
    }

    let hash = hash_password(password)?;
    let value = context.find_user(&data, &layout)?;
    let plaintext = context.open(&data[value.clone()])?;
    let record = set_password(&plaintext, &hash).map_err(|_| context.invalid_record())?;
    let stored = match context.key {
        Some(key) => key.encrypt(&record),
        None => record.to_vec(),
    };

    let rewritten_in_place = stored.len() == value.len();
    let image = if rewritten_in_place {
        data[value].copy_from_slice(&stored);
        clear_stale_data(&mut data, &layout);
        data
    } else {
        rebuild(&data, &layout, &value, &stored).map_err(|source| DbError::Unwritable {
            path: path.clone(),
            source,
        })?
    };

    let mut staged = StagedFile::create(temp, &file.metadata()?)?;
    staged.write_and_sync(&image)?;
    drop(image);
    context.check_copy(&staged, password, layout.values.len())?;
    file.check_still_at_path()?;
    staged.replace(&path)?;
    tracing::info!(path = %path.display(), user_id, "reset user password");

    Ok(ResetPasswordReport {
        path,
        user_id,
        rewritten_in_place,
    })
}

fn check_password(password: &[u8]) -> Result<(), DbError> {
    if password.is_empty() {
        return Err(DbError::InvalidInput {
            reason: "the password is empty",
        });
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(DbError::InvalidInput {
            reason: "the password is longer than 72 bytes, bcrypt's limit",
        });
    }
    Ok(())
}

/// Hashes like Portainer (Go's `golang.org/x/crypto/bcrypt`): version `$2a$`,
/// cost 10.
fn hash_password(password: &[u8]) -> Result<String, DbError> {
    let parts =
        bcrypt::hash_with_result(password, BCRYPT_COST).map_err(|_| DbError::InvalidInput {
            reason: "bcrypt could not hash the password",
        })?;
    Ok(parts.format_for_version(bcrypt::Version::TwoA))
}

/// Rebuilds the whole file with one value replaced.
fn rebuild(
    data: &[u8],
    layout: &Layout,
    replaced: &Range<usize>,
    stored: &[u8],
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
                    value: if entry.value == *replaced {
                        Cow::Borrowed(stored)
                    } else {
                        Cow::Borrowed(&data[entry.value.clone()])
                    },
                })
                .collect(),
        })
        .collect();
    write_database(layout.page_size, layout.meta.root_sequence, &mut buckets)
}

struct UserContext<'a> {
    path: &'a Path,
    key: Option<&'a PortainerKey>,
    user_id: u64,
}

impl UserContext<'_> {
    fn corrupt(&self, source: super::bolt::BoltError) -> DbError {
        DbError::Corrupt {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn invalid_record(&self) -> DbError {
        DbError::InvalidUserRecord {
            path: self.path.to_path_buf(),
            id: self.user_id,
        }
    }

    /// Returns the byte range of the user's stored value.
    fn find_user(&self, data: &[u8], layout: &Layout) -> Result<Range<usize>, DbError> {
        let bucket = layout
            .buckets
            .iter()
            .find(|bucket| &data[bucket.name.clone()] == b"users")
            .ok_or(DbError::MissingBucket {
                path: self.path.to_path_buf(),
                bucket: "users",
            })?;
        let user_key = self.user_id.to_be_bytes();
        let entry = layout
            .entries(bucket)
            .iter()
            .find(|entry| data[entry.key.clone()] == user_key)
            .ok_or(DbError::UserNotFound {
                path: self.path.to_path_buf(),
                id: self.user_id,
            })?;
        Ok(entry.value.clone())
    }

    /// Returns the plaintext of a stored value.
    fn open(&self, stored: &[u8]) -> Result<Zeroizing<Vec<u8>>, DbError> {
        match self.key {
            Some(key) => key.decrypt(stored).map_err(|_| DbError::KeyMismatch {
                path: self.path.to_path_buf(),
            }),
            None => Ok(Zeroizing::new(stored.to_vec())),
        }
    }

    /// Checks the written copy: same number of values, all authenticate, and
    /// the user's hash matches `password`.
    fn check_copy(
        &self,
        staged: &StagedFile,
        password: &[u8],
        values: usize,
    ) -> Result<(), DbError> {
        let failed = |reason| DbError::CopyVerificationFailed {
            path: staged.path().to_path_buf(),
            reason,
        };
        let written = staged.map()?;
        let layout = parse(&written).map_err(|_| failed("the copy is not a valid BoltDB file"))?;
        if layout.values.len() != values {
            return Err(failed("the number of values changed"));
        }
        if let Some(key) = self.key {
            verify_bytes(staged.path(), &written, key)
                .map_err(|_| failed("values do not authenticate with the key"))?;
        }

        let value = self.find_user(&written, &layout)?;
        let plaintext = self.open(&written[value])?;
        let record: serde_json::Value = serde_json::from_slice(&plaintext)
            .map_err(|_| failed("the user record is not JSON"))?;
        let hash = record
            .get("Password")
            .and_then(serde_json::Value::as_str)
            .ok_or(failed("the user record has no Password"))?;
        match bcrypt::verify(password, hash) {
            Ok(true) => Ok(()),
            _ => Err(failed("the stored hash does not match the password")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_uses_portainer_format() {
        let hash = hash_password(b"secret").expect("hashes");
        assert_eq!(hash.len(), 60);
        assert!(hash.starts_with("$2a$10$"));
        assert!(bcrypt::verify(b"secret", &hash).expect("valid hash"));
    }

    #[test]
    fn password_length_is_checked() {
        assert!(check_password(b"").is_err());
        assert!(check_password(&[b'a'; 72]).is_ok());
        assert!(check_password(&[b'a'; 73]).is_err());
    }
}
