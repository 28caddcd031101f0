//! `rotate-key` and `fetch --verify-db` against moto and OpenBao, on databases made
//! and checked by the real bbolt library.

mod db_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use db_support::{check_database, make_database, reference_program, write_key};
use integration_tests::config::{aws_store, secret, vault_token_file_store};
use integration_tests::{
    Agent, AgentOutput, Expected, KvVersion, Moto, OpenBao, Tmpfs, assert_absent, assert_file,
    assert_log_free_of, write_config,
};
use serde_json::{Value, json};
use tempfile::TempDir;

const OLD_KEY: &str = "old-key-7f3a9c1e5b2d8f4a6c0e";

/// A data directory with `portainer.edb` encrypted under `key`.
fn data_dir(key: &[u8]) -> TempDir {
    let dir = TempDir::new().expect("data directory");
    let key_file = write_key(dir.path(), "key", key);
    make_database(
        &dir.path().join("portainer.edb"),
        Some(&key_file),
        &["-keys", "300"],
    );
    std::fs::remove_file(key_file).expect("remove key file");
    dir
}

fn opens_with(dir: &Path, key: &[u8]) -> bool {
    let keys = TempDir::new().expect("key directory");
    let key_file = write_key(keys.path(), "key", key);
    check_database(&dir.join("portainer.edb"), Some(&key_file)).is_ok()
}

