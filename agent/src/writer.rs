//! Atomic, byte-exact file placement on a RAM filesystem.
//!
//! A file is written to a temporary name in the target's directory, created with
//! `O_EXCL|O_NOFOLLOW`, given its final mode and owner before the first byte, fsynced,
//! renamed over the target, and the directory is fsynced. A failure removes the
//! temporary file, so the target is either the old file, the new file, or absent.
//! A process killed between create and rename leaves a temporary file, which the
//! next run removes with [`remove_stale_temporaries`].

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::config::Owner;

/// `statfs` magic of tmpfs (linux/magic.h).
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `statfs` magic of ramfs (linux/magic.h).
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Marks temporary names so stale ones can be found and removed.
const TEMPORARY_MARK: &str = ".pka-";

/// Target path, permissions and medium rules of one file.
#[derive(Clone, Debug)]
pub struct Placement {
    pub target: PathBuf,
    pub mode: u32,
    pub owner: Option<Owner>,
    /// Accepts a directory that is not tmpfs or ramfs.
    pub allow_disk: bool,
}

/// A file that cannot be written safely. Carries no secret.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("target directory {directory:?} is not usable: {reason}; {hint}")]
    Directory {
        directory: PathBuf,
        reason: String,
        hint: String,
    },

    #[error("target {target:?} {reason}; {hint}")]
    Target {
        target: PathBuf,
        reason: String,
        hint: String,
    },

    #[error("failed to {step} for {target:?}: {errno}; {hint}")]
    Io {
        step: &'static str,
        target: PathBuf,
        errno: Errno,
        hint: String,
    },
}

/// Kind of filesystem under a target directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Medium {
    Memory,
    Disk,
}

impl Placement {
    fn parts(&self) -> (&Path, &std::ffi::OsStr) {
        let directory = self.target.parent().unwrap_or(Path::new("/"));
        let name = self.target.file_name().unwrap_or_default();
        (directory, name)
    }

    /// Returns the directory the target is written in.
    pub fn directory(&self) -> &Path {
        self.parts().0
    }

    /// Checks the directory and the current target without writing anything.
    pub fn check(&self) -> Result<Medium, WriteError> {
        let (directory, name) = self.parts();
        let dir = open_directory(directory)?;
        let medium = check_medium(&dir, directory, self.allow_disk)?;
        check_existing(&dir, name, &self.target)?;
        Ok(medium)
    }

    /// Replaces the target with `bytes` atomically.
    pub fn write(&self, bytes: &[u8]) -> Result<Medium, WriteError> {
        self.stage(bytes)?.commit()
    }

    /// Writes `bytes` to a synced temporary file beside the target without
    /// replacing it yet. Dropping the result without [`Staged::commit`] removes
    /// the temporary file, so several files can be staged before any is replaced.
    pub fn stage(&self, bytes: &[u8]) -> Result<Staged, WriteError> {
        let (directory, name) = self.parts();
        let dir = open_directory(directory)?;
        let medium = check_medium(&dir, directory, self.allow_disk)?;
        check_existing(&dir, name, &self.target)?;
        if medium == Medium::Disk {
            warn_disk(directory);
        }

        let temporary = temporary_name(name);
        let file = create_temporary(&dir, &temporary, &self.target)?;
        let staged = Staged {
            dir,
            temporary,
            name: name.to_owned(),
            target: self.target.clone(),
            medium,
            committed: false,
        };
        self.fill(&file, bytes)?;
        Ok(staged)
    }

    /// Sets mode and owner on the descriptor, then writes and syncs the bytes.
    fn fill(&self, file: &OwnedFd, bytes: &[u8]) -> Result<(), WriteError> {
        rustix::fs::fchmod(file, Mode::from_raw_mode(self.mode))
            .map_err(|errno| io_error("set the file mode", &self.target, errno))?;
        if let Some(owner) = self.owner {
            let uid = rustix::fs::Uid::from_raw(owner.uid);
            let gid = rustix::fs::Gid::from_raw(owner.gid);
            rustix::fs::fchown(file, Some(uid), Some(gid)).map_err(|errno| WriteError::Io {
                step: "set the file owner",
                target: self.target.clone(),
                errno,
                hint: format!(
                    "changing the owner to {}:{} needs root or CAP_CHOWN; run the agent as root with only CAP_CHOWN, or remove owner",
                    owner.uid, owner.gid
                ),
            })?;
        }

        let mut remaining = bytes;
        while !remaining.is_empty() {
            match rustix::io::write(file, remaining) {
                Ok(0) => return Err(io_error("write the file", &self.target, Errno::IO)),
                Ok(count) => remaining = &remaining[count..],
                Err(Errno::INTR) => {}
                Err(errno) => return Err(io_error("write the file", &self.target, errno)),
            }
        }
        rustix::fs::fsync(file).map_err(|errno| io_error("fsync the file", &self.target, errno))
    }
}

