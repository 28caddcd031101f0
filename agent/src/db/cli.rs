//! Arguments and entry point of the `db` subcommands.
//!
//! Exit codes:
//!
//! - 0: success
//! - 1: the key does not open the database
//! - 65: invalid or corrupt data
//! - 66: a file is missing or unreadable
//! - 73: a file cannot be written
//! - 75: the database is locked by another process
//! - 78: invalid arguments

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;
use zeroize::Zeroizing;

use super::bolt::FreelistForm;
use super::{
    BackupFileOutcome, DbError, EncryptOptions, EncryptReport, PLAINTEXT_DB_NAME,
    ResetPasswordReport, RotateOptions, RotateReport, VerifyReport,
};

/// Largest key or password file read, in bytes. Docker Swarm secrets are at
/// most 500 KB.
const MAX_INPUT_FILE_SIZE: u64 = 1 << 20;

/// `db` subcommands: offline tools for Portainer's database.
#[derive(Debug, clap::Args)]
pub struct DbArgs {
    /// The tool to run.
    #[command(subcommand)]
    pub command: DbCommand,
}

/// One `db` subcommand.
#[derive(Debug, clap::Subcommand)]
pub enum DbCommand {
    /// Check that every value of an encrypted database opens with a key.
    Verify(VerifyArgs),
    /// Re-encrypt every value under a new key (Portainer must be stopped).
    Rotate(RotateArgs),
    /// Encrypt a plaintext portainer.db into portainer.edb (Portainer must be stopped).
    Encrypt(EncryptArgs),
    /// Set a user's password, by default user 1 (Portainer must be stopped).
    ResetAdminPassword(ResetAdminPasswordArgs),
}

/// Arguments of `db verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Database file, or data directory containing portainer.edb.
    #[arg(long, value_name = "PATH", default_value = "/data")]
    pub db: PathBuf,
    /// Key file; its exact bytes are the key, trailing newline included.
    #[arg(long, value_name = "PATH")]
    pub key_file: PathBuf,
}

/// Arguments of `db rotate`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Database file, or data directory containing portainer.edb.
    #[arg(long, value_name = "PATH", default_value = "/data")]
    pub db: PathBuf,
    /// Key file the database is encrypted with now (exact bytes).
    #[arg(long, value_name = "PATH")]
    pub old_key_file: PathBuf,
    /// Key file to encrypt with (exact bytes; must not be empty).
    #[arg(long, value_name = "PATH")]
    pub new_key_file: PathBuf,
    /// Keep a copy of the database as it was, still under the old key, at PATH.
    /// An existing file at PATH is replaced; PATH must not be the database,
    /// backups/portainer.edb.bak or a key file.
    #[arg(long, value_name = "PATH")]
    pub backup: Option<PathBuf>,
}

/// Arguments of `db encrypt`.
#[derive(Debug, clap::Args)]
pub struct EncryptArgs {
    /// Plaintext database file, or data directory containing portainer.db.
    #[arg(long, value_name = "PATH", default_value = "/data")]
    pub db: PathBuf,
    /// Key file to encrypt with (exact bytes; must not be empty).
    #[arg(long, value_name = "PATH")]
    pub key_file: PathBuf,
    /// Delete portainer.db after portainer.edb is written and verified.
    #[arg(long)]
    pub remove_plaintext: bool,
}

/// Arguments of `db reset-admin-password`.
#[derive(Debug, clap::Args)]
pub struct ResetAdminPasswordArgs {
    /// Database file, or data directory (portainer.edb with --key-file, else portainer.db).
    #[arg(long, value_name = "PATH", default_value = "/data")]
    pub db: PathBuf,
    /// Key file of an encrypted database (exact bytes).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Id of the user whose password is set.
    #[arg(long, value_name = "ID", default_value_t = 1)]
    pub user_id: u64,
    /// File with the new plaintext password; one trailing newline is removed,
    /// as Portainer does for --admin-password-file. At most 72 bytes.
    #[arg(long, value_name = "PATH")]
    pub password_file: PathBuf,
}

