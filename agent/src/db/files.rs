//! Crash-safe file replacement: write a temporary copy in the same directory,
//! fsync it, and rename it into place, then fsync the directory.

use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::DbError;
use super::mapped::Mapped;

/// Name of the temporary copy of `target` for one operation, e.g.
/// `portainer.edb.rotate-tmp`. The fixed name lets the next run find and
/// remove a copy left behind by a killed process.
pub(crate) fn temp_path(target: &Path, operation: &str) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{operation}-tmp"));
    target.with_file_name(name)
}

/// Removes a temporary copy left behind by an interrupted run.
pub(crate) fn remove_stale(path: &Path) -> Result<(), DbError> {
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed temporary copy left by an interrupted run");
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(write_error(path, source)),
    }
}

fn write_error(path: &Path, source: io::Error) -> DbError {
    DbError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Returns the directory that contains `path`.
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Fsyncs a directory so a rename or unlink inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), DbError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| write_error(dir, source))
}

/// A temporary file that is removed on drop unless it was moved into place.
#[derive(Debug)]
pub(crate) struct StagedFile {
    path: PathBuf,
    file: Option<File>,
}

impl StagedFile {
    /// Creates `path` (which must not exist) with the mode and owner of
    /// `like`, before any byte is written.
    pub(crate) fn create(path: PathBuf, like: &Metadata) -> Result<StagedFile, DbError> {
        let mode = like.mode() & 0o7777;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|source| write_error(&path, source))?;
        let staged = StagedFile {
            path,
            file: Some(file),
        };
        staged.copy_owner_and_mode(like, mode)?;
        Ok(staged)
    }

    fn copy_owner_and_mode(&self, like: &Metadata, mode: u32) -> Result<(), DbError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let error = |source| write_error(&self.path, source);
        let own = file.metadata().map_err(error)?;
        if own.uid() != like.uid() || own.gid() != like.gid() {
            std::os::unix::fs::fchown(file, Some(like.uid()), Some(like.gid())).map_err(error)?;
        }
        // The umask may have cleared bits at creation.
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(error)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `data` and fsyncs the file.
    pub(crate) fn write_and_sync(&mut self, data: &[u8]) -> Result<(), DbError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(data)
            .and_then(|()| file.sync_all())
            .map_err(|source| write_error(&self.path, source))
    }

    /// Writes `data` at byte `offset` without moving the file position, so
    /// several threads can fill different parts of the file.
    pub(crate) fn write_at(&self, data: &[u8], offset: u64) -> Result<(), DbError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        file.write_all_at(data, offset)
            .map_err(|source| write_error(&self.path, source))
    }

    /// Reads `buffer.len()` bytes at byte `offset` back from the file (the
    /// page cache, in practice).
    pub(crate) fn read_at(&self, buffer: &mut [u8], offset: u64) -> Result<(), DbError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        file.read_exact_at(buffer, offset)
            .map_err(|source| DbError::Read {
                path: self.path.clone(),
                source,
            })
    }

    /// Fsyncs the file.
    pub(crate) fn sync(&self) -> Result<(), DbError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        file.sync_all()
            .map_err(|source| write_error(&self.path, source))
    }

    /// Maps what was written, read-only, through the handle that wrote it.
    pub(crate) fn map(&self) -> Result<Mapped<'_>, DbError> {
        let read_error = |source| DbError::Read {
            path: self.path.clone(),
            source,
        };
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| read_error(io::ErrorKind::NotFound.into()))?;
        Mapped::new(file).map_err(read_error)
    }

    /// Renames the file over `target` and fsyncs the directory.
    pub(crate) fn replace(mut self, target: &Path) -> Result<(), DbError> {
        self.file = None;
        fs::rename(&self.path, target).map_err(|source| write_error(target, source))?;
        self.path = PathBuf::new();
        sync_dir(parent_dir(target))
    }

    /// Moves the file to `target`, failing if `target` exists, and fsyncs the
    /// directory. A hard link makes the no-replace move atomic; a copy left
    /// behind by a crash between link and unlink is removed by the next run.
    pub(crate) fn create_as(mut self, target: &Path) -> Result<(), DbError> {
        self.file = None;
        fs::hard_link(&self.path, target).map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => DbError::AlreadyExists {
                path: target.to_path_buf(),
            },
            _ => write_error(target, source),
        })?;
        let staged = std::mem::take(&mut self.path);
        fs::remove_file(&staged).map_err(|source| write_error(&staged, source))?;
        sync_dir(parent_dir(target))
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        if let Err(error) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "failed to remove temporary copy");
        }
    }
}
