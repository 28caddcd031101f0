//! `swarm sync` against a single-node Docker swarm on 127.0.0.1 and OpenBao.
//!
//! The service under test runs the agent image built by `tests/image/build`, whose
//! command copies `/run/secrets/portainer` and `/run/secrets/admin-password` with
//! the file store into a host tmpfs bind-mounted at `/out`. So the bytes the test
//! reads are the bytes Swarm mounted inside the task.
//!
//! The test initialises a swarm when the engine has none and leaves it at the end,
//! and removes every service, secret and image it created, also when it fails. It
//! pulls no image: the service uses the local image with `--no-resolve-image`.

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use integration_tests::config::{secret, vault_token_file_store};
use integration_tests::paths::repo_root;
use integration_tests::{Agent, AgentOutput, OpenBao, Tmpfs, assert_log_free_of, write_config};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The user and group the agent image runs as.
const AGENT_ID: u32 = 65532;

/// Time a service task gets to start and copy its secrets.
const TASK_TIMEOUT: Duration = Duration::from_secs(90);

const LABEL_MANAGED: &str = "io.portainer-key-agent.managed";
const LABEL_SECRET: &str = "io.portainer-key-agent.secret";
const LABEL_DIGEST: &str = "io.portainer-key-agent.digest";
const LABEL_VERSION: &str = "io.portainer-key-agent.version";

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("failed to run docker {args:?}: {error}; install Docker and start the engine")
        })
}

fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "docker {args:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn swarm_state() -> String {
    docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Everything the test created on the engine, removed on drop: services first, then
/// secrets, the image, and the swarm if the test initialised it.
struct EngineGuard {
    created_swarm: bool,
    services: Vec<String>,
    secrets: Vec<String>,
    /// Value of the secret-name label of every managed secret this test made.
    label_suffix: String,
    image: Option<String>,
}

impl Drop for EngineGuard {
    fn drop(&mut self) {
        // Removal failures are ignored: an object may never have been created.
        for service in &self.services {
            let _ = docker(&["service", "rm", service]);
        }
        // A removed service's tasks release their secrets only when they stop.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let mut names = self.secrets.clone();
            names.extend(self.managed_secret_ids());
            if names.is_empty() {
                break;
            }
            for name in &names {
                let _ = docker(&["secret", "rm", name]);
            }
            self.secrets
                .retain(|name| !docker(&["secret", "inspect", name]).status.success());
            std::thread::sleep(Duration::from_millis(500));
        }
        if let Some(image) = &self.image {
            let _ = docker(&["image", "rm", "--force", image]);
        }
        if self.created_swarm {
            let _ = docker(&["swarm", "leave", "--force"]);
        }
    }
}

