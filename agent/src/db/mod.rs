//! Offline tools for Portainer's BoltDB database: verify that a key opens it,
//! rotate its encryption key, encrypt a plaintext database, and reset a user's
//! password.
//!
//! Every tool reads the file itself (no bbolt library is involved), takes the
//! `flock` bbolt takes so it fails while Portainer runs, and replaces a file
//! only through a verified copy renamed into place. Keys are passed as the key
//! file's exact bytes; the AES key is derived from them as Portainer does.

pub mod cli;
mod crypto;
mod encrypt;
mod error;
mod files;
mod lock;
mod mapped;
mod parallel;
mod password;
mod reencrypt;
mod rotate;
mod user_json;
mod verify;

use std::path::{Path, PathBuf};

pub use crypto::{
    AuthenticationFailed, NONCE_SIZE, OVERHEAD, PASS_THROUGH_VALUE, PortainerKey, TAG_SIZE,
};
pub use encrypt::{EncryptOptions, EncryptReport, encrypt};
pub use error::DbError;
pub use password::{ResetPasswordReport, reset_admin_password};
/// The BoltDB reader and writer, re-exported so `db::bolt` paths keep working.
pub use portainer_bolt as bolt;
pub use rotate::{BackupFileOutcome, FileOutcome, RotateOptions, RotateReport, RotateStep, rotate};
pub use verify::{BucketSummary, SchemaVersion, VerifyReport, is_plaintext, verify};

/// File name of the encrypted database in Portainer's data directory.
pub const ENCRYPTED_DB_NAME: &str = "portainer.edb";
/// File name of the plaintext database in Portainer's data directory.
pub const PLAINTEXT_DB_NAME: &str = "portainer.db";
/// Pre-migration backup Portainer keeps, relative to the data directory.
pub const BACKUP_FILE: &str = "backups/portainer.edb.bak";

/// Fails when the file lost its newest transaction (see
/// [`bolt::Layout::skipped_newer_meta`]), before a tool rewrites it.
fn reject_lost_transaction(path: &Path, layout: &bolt::Layout) -> Result<(), DbError> {
    match layout.skipped_newer_meta {
        Some(skipped) => Err(DbError::LostTransaction {
            path: path.to_path_buf(),
            page: skipped.page,
            txid: skipped.txid,
            reason: skipped.reason,
        }),
        None => Ok(()),
    }
}

/// Returns `path/default_name` when `path` is a directory, else `path`.
fn resolve_db_path(path: &Path, default_name: &str) -> PathBuf {
    if path.is_dir() {
        path.join(default_name)
    } else {
        path.to_path_buf()
    }
}
