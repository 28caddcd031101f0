//! Target-file safety, crash atomicity and deadlines of `fetch`, mostly with the
//! file store so that each run is fast and deterministic.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::config::{secret, vault_token_file_store};
use integration_tests::fs::FileFacts;
use integration_tests::process::free_port;
use integration_tests::{
    Agent, AgentOutput, DiskDir, Expected, Tmpfs, assert_absent, assert_file, assert_log_free_of,
    write_config,
};
use tempfile::TempDir;

/// A file store whose source files live on disk in a temporary directory.
struct Files {
    sources: TempDir,
    tmpfs: Tmpfs,
}

impl Files {
    fn new() -> Self {
        Self {
            sources: TempDir::new().expect("temporary directory"),
            tmpfs: Tmpfs::mount(),
        }
    }

    fn source(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.sources.path().join(name);
        std::fs::write(&path, bytes).expect("write source file");
        path
    }

    fn config(&self, target: &Path, source: &Path, extra: &str) -> PathBuf {
        let entry = secret(
            "db",
            "encryption-key",
            "local",
            &source.display().to_string(),
            target,
            extra,
        );
        let toml = format!("deadline_seconds = 10\n[stores.local]\ntype = \"file\"\n\n{entry}");
        write_config(self.sources.path(), &toml)
    }

    fn fetch(&self, target: &Path, source: &Path, extra: &str) -> AgentOutput {
        Agent::fetch(&self.config(target, source, extra))
            .trace()
            .run()
    }
}

#[test]
fn file_store_non_utf8_is_byte_exact() {
    let files = Files::new();
    let key: &[u8] = b"\xff\xfe\x00pka-file\x80\n";
    let source = files.source("key", key);
    let target = files.tmpfs.join("portainer");

    let output = files.fetch(&target, &source, "");

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(key));
    assert_log_free_of(&output, &[("secret value", key)]);
}

#[test]
fn mode_and_owner_are_applied() {
    let files = Files::new();
    let source = files.source("key", b"pka-owned");
    let target = files.tmpfs.join("portainer");

    let output = files.fetch(&target, &source, "mode = \"0440\"\nowner = \"1000:2000\"");

    output.assert_exit(0);
    assert_file(
        &target,
        Expected {
            bytes: b"pka-owned",
            mode: 0o440,
            uid: 1000,
            gid: 2000,
        },
    );
}

#[test]
fn existing_file_is_replaced() {
    let files = Files::new();
    let source = files.source("key", b"pka-new");
    let target = files.tmpfs.join("portainer");
    std::fs::write(&target, b"pka-old").expect("write old key");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let output = files.fetch(&target, &source, "");

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-new"));
    assert_eq!(
        integration_tests::fs::other_entries(files.tmpfs.path(), &["portainer"]),
        Vec::<String>::new()
    );
}

#[test]
fn symlink_at_target_exits_73() {
    let files = Files::new();
    let source = files.source("key", b"pka-symlink");
    let pointee = files.tmpfs.join("elsewhere");
    std::fs::write(&pointee, b"untouched").expect("write pointee");
    let target = files.tmpfs.join("portainer");
    std::os::unix::fs::symlink(&pointee, &target).expect("create symlink");

    let output = files.fetch(&target, &source, "");

    output.assert_exit(73);
    let link = std::fs::symlink_metadata(&target).expect("symlink still exists");
    assert!(link.file_type().is_symlink(), "the symlink was replaced");
    assert_eq!(std::fs::read(&pointee).expect("read pointee"), b"untouched");
}

#[test]
fn directory_at_target_exits_73() {
    let files = Files::new();
    let source = files.source("key", b"pka-directory");
    let target = files.tmpfs.join("portainer");
    std::fs::create_dir(&target).expect("create directory at target");

    let output = files.fetch(&target, &source, "");

    output.assert_exit(73);
    assert!(target.is_dir(), "the directory was replaced");
    assert_eq!(
        std::fs::read_dir(&target).expect("list directory").count(),
        0
    );
}

#[test]
fn disk_target_is_rejected_with_73() {
    let files = Files::new();
    let disk = DiskDir::new();
    let source = files.source("key", b"pka-disk");
    let target = disk.join("portainer");

    let output = files.fetch(&target, &source, "");

    output.assert_exit(73);
    assert_absent(&target);
}

#[test]
fn repeated_json_field_is_rejected() {
    let files = Files::new();
    let stored = br#"{"key":"pka-first-copy","key":"pka-second-copy"}"#;
    let source = files.source("key.json", stored);
    let target = files.tmpfs.join("portainer");

    let output = files.fetch(&target, &source, "field = \"key\"");

    output.assert_exit(65);
    assert_absent(&target);
    assert!(output.log().contains("more than once"), "{}", output.log());
    assert_log_free_of(
        &output,
        &[
            ("first copy", b"pka-first-copy"),
            ("second copy", b"pka-second-copy"),
        ],
    );
}

