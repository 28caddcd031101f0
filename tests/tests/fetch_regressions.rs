//! Failures found by trying the agent as a newcomer, each pinned by a test: a
//! failed run must keep every old file, and a guard must never switch itself off.

mod db_support;

use std::process::Command;

use db_support::{make_database, write_key};
use integration_tests::config::secret;
use integration_tests::{Agent, Tmpfs, assert_absent, write_config};
use tempfile::TempDir;

const FILE_STORE: &str = "[stores.local]\ntype = \"file\"\n";

fn remount_read_only(tmpfs: &Tmpfs) {
    let status = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(tmpfs.path())
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "remounting {} read-only failed",
        tmpfs.path().display()
    );
}

#[test]
fn read_only_second_target_keeps_first_file() {
    let sources = TempDir::new().expect("sources");
    let key = write_key(sources.path(), "key", b"new-key-0123456789abcdef0123456789");
    let password = write_key(sources.path(), "password", b"new-password");
    let writable = Tmpfs::mount();
    let read_only = Tmpfs::mount();
    std::fs::write(writable.join("portainer"), b"old-good-key").expect("old key");
    remount_read_only(&read_only);
    let config = write_config(
        sources.path(),
        &format!(
            "{FILE_STORE}{}{}",
            secret(
                "key",
                "encryption-key",
                "local",
                &key.display().to_string(),
                &writable.join("portainer"),
                ""
            ),
            secret(
                "password",
                "admin-password",
                "local",
                &password.display().to_string(),
                &read_only.join("admin-password"),
                ""
            ),
        ),
    );

    let output = Agent::fetch(&config).run();

    output.assert_exit(73);
    let kept = std::fs::read(writable.join("portainer")).expect("read key file");
    assert_eq!(kept, b"old-good-key", "a failed run replaced a good file");
    let leftovers: Vec<_> = std::fs::read_dir(writable.path())
        .expect("list tmpfs")
        .flatten()
        .map(|entry| entry.file_name())
        .filter(|name| name != "portainer")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn whitespace_key_is_rejected() {
    let sources = TempDir::new().expect("sources");
    let tmpfs = Tmpfs::mount();
    for (name, bytes, newline) in [
        ("newline", &b"\n"[..], "exact"),
        ("crlf", b"\r\n", "strip-one"),
    ] {
        let key = write_key(sources.path(), name, bytes);
        let target = tmpfs.join(name);
        let extra = format!("newline = \"{newline}\"");
        let config = write_config(
            sources.path(),
            &format!(
                "{FILE_STORE}{}",
                secret(
                    name,
                    "encryption-key",
                    "local",
                    &key.display().to_string(),
                    &target,
                    &extra
                )
            ),
        );

        let output = Agent::fetch(&config).run();

        output.assert_exit(65);
        assert!(output.log().contains("only whitespace"), "{}", output.log());
        assert_absent(&target);
    }
}

#[test]
fn verify_db_missing_directory_is_rejected() {
    let sources = TempDir::new().expect("sources");
    let tmpfs = Tmpfs::mount();
    let key = write_key(sources.path(), "key", b"key-0123456789abcdef0123456789");
    let target = tmpfs.join("portainer");
    let config = write_config(
        sources.path(),
        &format!(
            "{FILE_STORE}{}",
            secret(
                "key",
                "encryption-key",
                "local",
                &key.display().to_string(),
                &target,
                ""
            )
        ),
    );

    let output = Agent::fetch(&config)
        .arg("--verify-db")
        .arg(sources.path().join("no-such-dir"))
        .run();

    output.assert_exit(78);
    assert!(output.log().contains("does not exist"), "{}", output.log());
    assert_absent(&target);
}

#[test]
fn verify_db_accepts_database_file_path() {
    let sources = TempDir::new().expect("sources");
    let tmpfs = Tmpfs::mount();
    let other_key = write_key(
        sources.path(),
        "other",
        b"a-key-the-store-never-had-0123456",
    );
    let database = sources.path().join("portainer.edb");
    make_database(&database, Some(&other_key), &["-keys", "50"]);
    let key = write_key(sources.path(), "key", b"key-0123456789abcdef0123456789");
    let target = tmpfs.join("portainer");
    let config = write_config(
        sources.path(),
        &format!(
            "{FILE_STORE}{}",
            secret(
                "key",
                "encryption-key",
                "local",
                &key.display().to_string(),
                &target,
                ""
            )
        ),
    );

    let output = Agent::fetch(&config)
        .arg("--verify-db")
        .arg(&database)
        .run();

    output.assert_exit(1);
    assert!(
        output.log().contains("no candidate version opens"),
        "{}",
        output.log()
    );
    assert_absent(&target);
}

#[test]
fn reset_password_rejects_bcrypt_hash() {
    let dir = TempDir::new().expect("data directory");
    let key = write_key(dir.path(), "key", b"key-0123456789abcdef0123456789");
    make_database(
        &dir.path().join("portainer.edb"),
        Some(&key),
        &["-keys", "20"],
    );
    let before = std::fs::read(dir.path().join("portainer.edb")).expect("read database");
    let hash = write_key(
        dir.path(),
        "password",
        b"$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy\n",
    );

    let output = Agent::new(["db", "reset-admin-password", "--db"])
        .arg(dir.path())
        .arg("--key-file")
        .arg(&key)
        .arg("--password-file")
        .arg(&hash)
        .run();

    output.assert_exit(65);
    assert!(output.log().contains("bcrypt hash"), "{}", output.log());
    let after = std::fs::read(dir.path().join("portainer.edb")).expect("read database");
    assert!(
        before == after,
        "the database changed although the password was rejected"
    );
}

#[test]
fn exec_runs_after_files_are_written() {
    let sources = TempDir::new().expect("sources");
    let tmpfs = Tmpfs::mount();
    let key = write_key(sources.path(), "key", b"key-0123456789abcdef0123456789");
    let target = tmpfs.join("portainer");
    let copied = sources.path().join("copied");
    let environment = sources.path().join("environment");
    let config = write_config(
        sources.path(),
        &format!(
            "{FILE_STORE}{}",
            secret(
                "key",
                "encryption-key",
                "local",
                &key.display().to_string(),
                &target,
                ""
            )
        ),
    );
    let script = format!(
        "cat {} > {} && env > {}",
        target.display(),
        copied.display(),
        environment.display()
    );

    let output = Agent::fetch(&config)
        .env("PORTAINER_KEY_AGENT_LOG_LEVEL", "debug")
        .args_after_separator(&["/bin/sh", "-c", &script])
        .run();

    output.assert_exit(0);
    assert_eq!(
        std::fs::read(&copied).expect("copied key"),
        b"key-0123456789abcdef0123456789"
    );
    let env = std::fs::read_to_string(&environment).expect("environment");
    assert!(!env.contains("PORTAINER_KEY_AGENT_"), "{env}");
}

#[test]
fn exec_skipped_when_fetch_fails() {
    let sources = TempDir::new().expect("sources");
    let tmpfs = Tmpfs::mount();
    let marker = sources.path().join("ran");
    let config = write_config(
        sources.path(),
        &format!(
            "{FILE_STORE}{}",
            secret(
                "key",
                "encryption-key",
                "local",
                "/nonexistent/key",
                &tmpfs.join("portainer"),
                ""
            )
        ),
    );
    let script = format!("touch {}", marker.display());

    let output = Agent::fetch(&config)
        .args_after_separator(&["/bin/sh", "-c", &script])
        .run();

    output.assert_exit(66);
    assert!(!marker.exists(), "the command ran although fetch failed");
}

trait SeparatorArgs {
    fn args_after_separator(self, command: &[&str]) -> Self;
}

impl SeparatorArgs for Agent {
    fn args_after_separator(self, command: &[&str]) -> Self {
        command
            .iter()
            .fold(self.arg("--"), |agent, arg| agent.arg(arg))
    }
}
