//! Assertions shared by the end-to-end tests.

use std::path::Path;

use crate::agent::AgentOutput;
use crate::fs::FileFacts;

/// Expected contents and metadata of a file the agent wrote.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub bytes: &'a [u8],
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl<'a> Expected<'a> {
    /// `bytes` with the agent's default mode 0400, owned by the test process's user.
    pub fn default_owner(bytes: &'a [u8]) -> Self {
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        Self {
            bytes,
            mode: 0o400,
            uid,
            gid,
        }
    }
}

/// Checks bytes, mode and owner of the regular file at `path`, one assert each.
pub fn assert_file(path: &Path, expected: Expected<'_>) {
    let facts =
        FileFacts::read(path).unwrap_or_else(|| panic!("{} was not written", path.display()));
    assert_eq!(
        facts.bytes,
        expected.bytes,
        "bytes of {} differ (got {:?}, expected {:?})",
        path.display(),
        String::from_utf8_lossy(&facts.bytes),
        String::from_utf8_lossy(expected.bytes)
    );
    assert_eq!(
        facts.mode,
        expected.mode,
        "mode of {} is {:o}",
        path.display(),
        facts.mode
    );
    assert_eq!(facts.uid, expected.uid, "owner uid of {}", path.display());
    assert_eq!(facts.gid, expected.gid, "owner gid of {}", path.display());
}

/// Checks that nothing exists at `path`.
pub fn assert_absent(path: &Path) {
    assert!(
        std::fs::symlink_metadata(path).is_err(),
        "{} exists but the agent should not have written it",
        path.display()
    );
}

/// Checks that the agent printed something and that none of `secrets` appears in
/// its stdout or stderr. Each entry is a description and the secret's bytes.
pub fn assert_log_free_of(output: &AgentOutput, secrets: &[(&str, &[u8])]) {
    let log = output.log_bytes();
    assert!(!log.is_empty(), "the agent printed no log at all");
    for (description, secret) in secrets {
        assert!(
            !secret.is_empty(),
            "empty secret for {description}: the check would prove nothing"
        );
        let found = log.windows(secret.len()).any(|window| window == *secret);
        assert!(
            !found,
            "the log contains the {description}:\n{}",
            output.log()
        );
    }
}