#[test]
fn disk_target_allowed_with_allow_disk() {
    let files = Files::new();
    let disk = DiskDir::new();
    let source = files.source("key", b"pka-disk-allowed");
    let target = disk.join("portainer");

    let output = files.fetch(&target, &source, "allow_disk = true");

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-disk-allowed"));
    let log = output.log();
    let warnings = log.matches("will reach a disk").count();
    assert_eq!(warnings, 1, "one disk warning per write:\n{log}");
}

/// Kills the agent with SIGKILL after increasing delays; after every kill the
/// target must hold either `before` (None: no file) or the complete new value.
fn kill_at_increasing_delays(
    files: &Files,
    target: &Path,
    source: &Path,
    before: Option<&[u8]>,
) -> usize {
    let config = files.config(target, source, "");
    let mut killed_while_running = 0;
    for step in 0..40u64 {
        if let Some(old) = before {
            std::fs::write(target, old).expect("restore old key");
        } else if target.exists() {
            std::fs::remove_file(target).expect("remove key");
        }
        let mut child = Agent::fetch(&config).spawn();
        std::thread::sleep(Duration::from_micros(step * 500));
        if child.try_wait().expect("poll agent").is_none() {
            killed_while_running += 1;
        }
        let _ = child.kill();
        child.wait().expect("reap agent");

        let contents = FileFacts::read(target).map(|facts| facts.bytes);
        let acceptable = contents.as_deref() == before
            || contents.as_deref() == Some(b"pka-complete-new-key".as_slice());
        assert!(
            acceptable,
            "after a kill at {} µs the target holds {contents:?}",
            step * 500
        );
    }
    killed_while_running
}

#[test]
fn kill_9_leaves_old_file_or_new() {
    let files = Files::new();
    let source = files.source("key", b"pka-complete-new-key");
    let target = files.tmpfs.join("portainer");

    let killed = kill_at_increasing_delays(&files, &target, &source, Some(b"pka-old-key"));

    assert!(killed > 0, "no kill landed while the agent was running");
}

#[test]
fn kill_9_leaves_no_file_or_new() {
    let files = Files::new();
    let source = files.source("key", b"pka-complete-new-key");
    let target = files.tmpfs.join("portainer");

    let killed = kill_at_increasing_delays(&files, &target, &source, None);

    assert!(killed > 0, "no kill landed while the agent was running");
}

fn vault_config(dir: &Path, address: &str, target: &Path, deadline_seconds: u64) -> PathBuf {
    let token_file = dir.join("vault-token");
    std::fs::write(&token_file, "unused-token").expect("write token");
    let store = vault_token_file_store("bao", address, &token_file)
        .replace("request_timeout_seconds = 5", "request_timeout_seconds = 1");
    let entry = secret(
        "db",
        "encryption-key",
        "bao",
        "secret/portainer/db",
        target,
        "",
    );
    write_config(
        dir,
        &format!("deadline_seconds = {deadline_seconds}\n{store}\n{entry}"),
    )
}

#[test]
fn refused_connections_exit_69_at_deadline() {
    let dir = TempDir::new().expect("temporary directory");
    let tmpfs = Tmpfs::mount();
    let target = tmpfs.join("portainer");
    // Nothing listens on a port that was just free, so every connect is refused.
    let address = format!("http://127.0.0.1:{}", free_port());
    let config = vault_config(dir.path(), &address, &target, 3);

    let output = Agent::fetch(&config).run();

    output.assert_exit(69);
    assert_absent(&target);
    assert!(
        output.elapsed >= Duration::from_millis(2500),
        "gave up after {:?}",
        output.elapsed
    );
    assert!(
        output.elapsed < Duration::from_secs(10),
        "ran {:?} past a 3 s deadline",
        output.elapsed
    );
}

#[test]
fn unresponsive_store_exits_69_at_deadline() {
    let dir = TempDir::new().expect("temporary directory");
    let tmpfs = Tmpfs::mount();
    let target = tmpfs.join("portainer");
    // Connections complete in the kernel backlog, but no reply ever comes.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let config = vault_config(dir.path(), &address, &target, 3);

    let output = Agent::fetch(&config).run();

    output.assert_exit(69);
    assert_absent(&target);
    assert!(
        output.elapsed >= Duration::from_millis(2500),
        "gave up after {:?}",
        output.elapsed
    );
    assert!(
        output.elapsed < Duration::from_secs(10),
        "ran {:?} past a 3 s deadline",
        output.elapsed
    );
    drop(listener);
}