/// A written and synced temporary file waiting to replace its target.
#[derive(Debug)]
pub struct Staged {
    dir: OwnedFd,
    temporary: PathBuf,
    name: std::ffi::OsString,
    target: PathBuf,
    medium: Medium,
    committed: bool,
}

impl Staged {
    /// Renames the temporary file over the target and syncs the directory.
    pub fn commit(mut self) -> Result<Medium, WriteError> {
        rename_into_place(&self.dir, &self.temporary, &self.name, &self.target)?;
        self.committed = true;
        rustix::fs::fsync(&self.dir)
            .map_err(|errno| io_error("fsync the directory", &self.target, errno))?;
        Ok(self.medium)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = rustix::fs::unlinkat(&self.dir, &self.temporary, AtFlags::empty());
        }
    }
}

/// Removes temporary files that an interrupted run left beside `target`.
pub fn remove_stale_temporaries(target: &Path) -> usize {
    let (Some(directory), Some(name)) = (target.parent(), target.file_name()) else {
        return 0;
    };
    let prefix = format!(".{}{TEMPORARY_MARK}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(directory) else {
        return 0;
    };

    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if file_name.starts_with(&prefix)
            && file_name.ends_with(".tmp")
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

fn io_error(step: &'static str, target: &Path, errno: Errno) -> WriteError {
    let hint = match errno {
        Errno::ACCESS | Errno::PERM => "run the agent as a user that can write to the directory",
        Errno::NOSPC => "the tmpfs is full; raise its size limit",
        Errno::ROFS => "the filesystem is read-only; mount a writable tmpfs there",
        _ => "check the directory and the filesystem",
    };
    WriteError::Io {
        step,
        target: target.to_path_buf(),
        errno,
        hint: hint.to_owned(),
    }
}

fn open_directory(directory: &Path) -> Result<OwnedFd, WriteError> {
    rustix::fs::open(directory, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(|errno| {
        let hint = if errno == Errno::NOENT {
            "create it, or mount an emptyDir with medium: Memory (Kubernetes) or a tmpfs (Docker) there"
        } else {
            "check that it is a directory the agent can open"
        };
        WriteError::Directory {
            directory: directory.to_path_buf(),
            reason: errno.to_string(),
            hint: hint.to_owned(),
        }
    })
}

fn check_medium(dir: &OwnedFd, directory: &Path, allow_disk: bool) -> Result<Medium, WriteError> {
    let stats = rustix::fs::fstatfs(dir).map_err(|errno| WriteError::Directory {
        directory: directory.to_path_buf(),
        reason: format!("statfs failed: {errno}"),
        hint: "check the mount".to_owned(),
    })?;
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's integer type differs between targets"
    )]
    let magic = stats.f_type as i64;
    if magic == TMPFS_MAGIC || magic == RAMFS_MAGIC {
        return Ok(Medium::Memory);
    }
    if allow_disk {
        return Ok(Medium::Disk);
    }
    Err(WriteError::Directory {
        directory: directory.to_path_buf(),
        reason: format!("it is not on tmpfs or ramfs (filesystem magic {magic:#x}), so the secret would reach a disk"),
        hint: "mount an emptyDir with medium: Memory or a tmpfs there, or set allow_disk = true to accept a disk".to_owned(),
    })
}

/// Logs that a write goes to a disk, which `allow_disk` permits.
pub fn warn_disk(directory: &Path) {
    tracing::warn!(directory = ?directory, "target directory is not tmpfs or ramfs; the secret will reach a disk because allow_disk is set");
}

