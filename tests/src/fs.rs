//! Target directories for the agent: a fresh tmpfs, or a disk-backed directory.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::paths;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// A tmpfs mounted on a new temporary directory, unmounted on drop.
///
/// Mounting needs root (or CAP_SYS_ADMIN); CI and the test machines run as root.
#[derive(Debug)]
pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts an 8 MiB tmpfs with mode 0755.
    ///
    /// # Panics
    /// When the mount fails, for example when the tests do not run as root.
    pub fn mount() -> Self {
        let dir = TempDir::new().expect("temporary directory");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mounting a tmpfs on {} failed (the tests must run as root): {}",
            dir.path().display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path()/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(self.dir.path()).status();
        if !matches!(unmounted, Ok(status) if status.success()) {
            // A killed agent can still hold a file open for a moment: detach instead.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// A directory on a disk-backed filesystem (never tmpfs or ramfs), removed on drop.
#[derive(Debug)]
pub struct DiskDir {
    dir: TempDir,
}

impl DiskDir {
    /// Creates a directory under `<repo>/target/test-disk`.
    ///
    /// # Panics
    /// When that filesystem is a tmpfs or ramfs, because tests that need a disk
    /// would then prove nothing.
    pub fn new() -> Self {
        let parent = paths::repo_root().join("target/test-disk");
        std::fs::create_dir_all(&parent).expect("create target/test-disk");
        let dir = TempDir::new_in(&parent).expect("temporary directory");
        let kind = filesystem_magic(dir.path());
        assert!(
            kind != TMPFS_MAGIC && kind != RAMFS_MAGIC,
            "{} is on a memory filesystem (magic {kind:#x}); disk-backed tests need a disk",
            dir.path().display()
        );
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for DiskDir {
    fn default() -> Self {
        Self::new()
    }
}

/// `statfs` filesystem type of `path`.
pub fn filesystem_magic(path: &Path) -> i64 {
    let stat = rustix::fs::statfs(path).expect("statfs");
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let kind = stat.f_type as i64;
    kind
}

/// Contents and metadata of a regular file, read without following a symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    pub bytes: Vec<u8>,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl FileFacts {
    /// Reads `path`, or returns None when nothing exists there.
    ///
    /// # Panics
    /// When `path` exists but is not a regular file.
    pub fn read(path: &Path) -> Option<Self> {
        let metadata = match std::fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => panic!("stat {}: {error}", path.display()),
        };
        assert!(
            metadata.is_file(),
            "{} is not a regular file: {:?}",
            path.display(),
            metadata.file_type()
        );
        let bytes =
            std::fs::read(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
        Some(Self {
            bytes,
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
        })
    }
}

/// Names in `dir` other than `expected`, such as temporary files left behind.
pub fn other_entries(dir: &Path, expected: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("list {}: {error}", dir.display()))
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| !expected.contains(&name.as_str()))
        .collect();
    names.sort();
    names
}
