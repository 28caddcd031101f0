use std::io;
use std::path::PathBuf;

use thiserror::Error;

use super::bolt::{BoltError, WriteError};

/// A failed database operation. Messages name the file and never contain key
/// material, passwords or database values.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database file does not exist.
    #[error("database file {} not found", path.display())]
    NotFound {
        /// The path that was looked up.
        path: PathBuf,
    },
    /// The path exists but is not a regular file.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A tool that replaces the file was pointed at a symbolic link.
    #[error(
        "{} is a symbolic link; pass the path of the file it points to, because the \
         rename would replace the link and leave that file as it is",
        path.display()
    )]
    SymbolicLink {
        /// The link.
        path: PathBuf,
    },
    /// Another file took the database's place while the tool ran.
    #[error(
        "{} was replaced by another file while the tool ran, so the result was not \
         renamed over it; find what writes there, stop it and retry",
        path.display()
    )]
    Replaced {
        /// The database path.
        path: PathBuf,
    },
    /// The newer meta page has a valid checksum but cannot be used, so a
    /// rewrite would make the loss of its transaction permanent.
    #[error(
        "{}: meta page {page} (txid {txid}) {reason}, so the file has lost its newest \
         transaction, probably by truncation; the tool would make that permanent, so it \
         stopped. Restore the file from a backup, or copy it aside before any repair",
        path.display()
    )]
    LostTransaction {
        /// The database file.
        path: PathBuf,
        /// Page id of the newer meta page.
        page: u64,
        /// Its transaction id.
        txid: u64,
        /// The reason it cannot be used.
        reason: &'static str,
    },
    /// Reading a file failed.
    #[error("failed to read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing, syncing or renaming a file failed.
    #[error("failed to write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Another process (normally Portainer) holds the file's lock.
    #[error("{} is locked by another process; stop Portainer and retry", path.display())]
    Locked {
        /// The locked file.
        path: PathBuf,
    },
    /// The file is not a valid BoltDB file.
    #[error("{} is not a valid BoltDB file", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The structural problem.
        #[source]
        source: BoltError,
    },
    /// No encrypted value authenticates with the key.
    #[error("the key does not open {}", path.display())]
    KeyMismatch {
        /// The database file.
        path: PathBuf,
    },
    /// Some encrypted values authenticate with the key and some do not.
    #[error(
        "{failed} of {total} encrypted values in {} do not authenticate with the key, \
         the first in bucket {first_bucket:?}; the file is damaged or mixes keys",
        path.display()
    )]
    ValuesDoNotAuthenticate {
        /// The database file.
        path: PathBuf,
        /// Values that failed.
        failed: u64,
        /// Encrypted values checked.
        total: u64,
        /// Name of the bucket of the first value that failed, with bytes that
        /// are not UTF-8 replaced.
        first_bucket: String,
    },
    /// The output file already exists.
    #[error("{} already exists; Portainer does not start while portainer.db and portainer.edb both exist", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The database content cannot be written back as a BoltDB file.
    #[error("cannot rewrite {} as a BoltDB file", path.display())]
    Unwritable {
        /// The database file.
        path: PathBuf,
        /// The writer's reason.
        #[source]
        source: WriteError,
    },
    /// A bucket the operation needs is missing.
    #[error("bucket {bucket} not found in {}", path.display())]
    MissingBucket {
        /// The database file.
        path: PathBuf,
        /// The bucket name.
        bucket: &'static str,
    },
    /// The user id is not a key of bucket `users`.
    #[error("user {id} not found in bucket users of {}", path.display())]
    UserNotFound {
        /// The database file.
        path: PathBuf,
        /// The user id.
        id: u64,
    },
    /// The user record is not a JSON object.
    #[error(
        "user {id} in {} is not a JSON object; if the database is encrypted, pass its key",
        path.display()
    )]
    InvalidUserRecord {
        /// The database file.
        path: PathBuf,
        /// The user id.
        id: u64,
    },
    /// The rewritten copy did not pass verification, so the original was kept.
    #[error("the rewritten copy {} failed verification ({reason}); the original is unchanged", path.display())]
    CopyVerificationFailed {
        /// The temporary copy.
        path: PathBuf,
        /// The check that failed.
        reason: &'static str,
    },
    /// An argument is unusable.
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// The problem and its fix.
        reason: &'static str,
    },
}

impl DbError {
    /// Returns whether the error means "this key does not open the database",
    /// so a caller can try another candidate key.
    pub fn is_key_mismatch(&self) -> bool {
        matches!(self, DbError::KeyMismatch { .. })
    }
}