impl EngineGuard {
    /// IDs of managed secrets whose secret-name label ends with this test's suffix.
    fn managed_secret_ids(&self) -> Vec<String> {
        let filter = format!("label={LABEL_MANAGED}=true");
        let output = docker(&["secret", "ls", "--filter", &filter, "--format", "{{.ID}}"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|id| {
                let label = secret_labels(id)
                    .get(LABEL_SECRET)
                    .cloned()
                    .unwrap_or_default();
                label.ends_with(&self.label_suffix)
            })
            .map(str::to_owned)
            .collect()
    }
}

fn secret_labels(id: &str) -> BTreeMap<String, String> {
    let output = docker(&["secret", "inspect", "--format", "{{json .Spec.Labels}}", id]);
    serde_json::from_slice(&output.stdout).unwrap_or_default()
}

/// Builds the agent image with `tests/image/build`.
fn build_image(tag: &str) {
    let script = repo_root().join("tests/image/build");
    let output = Command::new(&script)
        .arg(tag)
        .output()
        .unwrap_or_else(|error| panic!("failed to run {}: {error}", script.display()));
    assert!(
        output.status.success(),
        "{} failed with {}:\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A service reference to a secret, as `docker service inspect` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reference {
    target: String,
    secret_id: String,
    secret_name: String,
    uid: String,
    mode: u64,
}

/// Reads the service's spec as JSON. Swarm bumps `Version.Index` on its own when an
/// update's status changes, so an unchanged spec is the proof of no update.
fn service_spec(service: &str) -> Value {
    let text = docker_ok(&["service", "inspect", "--format", "{{json .Spec}}", service]);
    serde_json::from_str(&text).expect("service spec is JSON")
}

fn service_version(service: &str) -> u64 {
    let text = docker_ok(&[
        "service",
        "inspect",
        "--format",
        "{{.Version.Index}}",
        service,
    ]);
    text.parse()
        .unwrap_or_else(|error| panic!("service version {text:?}: {error}"))
}

/// Reads the service's secret references, keyed by target.
fn service_references(service: &str) -> BTreeMap<String, Reference> {
    let text = docker_ok(&[
        "service",
        "inspect",
        "--format",
        "{{json .Spec.TaskTemplate.ContainerSpec.Secrets}}",
        service,
    ]);
    let list: Value = serde_json::from_str(&text).expect("secrets are JSON");
    let list = list.as_array().cloned().unwrap_or_default();
    list.iter()
        .map(|item| {
            let field = |pointer: &str| {
                item.pointer(pointer)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let reference = Reference {
                target: field("/File/Name"),
                secret_id: field("/SecretID"),
                secret_name: field("/SecretName"),
                uid: field("/File/UID"),
                mode: item
                    .pointer("/File/Mode")
                    .and_then(Value::as_u64)
                    .unwrap_or_default(),
            };
            (reference.target.clone(), reference)
        })
        .collect()
}

fn secret_exists(id: &str) -> bool {
    docker(&["secret", "inspect", id]).status.success()
}

/// Waits until `path` contains exactly `expected`, as written by the service's task.
fn wait_for_file(path: &Path, expected: &[u8], service: &str) {
    let deadline = Instant::now() + TASK_TIMEOUT;
    loop {
        if std::fs::read(path).ok().as_deref() == Some(expected) {
            return;
        }
        if Instant::now() > deadline {
            let tasks = docker(&["service", "ps", "--no-trunc", service]);
            let logs = docker(&["service", "logs", "--raw", service]);
            panic!(
                "{} did not receive the expected {} bytes within {TASK_TIMEOUT:?}; it has {:?} bytes\ntasks:\n{}\nlogs:\n{}{}",
                path.display(),
                expected.len(),
                std::fs::read(path).map(|bytes| bytes.len()).ok(),
                String::from_utf8_lossy(&tasks.stdout),
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// OpenBao, the configuration and the service of one test run.
struct Fixture {
    bao: OpenBao,
    dir: TempDir,
    out: Tmpfs,
    service: String,
    config: PathBuf,
}

impl Fixture {
    fn put(&self, key: &str, password: &str) {
        self.bao.root().kv2_put(
            "secret",
            "portainer",
            &json!({ "key": key, "password": password }),
        );
    }

    fn sync(&self, extra: &[&str]) -> AgentOutput {
        let mut agent = Agent::new(["swarm", "sync", "--config"])
            .arg(&self.config)
            .arg("--service")
            .arg(&self.service)
            .env("DOCKER_HOST", "unix:///var/run/docker.sock")
            .trace();
        for arg in extra {
            agent = agent.arg(arg);
        }
        agent.run()
    }
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Checks that no label and no inspect output of the service's secrets contains a value.
fn assert_labels_free_of(references: &BTreeMap<String, Reference>, values: &[&[u8]]) {
    for reference in references.values() {
        let inspect = docker_ok(&["secret", "inspect", &reference.secret_id]);
        for value in values {
            let text = String::from_utf8_lossy(value);
            let trimmed = text.trim_end();
            assert!(
                !inspect.contains(trimmed),
                "docker secret inspect of {} contains a secret value:\n{inspect}",
                reference.secret_name
            );
            assert!(
                !inspect.contains(&base64(value)),
                "docker secret inspect of {} contains a base64 secret value",
                reference.secret_name
            );
        }
    }
}

#[test]
fn sync_delivers_rotates_and_cleans_up() {
    let suffix = unique_suffix();
    let state = swarm_state();
    let mut guard = EngineGuard {
        created_swarm: false,
        services: Vec::new(),
        secrets: Vec::new(),
        label_suffix: format!("-t{suffix}"),
        image: None,
    };

    let bao = OpenBao::start();
    let dir = TempDir::new().expect("temporary directory");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, bao.root_token()).expect("write token file");
    let store = vault_token_file_store("bao", bao.address(), &token_file);
    let owner = format!("owner = \"{AGENT_ID}:{AGENT_ID}\"\n");
    let key_name = format!("database-key-t{suffix}");
    let password_name = format!("admin-password-t{suffix}");
    let secrets = [
        secret(
            &key_name,
            "encryption-key",
            "bao",
            "secret/portainer",
            Path::new("/run/secrets/portainer"),
            &format!("field = \"key\"\nnewline = \"ensure-one\"\n{owner}"),
        ),
        secret(
            &password_name,
            "admin-password",
            "bao",
            "secret/portainer",
            Path::new("/run/secrets/admin-password"),
            &format!("field = \"password\"\n{owner}"),
        ),
    ]
    .concat();
    let config = write_config(
        dir.path(),
        &format!("deadline_seconds = 30\n{store}\n{secrets}"),
    );

    let out = Tmpfs::mount();
    chown(out.path(), Some(AGENT_ID), Some(AGENT_ID)).expect("chown output tmpfs");
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o750))
        .expect("chmod output tmpfs");
    let fixture = Fixture {
        bao,
        dir,
        out,
        service: format!("portainer-swarm-test-{suffix}"),
        config,
    };
    let key = format!("swarm-key-{suffix}-0123456789abcdef");
    let password = "first-Password-1";
    fixture.put(&key, password);

    // Not a swarm manager: the engine rejects the first Swarm call.
    if state == "inactive" {
        let output = fixture.sync(&[]);
        output.assert_exit(73);
        assert!(
            output.log().contains("not a swarm manager"),
            "{}",
            output.log()
        );

        let init = docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1",
            "--listen-addr",
            "127.0.0.1:2377",
        ]);
        guard.created_swarm = init.status.success();
        assert!(
            init.status.success(),
            "docker swarm init failed:\n{}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    assert_eq!(swarm_state(), "active", "swarm state after set-up");

    let image = format!("portainer-key-agent-swarm-test:{suffix}");
    guard.image = Some(image.clone());
    build_image(&image);

    // The task copies both secrets into /out with the agent's file store, then
    // exits; Swarm starts it again every second, so /out follows the service.
    let bind = format!("type=bind,src={},dst=/out", fixture.out.path().display());
    guard.services.push(fixture.service.clone());
    docker_ok(&[
        "service",
        "create",
        "--detach",
        "--quiet",
        "--name",
        &fixture.service,
        "--no-resolve-image",
        "--restart-condition",
        "any",
        "--restart-delay",
        "1s",
        "--mount",
        &bind,
        &image,
        "fetch",
        "--store",
        "file",
        "--key-path",
        "/run/secrets/portainer",
        "--key-target",
        "/out/portainer",
        "--password-path",
        "/run/secrets/admin-password",
        "--password-target",
        "/out/admin-password",
    ]);
    let version_before = service_version(&fixture.service);

    // Bootstrap: both secrets created and attached, the key with its newline.
    let first = fixture.sync(&[]);
    first.assert_exit(0);
    let key_file = format!("{key}\n");
    assert_log_free_of(
        &first,
        &[
            ("key", key.as_bytes()),
            ("password", password.as_bytes()),
            ("base64 key", base64(key_file.as_bytes()).as_bytes()),
            ("base64 password", base64(password.as_bytes()).as_bytes()),
        ],
    );
    let version_bootstrapped = service_version(&fixture.service);
    assert!(
        version_bootstrapped > version_before,
        "bootstrap updates the service"
    );
    let references = service_references(&fixture.service);
    let key_reference = references
        .get("portainer")
        .expect("key at target portainer");
    let password_reference = references
        .get("admin-password")
        .expect("password at target admin-password");
    assert!(
        key_reference.secret_name.starts_with("portainer-key-"),
        "{key_reference:?}"
    );
    assert!(
        password_reference
            .secret_name
            .starts_with("portainer-admin-password-"),
        "{password_reference:?}"
    );
    assert_eq!(key_reference.uid, AGENT_ID.to_string(), "owner from config");
    assert_eq!(key_reference.mode, 0o400, "mode from config");

    let labels = secret_labels(&key_reference.secret_id);
    assert_eq!(labels[LABEL_MANAGED], "true");
    assert_eq!(labels[LABEL_SECRET], key_name);
    assert_eq!(labels[LABEL_VERSION], "1");
    let plain = hex::encode(Sha256::digest(key_file.as_bytes()));
    assert!(
        !labels[LABEL_DIGEST].contains(&plain),
        "the digest must not be SHA-256 of the key file, which is Portainer's AES key"
    );
    assert!(
        !key_reference.secret_name.contains(&plain[..12]),
        "the name must not carry SHA-256 of the key file"
    );
    assert_labels_free_of(&references, &[key_file.as_bytes(), password.as_bytes()]);

    wait_for_file(
        &fixture.out.join("portainer"),
        key_file.as_bytes(),
        &fixture.service,
    );
    wait_for_file(
        &fixture.out.join("admin-password"),
        password.as_bytes(),
        &fixture.service,
    );

    // Unchanged values: no new secret, no service update.
    let spec_bootstrapped = service_spec(&fixture.service);
    let second = fixture.sync(&[]);
    second.assert_exit(0);
    assert!(
        second.log().contains("service unchanged"),
        "{}",
        second.log()
    );
    assert_eq!(
        service_spec(&fixture.service),
        spec_bootstrapped,
        "service spec after an unchanged sync"
    );
    assert_eq!(
        service_references(&fixture.service),
        references,
        "references after an unchanged sync"
    );
    assert_eq!(guard.managed_secret_ids().len(), 2, "managed secrets");

    // A new admin password rolls the service and removes the old secret.
    let new_password = "second-Password-2";
    fixture.put(&key, new_password);
    let third = fixture.sync(&[]);
    third.assert_exit(0);
    assert_log_free_of(&third, &[("new password", new_password.as_bytes())]);
    let version_password = service_version(&fixture.service);
    assert!(
        version_password > version_bootstrapped,
        "a changed password updates the service"
    );
    let after_password = service_references(&fixture.service);
    assert_eq!(
        after_password["portainer"], references["portainer"],
        "key reference"
    );
    assert_ne!(
        after_password["admin-password"].secret_id, references["admin-password"].secret_id,
        "password secret replaced"
    );
    assert!(
        !secret_exists(&references["admin-password"].secret_id),
        "the old password secret is removed"
    );
    wait_for_file(
        &fixture.out.join("admin-password"),
        new_password.as_bytes(),
        &fixture.service,
    );

    // A new key without --allow-key-change: logged, nothing changes.
    let spec_password = service_spec(&fixture.service);
    let new_key = format!("swarm-key-{suffix}-fedcba9876543210");
    fixture.put(&new_key, new_password);
    let fourth = fixture.sync(&[]);
    fourth.assert_exit(0);
    assert!(
        fourth
            .log()
            .contains("rotation pending; run rotate-key first, then sync with --allow-key-change"),
        "{}",
        fourth.log()
    );
    assert_eq!(
        service_spec(&fixture.service),
        spec_password,
        "a pending key change leaves the service alone"
    );
    assert_eq!(service_references(&fixture.service), after_password);
    assert_eq!(guard.managed_secret_ids().len(), 2, "no key secret created");

    // Unused managed secrets go; unmanaged ones stay.
    let orphan_file = fixture.dir.path().join("orphan");
    std::fs::write(&orphan_file, b"not a real key").expect("write orphan value");
    let orphan_file = orphan_file.to_string_lossy().into_owned();
    let orphan = format!("portainer-key-orphan-{suffix}");
    let foreign = format!("foreign-{suffix}");
    guard.secrets.push(orphan.clone());
    guard.secrets.push(foreign.clone());
    let orphan_label = format!("{LABEL_SECRET}=orphan-t{suffix}");
    let managed_label = format!("{LABEL_MANAGED}=true");
    docker_ok(&[
        "secret",
        "create",
        "--label",
        &managed_label,
        "--label",
        &orphan_label,
        &orphan,
        &orphan_file,
    ]);
    docker_ok(&["secret", "create", &foreign, &orphan_file]);
    let fifth = fixture.sync(&[]);
    fifth.assert_exit(0);
    assert!(!secret_exists(&orphan), "unused managed secret removed");
    assert!(secret_exists(&foreign), "unmanaged secret kept");

    // With --allow-key-change the key rolls too.
    let sixth = fixture.sync(&["--allow-key-change"]);
    sixth.assert_exit(0);
    assert_log_free_of(&sixth, &[("new key", new_key.as_bytes())]);
    assert!(
        service_version(&fixture.service) > version_password,
        "an allowed key change updates the service"
    );
    let after_key = service_references(&fixture.service);
    assert_ne!(after_key["portainer"], after_password["portainer"]);
    assert!(
        !secret_exists(&after_password["portainer"].secret_id),
        "the old key secret is removed"
    );
    wait_for_file(
        &fixture.out.join("portainer"),
        format!("{new_key}\n").as_bytes(),
        &fixture.service,
    );

    // Interval mode repeats the sync and stops on SIGTERM with status 0.
    let spec_final = service_spec(&fixture.service);
    let mut child = Agent::new(["swarm", "sync", "--interval-seconds", "1", "--config"])
        .arg(&fixture.config)
        .arg("--service")
        .arg(&fixture.service)
        .spawn();
    std::thread::sleep(Duration::from_secs(3));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("agent pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("send SIGTERM");
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the agent") {
            break status;
        }
        if stopped.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            panic!("the agent did not exit within 5 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("agent output");
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(0), "exit status on SIGTERM:\n{log}");
    assert!(log.contains("stopping on a signal"), "{log}");
    assert!(
        log.matches("service unchanged").count() >= 2,
        "two or more passes in 3 s:\n{log}"
    );
    assert_eq!(
        service_spec(&fixture.service),
        spec_final,
        "interval passes change nothing"
    );
}

#[test]
fn sync_reports_unreachable_engine() {
    let dir = TempDir::new().expect("temporary directory");
    let value = dir.path().join("key");
    std::fs::write(&value, b"a key that is never sent").expect("write key");
    let store = "[stores.files]\ntype = \"file\"\n";
    let secrets = secret(
        "database-key",
        "encryption-key",
        "files",
        &value.to_string_lossy(),
        Path::new("/run/secrets/portainer"),
        "",
    );
    let config = write_config(dir.path(), &format!("{store}\n{secrets}"));
    let missing = format!("unix://{}", dir.path().join("docker.sock").display());

    let cases = [
        (
            missing.as_str(),
            69,
            "failed to connect to the Docker engine",
        ),
        ("tcp://127.0.0.1:9", 78, "is not supported"),
    ];
    for (host, status, message) in cases {
        let output = Agent::new(["swarm", "sync", "--service", "portainer", "--config"])
            .arg(&config)
            .env("DOCKER_HOST", host)
            .run();

        output.assert_exit(status);
        assert!(output.log().contains(message), "{host}: {}", output.log());
    }
}