/// A failed `db` command.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DbCommandError {
    /// A key or password file does not exist.
    #[error("file {} not found", path.display())]
    InputNotFound {
        /// The file.
        path: PathBuf,
    },
    /// A key or password file could not be read.
    #[error("failed to read {}", path.display())]
    InputUnreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A key or password file is implausibly large.
    #[error("{} is larger than 1 MiB; pass the key or password file itself", path.display())]
    InputTooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The new password would break logins.
    #[error("invalid password in {}: {reason}", path.display())]
    InvalidPassword {
        /// The password file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The key does not open the database, but the key with one trailing
    /// newline added or removed does.
    #[error(
        "the key does not open {}, but the same key {} does; {}",
        path.display(),
        if *newline_added { "followed by one newline" } else { "without its trailing newline" },
        if *newline_added {
            "add the newline to the key file, or set newline = \"ensure-one\" in the agent's configuration"
        } else {
            "remove the newline from the key file, or set newline = \"strip-one\" in the agent's configuration"
        }
    )]
    NewlineMismatch {
        /// The database file or directory.
        path: PathBuf,
        /// True when the key that opens it has a newline the given key lacks.
        newline_added: bool,
    },
    /// The database to verify is not encrypted.
    #[error(
        "{} is a plaintext database, so no key opens it; encrypt it with \
         `portainer-key-agent db encrypt` before Portainer starts with a key",
        path.display()
    )]
    Plaintext {
        /// The plaintext database file or directory.
        path: PathBuf,
    },
    /// The database operation failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The report could not be written to standard output.
    #[error("failed to write to standard output")]
    Output(#[source] io::Error),
}

impl DbCommandError {
    /// Returns the process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            DbCommandError::InputNotFound { .. } | DbCommandError::InputUnreadable { .. } => 66,
            DbCommandError::InputTooLarge { .. } => 78,
            DbCommandError::InvalidPassword { .. } => 65,
            DbCommandError::NewlineMismatch { .. } | DbCommandError::Plaintext { .. } => 1,
            DbCommandError::Db(error) => db_exit_code(error),
            DbCommandError::Output(_) => 74,
        }
    }
}

fn db_exit_code(error: &DbError) -> u8 {
    match error {
        DbError::KeyMismatch { .. } => 1,
        DbError::Corrupt { .. }
        | DbError::ValuesDoNotAuthenticate { .. }
        | DbError::Unwritable { .. }
        | DbError::MissingBucket { .. }
        | DbError::LostTransaction { .. }
        | DbError::InvalidUserRecord { .. } => 65,
        DbError::NotFound { .. }
        | DbError::NotAFile { .. }
        | DbError::Read { .. }
        | DbError::UserNotFound { .. } => 66,
        DbError::Write { .. }
        | DbError::AlreadyExists { .. }
        | DbError::SymbolicLink { .. }
        | DbError::CopyVerificationFailed { .. } => 73,
        DbError::Locked { .. } | DbError::Replaced { .. } => 75,
        DbError::InvalidInput { .. } => 65,
    }
}

/// Explains why a key does not open a database, where the cause is a common
/// one: the database is plaintext ([`DbCommandError::Plaintext`]), or the key
/// with one trailing newline added or removed opens it
/// ([`DbCommandError::NewlineMismatch`]). Other errors pass through.
fn explain_verify_failure(error: DbError, db: &Path, key: &[u8]) -> DbCommandError {
    if let DbError::NotFound { path } = &error {
        let plaintext = super::files::parent_dir(path).join(PLAINTEXT_DB_NAME);
        if plaintext.is_file() {
            return DbCommandError::Plaintext { path: plaintext };
        }
    }
    if !error.is_key_mismatch() {
        return error.into();
    }
    if super::is_plaintext(db) {
        return DbCommandError::Plaintext {
            path: db.to_path_buf(),
        };
    }
    let newline_added = !key.ends_with(b"\n");
    let mut variant = Zeroizing::new(key.to_vec());
    if newline_added {
        variant.push(b'\n');
    } else {
        variant.pop();
    }
    if variant.is_empty() || super::verify(db, &variant).is_err() {
        return error.into();
    }
    DbCommandError::NewlineMismatch {
        path: db.to_path_buf(),
        newline_added,
    }
}

/// Rejects a backup path that is one of the key files, which the copy of the
/// database would overwrite.
fn reject_key_file_as_backup(backup: &Path, key_files: &[&Path]) -> Result<(), DbError> {
    if super::rotate::names_any_of(backup, key_files) {
        return Err(DbError::InvalidInput {
            reason: "the backup path is a key file, which the copy of the database would \
                     overwrite; choose another path",
        });
    }
    Ok(())
}

/// Runs a `db` subcommand and prints its report on standard output.
pub fn run(args: DbArgs) -> Result<(), DbCommandError> {
    run_with_output(args, &mut io::stdout().lock())
}

