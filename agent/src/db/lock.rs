//! The `flock` bbolt takes on its database file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, OFlags, flock};
use rustix::io::Errno;

use super::error::DbError;
use super::mapped::Mapped;

/// Lock mode: bbolt takes an exclusive lock for read-write opens and a shared
/// one for read-only opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockMode {
    Shared,
    Exclusive,
}

/// An open database file with its lock held until drop.
#[derive(Debug)]
pub(crate) struct LockedFile {
    file: File,
    path: PathBuf,
}

impl LockedFile {
    /// Opens `path` and takes the lock without waiting.
    ///
    /// An exclusive open, which tools take to replace the file, rejects a
    /// symbolic link: the rename would replace the link, not the file.
    pub(crate) fn open(path: &Path, mode: LockMode) -> Result<LockedFile, DbError> {
        let mut options = OpenOptions::new();
        options.read(true);
        if mode == LockMode::Exclusive {
            options.custom_flags(OFlags::NOFOLLOW.bits() as i32);
        }
        let file = options.open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => DbError::NotFound {
                path: path.to_path_buf(),
            },
            _ if source.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
                DbError::SymbolicLink {
                    path: path.to_path_buf(),
                }
            }
            _ => DbError::Read {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let metadata = file.metadata().map_err(|source| DbError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if !metadata.is_file() {
            return Err(DbError::NotAFile {
                path: path.to_path_buf(),
            });
        }

        let operation = match mode {
            LockMode::Shared => FlockOperation::NonBlockingLockShared,
            LockMode::Exclusive => FlockOperation::NonBlockingLockExclusive,
        };
        match flock(&file, operation) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                return Err(DbError::Locked {
                    path: path.to_path_buf(),
                });
            }
            Err(errno) => {
                return Err(DbError::Read {
                    path: path.to_path_buf(),
                    source: errno.into(),
                });
            }
        }
        Ok(LockedFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Maps the whole file read-only. The map borrows `self`, so the lock is
    /// held for as long as the map is in use.
    pub(crate) fn map(&self) -> Result<Mapped<'_>, DbError> {
        Mapped::new(&self.file).map_err(|source| DbError::Read {
            path: self.path.clone(),
            source,
        })
    }

    /// Reads the whole file from its start.
    pub(crate) fn read_all(&self) -> Result<Vec<u8>, DbError> {
        let read_error = |source| DbError::Read {
            path: self.path.clone(),
            source,
        };
        let len = self.file.metadata().map_err(read_error)?.len();
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        (&self.file).seek(SeekFrom::Start(0)).map_err(read_error)?;
        (&self.file).read_to_end(&mut data).map_err(read_error)?;
        Ok(data)
    }

    /// Fails with [`DbError::Replaced`] unless `self.path` still names the
    /// locked file, so a result is never renamed over a file swapped in
    /// while the tool ran.
    pub(crate) fn check_still_at_path(&self) -> Result<(), DbError> {
        let locked = self.metadata()?;
        let current = std::fs::symlink_metadata(&self.path).map_err(|source| DbError::Read {
            path: self.path.clone(),
            source,
        })?;
        if (current.dev(), current.ino()) != (locked.dev(), locked.ino()) {
            return Err(DbError::Replaced {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    pub(crate) fn metadata(&self) -> Result<std::fs::Metadata, DbError> {
        self.file.metadata().map_err(|source| DbError::Read {
            path: self.path.clone(),
            source,
        })
    }
}