fn check_existing(dir: &OwnedFd, name: &std::ffi::OsStr, target: &Path) -> Result<(), WriteError> {
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Ok(()),
        Err(errno) => return Err(io_error("inspect the current file", target, errno)),
    };
    let (reason, hint) = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => return Ok(()),
        FileType::Symlink => (
            "is a symbolic link",
            "remove the link; the agent never writes through links",
        ),
        FileType::Directory => (
            "is a directory",
            "remove it; Docker creates a directory when a bind-mounted file is missing, and Kubernetes when a Secret is mounted as a directory. Portainer would then run unencrypted",
        ),
        _ => ("is not a regular file", "remove it"),
    };
    Err(WriteError::Target {
        target: target.to_path_buf(),
        reason: reason.to_owned(),
        hint: hint.to_owned(),
    })
}

fn temporary_name(name: &std::ffi::OsStr) -> PathBuf {
    let random: u64 = rand::random();
    PathBuf::from(format!(
        ".{}{TEMPORARY_MARK}{}-{random:016x}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ))
}

fn create_temporary(dir: &OwnedFd, temporary: &Path, target: &Path) -> Result<OwnedFd, WriteError> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, temporary, flags, Mode::from_raw_mode(0o600))
        .map_err(|errno| io_error("create a temporary file", target, errno))
}

fn rename_into_place(
    dir: &OwnedFd,
    temporary: &Path,
    name: &std::ffi::OsStr,
    target: &Path,
) -> Result<(), WriteError> {
    // The target is checked again right before the rename: a directory created in the
    // meantime would make rename fail, and a symbolic link would be replaced, not followed.
    check_existing(dir, name, target)?;
    rustix::fs::renameat(dir, temporary, dir, name)
        .map_err(|errno| io_error("rename the file into place", target, errno))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    /// Creates a directory under the build folder, which is on disk unlike /tmp on some hosts.
    fn disk_tempdir() -> std::io::Result<tempfile::TempDir> {
        tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"))
    }

    fn placement(dir: &Path, allow_disk: bool) -> Placement {
        Placement {
            target: dir.join("portainer"),
            mode: 0o440,
            owner: None,
            allow_disk,
        }
    }

    #[test]
    fn disk_directory_is_rejected_by_default() {
        let dir = disk_tempdir().expect("temp dir");

        let error = placement(dir.path(), false)
            .write(b"key")
            .expect_err("disk");

        assert!(
            error.to_string().contains("not on tmpfs or ramfs"),
            "{error}"
        );
        assert!(!dir.path().join("portainer").exists());
    }

    #[test]
    fn allow_disk_writes_exact_bytes_and_mode() {
        let dir = disk_tempdir().expect("temp dir");
        let spot = placement(dir.path(), true);

        spot.write(b"\x00key\xff\n").expect("write");

        let metadata = std::fs::metadata(&spot.target).expect("metadata");
        assert_eq!(std::fs::read(&spot.target).expect("read"), b"\x00key\xff\n");
        assert_eq!(metadata.permissions().mode() & 0o777, 0o440);
        assert_eq!(metadata.uid(), rustix::process::getuid().as_raw());
    }

    #[test]
    fn symlink_target_is_rejected_and_kept() {
        let dir = disk_tempdir().expect("temp dir");
        let spot = placement(dir.path(), true);
        std::os::unix::fs::symlink("/etc/hostname", &spot.target).expect("symlink");

        let error = spot.write(b"key").expect_err("symlink");

        assert!(error.to_string().contains("symbolic link"), "{error}");
        assert!(
            std::fs::symlink_metadata(&spot.target)
                .expect("link")
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn directory_target_is_rejected() {
        let dir = disk_tempdir().expect("temp dir");
        let spot = placement(dir.path(), true);
        std::fs::create_dir(&spot.target).expect("mkdir");

        let error = spot.write(b"key").expect_err("directory");

        assert!(error.to_string().contains("is a directory"), "{error}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    #[test]
    fn stale_temporaries_are_removed() {
        let dir = disk_tempdir().expect("temp dir");
        let spot = placement(dir.path(), true);
        std::fs::write(dir.path().join(".portainer.pka-1-00.tmp"), b"partial").expect("stale");
        std::fs::write(dir.path().join("other"), b"keep").expect("other");

        let removed = remove_stale_temporaries(&spot.target);

        assert_eq!(removed, 1);
        assert!(dir.path().join("other").exists());
    }
}