/// Runs a `db` subcommand and writes its report to `out`.
pub fn run_with_output(args: DbArgs, out: &mut dyn Write) -> Result<(), DbCommandError> {
    match args.command {
        DbCommand::Verify(args) => {
            let key = read_input_file(&args.key_file)?;
            let report = super::verify(&args.db, &key)
                .map_err(|error| explain_verify_failure(error, &args.db, &key))?;
            print_verify(out, &report).map_err(DbCommandError::Output)
        }
        DbCommand::Rotate(args) => {
            let old_key = read_input_file(&args.old_key_file)?;
            let new_key = read_input_file(&args.new_key_file)?;
            if let Some(backup) = &args.backup {
                reject_key_file_as_backup(backup, &[&args.old_key_file, &args.new_key_file])?;
            }
            let options = RotateOptions {
                backup: args.backup,
                on_step: None,
            };
            let report = super::rotate(&args.db, &old_key, &new_key, &options)?;
            print_rotate(out, &report).map_err(DbCommandError::Output)
        }
        DbCommand::Encrypt(args) => {
            let key = read_input_file(&args.key_file)?;
            let options = EncryptOptions {
                remove_plaintext: args.remove_plaintext,
            };
            let report = super::encrypt(&args.db, &key, &options)?;
            print_encrypt(out, &report).map_err(DbCommandError::Output)
        }
        DbCommand::ResetAdminPassword(args) => run_reset(args, out),
    }
}

fn run_reset(args: ResetAdminPasswordArgs, out: &mut dyn Write) -> Result<(), DbCommandError> {
    let key = args.key_file.as_deref().map(read_input_file).transpose()?;
    let mut password = read_input_file(&args.password_file)?;
    let trimmed = password.strip_suffix(b"\n").unwrap_or(&password);
    if crate::value::looks_like_bcrypt(trimmed) {
        return Err(DbCommandError::InvalidPassword {
            path: args.password_file.clone(),
            reason: "the file holds a bcrypt hash, but this command hashes the password itself; \
                     put the plaintext password in the file"
                .to_owned(),
        });
    }
    crate::value::check_kind(crate::config::SecretKind::AdminPassword, &password).map_err(
        |reason| DbCommandError::InvalidPassword {
            path: args.password_file.clone(),
            reason,
        },
    )?;
    if password.last() == Some(&b'\n') {
        password.pop();
    }
    let report = super::reset_admin_password(
        &args.db,
        key.as_deref().map(Vec::as_slice),
        args.user_id,
        &password,
    )?;
    print_reset(out, &report).map_err(DbCommandError::Output)
}