fn rotate_key(config: &Path, data: &Path, extra: &[&str]) -> AgentOutput {
    Agent::new(["rotate-key", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .trace()
        .args(extra)
        .run()
}

trait AgentArgs {
    fn args(self, extra: &[&str]) -> Self;
}

impl AgentArgs for Agent {
    fn args(self, extra: &[&str]) -> Self {
        extra.iter().fold(self, |agent, arg| agent.arg(arg))
    }
}

/// moto with one SecretString secret `portainer/key` holding `OLD_KEY`.
struct Aws {
    moto: Moto,
    config: PathBuf,
    tmpfs: Tmpfs,
    _dir: TempDir,
}

impl Aws {
    fn start() -> Self {
        let moto = Moto::start();
        moto.create_secret_string("portainer/key", OLD_KEY);
        let tmpfs = Tmpfs::mount();
        let dir = TempDir::new().expect("config directory");
        let toml = format!(
            "{}\n{}",
            aws_store("aws", moto.url()),
            secret(
                "database-key",
                "encryption-key",
                "aws",
                "portainer/key",
                &tmpfs.join("portainer"),
                ""
            )
        );
        let config = write_config(dir.path(), &toml);
        Self {
            moto,
            config,
            tmpfs,
            _dir: dir,
        }
    }

    fn agent_env(agent: Agent) -> Agent {
        agent
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
    }

    fn run(&self, data: &Path, extra: &[&str]) -> AgentOutput {
        let agent = Agent::new(["rotate-key", "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(data)
            .trace()
            .args(extra);
        Self::agent_env(agent).run()
    }

    fn fetch_verified(&self, data: &Path) -> AgentOutput {
        let agent = Agent::fetch(&self.config)
            .arg("--verify-db")
            .arg(data)
            .trace();
        Self::agent_env(agent).run()
    }

    fn value(&self, stage: &str) -> String {
        let reply = self.moto.secrets_manager(
            "GetSecretValue",
            &json!({ "SecretId": "portainer/key", "VersionStage": stage }),
        );
        reply.json()["SecretString"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn stages(&self) -> Value {
        let reply = self
            .moto
            .secrets_manager("DescribeSecret", &json!({ "SecretId": "portainer/key" }));
        reply.json()["VersionIdsToStages"].clone()
    }
}

#[test]
fn aws_rotation_reencrypts_and_promotes() {
    let aws = Aws::start();
    let data = data_dir(OLD_KEY.as_bytes());

    let output = aws.run(data.path(), &[]);

    output.assert_exit(0);
    let new_key = aws.value("AWSCURRENT");
    assert_ne!(new_key, OLD_KEY);
    assert_eq!(
        new_key.len(),
        43,
        "a generated key is 32 bytes in base64url"
    );
    assert_eq!(aws.value("AWSPREVIOUS"), OLD_KEY);
    assert!(
        opens_with(data.path(), new_key.as_bytes()),
        "{}",
        output.log()
    );
    assert!(!opens_with(data.path(), OLD_KEY.as_bytes()));
    assert!(
        !aws.stages().to_string().contains("AWSPENDING"),
        "{}",
        aws.stages()
    );
    assert_log_free_of(
        &output,
        &[
            ("new key", new_key.as_bytes()),
            ("old key", OLD_KEY.as_bytes()),
        ],
    );
}

#[test]
fn aws_rotation_uses_existing_pending_version() {
    let aws = Aws::start();
    let data = data_dir(OLD_KEY.as_bytes());
    let pending = "pending-key-made-by-the-operator-0123456789";
    aws.moto
        .put_secret_string("portainer/key", pending, &["AWSPENDING"]);

    let output = aws.run(data.path(), &[]);

    output.assert_exit(0);
    assert!(
        output.log().contains("found in the store"),
        "{}",
        output.log()
    );
    assert_eq!(aws.value("AWSCURRENT"), pending);
    assert!(opens_with(data.path(), pending.as_bytes()));
}

#[test]
fn aws_rerun_after_database_rotated_promotes() {
    let aws = Aws::start();
    let data = data_dir(OLD_KEY.as_bytes());
    let pending = "pending-key-interrupted-after-rotation-42";
    aws.moto
        .put_secret_string("portainer/key", pending, &["AWSPENDING"]);
    let keys = TempDir::new().expect("keys");
    let old_file = write_key(keys.path(), "old", OLD_KEY.as_bytes());
    let new_file = write_key(keys.path(), "new", pending.as_bytes());
    Agent::new(["db", "rotate", "--db"])
        .arg(data.path())
        .arg("--old-key-file")
        .arg(&old_file)
        .arg("--new-key-file")
        .arg(&new_file)
        .run()
        .assert_exit(0);

    let output = aws.run(data.path(), &[]);

    output.assert_exit(0);
    assert!(
        output.log().contains("already encrypted with the new key"),
        "{}",
        output.log()
    );
    assert_eq!(aws.value("AWSCURRENT"), pending);
    assert_eq!(aws.value("AWSPREVIOUS"), OLD_KEY);
}

#[test]
fn dry_run_changes_nothing() {
    let aws = Aws::start();
    let data = data_dir(OLD_KEY.as_bytes());
    let before = std::fs::read(data.path().join("portainer.edb")).expect("read database");
    let stages_before = aws.stages();

    let output = aws.run(data.path(), &["--dry-run"]);

    output.assert_exit(0);
    assert!(
        output.log().contains("dry run: nothing was changed"),
        "{}",
        output.log()
    );
    let after = std::fs::read(data.path().join("portainer.edb")).expect("read database");
    assert!(before == after, "the database changed during a dry run");
    assert_eq!(aws.stages(), stages_before);
}

#[test]
fn running_portainer_blocks_rotation() {
    let aws = Aws::start();
    let data = data_dir(OLD_KEY.as_bytes());
    let holder = hold_lock(&data.path().join("portainer.edb"));
    let stages_before = aws.stages();

    let output = aws.run(data.path(), &[]);

    drop(holder);
    output.assert_exit(75);
    assert_eq!(
        aws.stages(),
        stages_before,
        "nothing may be stored while Portainer runs"
    );
    assert!(opens_with(data.path(), OLD_KEY.as_bytes()));
}

#[test]
fn verify_db_writes_pending_key_that_opens() {
    let aws = Aws::start();
    let pending = "pending-key-the-database-already-uses-77";
    aws.moto
        .put_secret_string("portainer/key", pending, &["AWSPENDING"]);
    let data = data_dir(pending.as_bytes());

    let output = aws.fetch_verified(data.path());

    output.assert_exit(0);
    assert!(
        output.log().contains("candidate=\"pending\""),
        "{}",
        output.log()
    );
    assert_file(
        &aws.tmpfs.join("portainer"),
        Expected::default_owner(pending.as_bytes()),
    );
}

#[test]
fn verify_db_rejects_key_that_opens_nothing() {
    let aws = Aws::start();
    let data = data_dir(b"a key the store never had");

    let output = aws.fetch_verified(data.path());

    output.assert_exit(1);
    assert!(
        output.log().contains("no candidate version opens"),
        "{}",
        output.log()
    );
    assert_absent(&aws.tmpfs.join("portainer"));
}

#[test]
fn verify_db_without_database_writes_current() {
    let aws = Aws::start();
    let empty = TempDir::new().expect("empty data directory");

    let output = aws.fetch_verified(empty.path());

    output.assert_exit(0);
    assert!(output.log().contains("no database yet"), "{}", output.log());
    assert_file(
        &aws.tmpfs.join("portainer"),
        Expected::default_owner(OLD_KEY.as_bytes()),
    );
}

#[test]
fn verify_db_warns_when_both_databases_exist() {
    let aws = Aws::start();
    let data = data_dir(OLD_KEY.as_bytes());
    std::fs::write(data.path().join("portainer.db"), b"left by a migration").expect("write");

    let output = aws.fetch_verified(data.path());

    output.assert_exit(0);
    assert!(
        output
            .log()
            .contains("Portainer does not start while both do"),
        "{}",
        output.log()
    );
}

#[test]
fn verify_db_with_empty_database_writes_current() {
    let aws = Aws::start();
    let data = TempDir::new().expect("data directory");
    std::fs::write(data.path().join("portainer.edb"), b"").expect("empty database");

    for path in [data.path().to_path_buf(), data.path().join("portainer.edb")] {
        let output = aws.fetch_verified(&path);

        output.assert_exit(0);
        assert!(
            output.log().contains("no database yet") || output.log().contains("file is empty"),
            "{}",
            output.log()
        );
        assert_file(
            &aws.tmpfs.join("portainer"),
            Expected::default_owner(OLD_KEY.as_bytes()),
        );
    }
}

/// Holds bbolt's exclusive lock on `database`, as a running Portainer does,
/// until the returned child is dropped.
fn hold_lock(database: &Path) -> LockHolder {
    let mut child = Command::new(reference_program())
        .args(["hold", "-db"])
        .arg(database)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start lock holder");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("holder stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("holder ready line");
    LockHolder(child)
}

struct LockHolder(Child);

impl Drop for LockHolder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// OpenBao with a KV v2 secret holding the key and the admin password.
struct Vault {
    bao: OpenBao,
    config: PathBuf,
    _tmpfs: Tmpfs,
    _dir: TempDir,
}

impl Vault {
    fn start() -> Self {
        let bao = OpenBao::start();
        bao.root().kv2_put(
            "secret",
            "portainer",
            &json!({ "key": OLD_KEY, "password": "admin-password-1" }),
        );
        let tmpfs = Tmpfs::mount();
        let dir = TempDir::new().expect("config directory");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, bao.root_token()).expect("write token file");
        let toml = format!(
            "{}\n{}",
            vault_token_file_store("bao", bao.address(), &token_file),
            secret(
                "database-key",
                "encryption-key",
                "bao",
                "secret/portainer",
                &tmpfs.join("portainer"),
                "field = \"key\"\n"
            )
        );
        let config = write_config(dir.path(), &toml);
        Self {
            bao,
            config,
            _tmpfs: tmpfs,
            _dir: dir,
        }
    }

    fn data(&self) -> Value {
        self.bao.root().read("secret/data/portainer")["data"]["data"].clone()
    }
}

#[test]
fn vault_rotation_keeps_other_fields() {
    let vault = Vault::start();
    let data = data_dir(OLD_KEY.as_bytes());

    let output = rotate_key(&vault.config, data.path(), &[]);

    output.assert_exit(0);
    let stored = vault.data();
    let new_key = stored["key"].as_str().expect("key field");
    assert_ne!(new_key, OLD_KEY);
    assert_eq!(stored["key_previous"], OLD_KEY);
    assert_eq!(stored["password"], "admin-password-1");
    assert!(stored.get("key_pending").is_none(), "{stored}");
    assert!(
        opens_with(data.path(), new_key.as_bytes()),
        "{}",
        output.log()
    );
    assert_log_free_of(
        &output,
        &[
            ("new key", new_key.as_bytes()),
            ("old key", OLD_KEY.as_bytes()),
        ],
    );
}

#[test]
fn vault_rotation_twice_moves_previous() {
    let vault = Vault::start();
    let data = data_dir(OLD_KEY.as_bytes());

    rotate_key(&vault.config, data.path(), &[]).assert_exit(0);
    let first = vault.data()["key"].as_str().expect("key").to_owned();
    rotate_key(&vault.config, data.path(), &[]).assert_exit(0);

    let stored = vault.data();
    assert_eq!(stored["key_previous"], first.as_str());
    assert!(opens_with(
        data.path(),
        stored["key"].as_str().expect("key").as_bytes()
    ));
}

#[test]
fn vault_kv1_mount_is_rejected() {
    let vault = Vault::start();
    vault.bao.root().enable_kv("kv1", KvVersion::V1);
    vault
        .bao
        .root()
        .kv1_put("kv1", "portainer", &json!({ "key": OLD_KEY }));
    let text = std::fs::read_to_string(&vault.config).expect("read config");
    std::fs::write(
        &vault.config,
        text.replace("secret/portainer", "kv1/portainer"),
    )
    .expect("write config");
    let data = data_dir(OLD_KEY.as_bytes());

    let output = rotate_key(&vault.config, data.path(), &[]);

    output.assert_exit(78);
    assert!(output.log().contains("KV v2"), "{}", output.log());
    assert!(opens_with(data.path(), OLD_KEY.as_bytes()));
}