/// Reads a key or password file's exact bytes into a zeroizing buffer.
fn read_input_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, DbCommandError> {
    let unreadable = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => DbCommandError::InputNotFound {
            path: path.to_path_buf(),
        },
        _ => DbCommandError::InputUnreadable {
            path: path.to_path_buf(),
            source,
        },
    };
    let file = fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_INPUT_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_INPUT_FILE_SIZE {
        return Err(DbCommandError::InputTooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

fn print_verify(out: &mut dyn Write, report: &VerifyReport) -> io::Result<()> {
    writeln!(out, "the key opens {}", report.path.display())?;
    match &report.schema_version {
        Some(version) => writeln!(
            out,
            "schema version: {} (key {})",
            version.version, version.key
        )?,
        None => writeln!(out, "schema version: not found")?,
    }
    let freelist = match report.freelist {
        FreelistForm::Persisted { page, free_pages } => {
            format!("persisted on page {page}, {free_pages} free pages")
        }
        FreelistForm::NotPersisted => "not persisted".to_owned(),
    };
    writeln!(
        out,
        "page size: {} bytes, txid: {}, freelist: {freelist}",
        report.page_size, report.txid
    )?;
    writeln!(
        out,
        "encrypted values: {}, unencrypted \"false\" values: {}",
        report.encrypted_values, report.pass_through_values
    )?;
    if report.encrypted_values == 0 {
        writeln!(
            out,
            "warning: the database has no encrypted values, so any key opens it"
        )?;
    }
    if let Some(skipped) = report.skipped_newer_meta {
        writeln!(
            out,
            "warning: meta page {} (txid {}) {}, so the file lost its newest transaction and \
             bbolt may fail to open it; the tools that rewrite the file stop on it",
            skipped.page, skipped.txid, skipped.reason
        )?;
    }
    for bucket in &report.buckets {
        writeln!(
            out,
            "bucket {:?}: {} values, sequence {}",
            bucket.name, bucket.values, bucket.sequence
        )?;
    }
    Ok(())
}

fn print_rotate(out: &mut dyn Write, report: &RotateReport) -> io::Result<()> {
    writeln!(out, "{}: {}", report.database.display(), report.outcome)?;
    if let Some(backup) = &report.backup {
        writeln!(out, "copy under the old key kept at {}", backup.display())?;
    }
    let backup_file = report.backup_file.display();
    match &report.backup_file_outcome {
        BackupFileOutcome::Absent => writeln!(out, "{backup_file}: absent"),
        BackupFileOutcome::Done(outcome) => writeln!(out, "{backup_file}: {outcome}"),
        BackupFileOutcome::Skipped { reason } => writeln!(
            out,
            "warning: {backup_file} left unchanged ({reason}); it may hold data under another key"
        ),
    }
}

fn print_encrypt(out: &mut dyn Write, report: &EncryptReport) -> io::Result<()> {
    writeln!(
        out,
        "encrypted {} into {}: {} buckets, {} values",
        report.source.display(),
        report.target.display(),
        report.buckets,
        report.values
    )?;
    if report.plaintext_removed {
        writeln!(out, "removed {}", report.source.display())
    } else {
        writeln!(
            out,
            "warning: {} still exists; Portainer does not start while both files exist, \
             so remove it once the encrypted database is confirmed",
            report.source.display()
        )
    }
}

fn print_reset(out: &mut dyn Write, report: &ResetPasswordReport) -> io::Result<()> {
    let method = if report.rewritten_in_place {
        "value rewritten in place"
    } else {
        "file rebuilt"
    };
    writeln!(
        out,
        "set the password of user {} in {} ({method})",
        report.user_id,
        report.path.display()
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        db: DbArgs,
    }

    fn parse(args: &[&str]) -> Result<DbArgs, clap::Error> {
        TestCli::try_parse_from(std::iter::once("db").chain(args.iter().copied())).map(|cli| cli.db)
    }

    #[test]
    fn verify_requires_key_file() {
        assert!(parse(&["verify", "--db", "/data"]).is_err());
        let args = parse(&["verify", "--key-file", "/run/secrets/portainer"]).expect("parses");
        let DbCommand::Verify(verify) = args.command else {
            panic!("expected verify");
        };
        assert_eq!(verify.db, PathBuf::from("/data"));
    }

    #[test]
    fn reset_defaults_to_user_one() {
        let args = parse(&["reset-admin-password", "--password-file", "/p"]).expect("parses");
        let DbCommand::ResetAdminPassword(reset) = args.command else {
            panic!("expected reset-admin-password");
        };
        assert_eq!(reset.user_id, 1);
        assert!(reset.key_file.is_none());
    }

    #[test]
    fn missing_key_file_exits_66() {
        let args = parse(&[
            "verify",
            "--db",
            "/nonexistent",
            "--key-file",
            "/nonexistent/key",
        ])
        .expect("parses");
        let error = run_with_output(args, &mut Vec::new()).expect_err("fails");
        assert_eq!(error.exit_code(), 66);
    }

    #[test]
    fn empty_new_key_exits_78() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = dir.path().join("old");
        let new = dir.path().join("new");
        fs::write(&old, b"old").expect("write");
        fs::write(&new, b"").expect("write");
        let args = parse(&[
            "rotate",
            "--db",
            dir.path().to_str().expect("utf-8"),
            "--old-key-file",
            old.to_str().expect("utf-8"),
            "--new-key-file",
            new.to_str().expect("utf-8"),
        ])
        .expect("parses");
        let error = run_with_output(args, &mut Vec::new()).expect_err("fails");
        assert_eq!(error.exit_code(), 65);
    }

    #[test]
    fn missing_database_exits_66() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("key");
        fs::write(&key, b"abc").expect("write");
        let args = parse(&[
            "verify",
            "--db",
            dir.path().to_str().expect("utf-8"),
            "--key-file",
            key.to_str().expect("utf-8"),
        ])
        .expect("parses");
        let error = run_with_output(args, &mut Vec::new()).expect_err("fails");
        assert_eq!(error.exit_code(), 66);
        assert!(error.to_string().contains("portainer.edb"));
    }
}
