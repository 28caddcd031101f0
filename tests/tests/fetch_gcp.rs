//! `fetch` against the Google STS, IAM Credentials and Secret Manager double, with
//! workload identity federation from a projected token file.

use std::path::PathBuf;

use base64::Engine;
use integration_tests::config::{gcp_store, secret};
use integration_tests::{
    Agent, AgentOutput, Expected, GoogleSecretManager, Tmpfs, assert_absent, assert_file,
    assert_log_free_of, write_config,
};
use tempfile::TempDir;

struct Gcp {
    google: GoogleSecretManager,
    token: String,
    token_file: PathBuf,
    tmpfs: Tmpfs,
    dir: TempDir,
}

impl Gcp {
    fn start() -> Self {
        let google = GoogleSecretManager::start();
        let dir = TempDir::new().expect("temporary directory");
        let token = google.subject_token(3600);
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, &token).expect("write subject token");
        Self {
            google,
            token,
            token_file,
            tmpfs: Tmpfs::mount(),
            dir,
        }
    }

    fn agent(&self, impersonate: bool, secrets: &str) -> Agent {
        let credentials = self
            .google
            .credential_configuration(&self.token_file, impersonate);
        let ca = self.google.ca().ca_file();
        let store = gcp_store(
            "sm",
            self.google.url(),
            &credentials,
            &format!("ca_cert = \"{}\"", ca.display()),
        );
        let config = write_config(
            self.dir.path(),
            &format!("deadline_seconds = 20\n{store}\n{secrets}"),
        );
        Agent::fetch(&config).trace()
    }

    fn fetch(&self, secrets: &str) -> AgentOutput {
        self.agent(false, secrets).run()
    }

    /// Checks that the log has no subject token, no access token and none of `values`.
    fn assert_log_clean(&self, output: &AgentOutput, values: &[&[u8]]) {
        let tokens = self.google.issued_tokens();
        let mut secrets: Vec<(&str, &[u8])> = vec![("subject token", self.token.as_bytes())];
        secrets.extend(
            tokens
                .iter()
                .map(|token| ("access token", token.as_bytes())),
        );
        secrets.extend(values.iter().map(|value| ("secret value", *value)));
        assert_log_free_of(output, &secrets);
    }
}

#[test]
fn raw_bytes_payload_is_byte_exact() {
    let gcp = Gcp::start();
    let key: &[u8] = b"\x00\xff\x80pka-gcp\xc3\x28\n\x00";
    gcp.google.add_version("portainer-db", key);
    let target = gcp.tmpfs.join("portainer");

    let output = gcp.fetch(&secret(
        "db",
        "encryption-key",
        "sm",
        "portainer-db",
        &target,
        "",
    ));

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(key));
    assert!(
        !gcp.google.issued_tokens().is_empty(),
        "the agent obtained no access token"
    );
    gcp.assert_log_clean(&output, &[b"pka-gcp"]);
}

#[test]
fn value_with_newline_kept_or_stripped() {
    let gcp = Gcp::start();
    gcp.google.add_version("portainer-db", b"pka-gcp-key-91\n");
    let exact = gcp.tmpfs.join("exact");
    let stripped = gcp.tmpfs.join("stripped");
    let secrets = [
        secret("exact", "generic", "sm", "portainer-db", &exact, ""),
        secret(
            "stripped",
            "generic",
            "sm",
            "portainer-db",
            &stripped,
            "newline = \"strip-one\"",
        ),
    ]
    .concat();

    let output = gcp.fetch(&secrets);

    output.assert_exit(0);
    assert_file(&exact, Expected::default_owner(b"pka-gcp-key-91\n"));
    assert_file(&stripped, Expected::default_owner(b"pka-gcp-key-91"));
    gcp.assert_log_clean(&output, &[b"pka-gcp-key-91"]);
}

#[test]
fn base64_text_payload_is_decoded() {
    let gcp = Gcp::start();
    let key: &[u8] = b"\x00\x01pka\xfe\xff";
    let encoded = base64::engine::general_purpose::STANDARD.encode(key);
    gcp.google.add_version("portainer-db", encoded.as_bytes());
    let target = gcp.tmpfs.join("portainer");

    let output = gcp.fetch(&secret(
        "db",
        "encryption-key",
        "sm",
        "portainer-db",
        &target,
        "encoding = \"base64\"",
    ));

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(key));
}

#[test]
fn pinned_version_and_full_name() {
    let gcp = Gcp::start();
    let first = gcp.google.add_version("portainer-db", b"pka-gcp-first");
    gcp.google.add_version("portainer-db", b"pka-gcp-second");
    let pinned = gcp.tmpfs.join("pinned");
    let latest = gcp.tmpfs.join("latest");
    let full_name = format!(
        "projects/{}/secrets/portainer-db",
        GoogleSecretManager::PROJECT_NUMBER
    );
    let secrets = [
        secret(
            "pinned",
            "generic",
            "sm",
            "portainer-db",
            &pinned,
            &format!("version = {first}"),
        ),
        secret("latest", "generic", "sm", &full_name, &latest, ""),
    ]
    .concat();

    let output = gcp.fetch(&secrets);

    output.assert_exit(0);
    assert_file(&pinned, Expected::default_owner(b"pka-gcp-first"));
    assert_file(&latest, Expected::default_owner(b"pka-gcp-second"));
    assert!(output.log().contains("version=2"), "{}", output.log());
}

#[test]
fn impersonated_service_account() {
    let gcp = Gcp::start();
    gcp.google
        .add_version("portainer-db", b"pka-gcp-impersonated");
    gcp.google.require_impersonation();
    let target = gcp.tmpfs.join("portainer");
    let secrets = secret("db", "encryption-key", "sm", "portainer-db", &target, "");

    let direct = gcp.agent(false, &secrets).run();
    let impersonated = gcp.agent(true, &secrets).run();

    direct.assert_exit(77);
    impersonated.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-gcp-impersonated"));
    assert_eq!(
        gcp.google.request_counts().get("issued_service_account"),
        Some(&serde_json::json!(1))
    );
    gcp.assert_log_clean(&impersonated, &[b"pka-gcp-impersonated"]);
}

#[test]
fn missing_secret_exits_66() {
    let gcp = Gcp::start();
    let target = gcp.tmpfs.join("portainer");

    let output = gcp.fetch(&secret(
        "db",
        "encryption-key",
        "sm",
        "no-such-secret",
        &target,
        "",
    ));

    output.assert_exit(66);
    assert_absent(&target);
}

#[test]
fn disabled_version_exits_66() {
    let gcp = Gcp::start();
    let version = gcp.google.add_version("portainer-db", b"pka-gcp-key");
    gcp.google.disable("portainer-db", version);
    let target = gcp.tmpfs.join("portainer");

    let output = gcp.fetch(&secret(
        "db",
        "encryption-key",
        "sm",
        "portainer-db",
        &target,
        &format!("version = {version}"),
    ));

    output.assert_exit(66);
    assert_absent(&target);
    assert!(output.log().contains("DISABLED"), "{}", output.log());
}

#[test]
fn denied_secret_exits_77() {
    let gcp = Gcp::start();
    gcp.google.add_version("portainer-db", b"pka-gcp-key");
    gcp.google.deny("portainer-db");
    let target = gcp.tmpfs.join("portainer");

    let output = gcp.fetch(&secret(
        "db",
        "encryption-key",
        "sm",
        "portainer-db",
        &target,
        "",
    ));

    output.assert_exit(77);
    assert_absent(&target);
    assert!(output.log().contains("secretAccessor"), "{}", output.log());
}

#[test]
fn bad_checksum_exits_65() {
    let gcp = Gcp::start();
    gcp.google.add_version("portainer-db", b"pka-gcp-key");
    gcp.google.corrupt_checksum("portainer-db");
    let target = gcp.tmpfs.join("portainer");

    let output = gcp.fetch(&secret(
        "db",
        "encryption-key",
        "sm",
        "portainer-db",
        &target,
        "",
    ));

    output.assert_exit(65);
    assert_absent(&target);
    assert!(output.log().contains("CRC32C"), "{}", output.log());
    gcp.assert_log_clean(&output, &[b"pka-gcp-key"]);
}

#[test]
fn empty_value_exits_65() {
    let gcp = Gcp::start();
    gcp.google.add_version("portainer-db", b"");
    let target = gcp.tmpfs.join("portainer");

    let output = gcp.fetch(&secret(
        "db",
        "encryption-key",
        "sm",
        "portainer-db",
        &target,
        "",
    ));

    output.assert_exit(65);
    assert_absent(&target);
}

#[test]
fn token_file_replaced_between_runs() {
    let gcp = Gcp::start();
    gcp.google.add_version("portainer-db", b"pka-gcp-key");
    let target = gcp.tmpfs.join("portainer");
    let secrets = secret("db", "encryption-key", "sm", "portainer-db", &target, "");

    let first = gcp.fetch(&secrets);
    std::fs::remove_file(&target).expect("remove the first file");
    std::fs::write(&gcp.token_file, gcp.google.subject_token(-60)).expect("expired token");
    let expired = gcp.fetch(&secrets);
    let fresh = gcp.google.subject_token(3600);
    std::fs::write(&gcp.token_file, &fresh).expect("fresh token");
    let third = gcp.fetch(&secrets);

    first.assert_exit(0);
    expired.assert_exit(77);
    assert!(expired.log().contains("invalid_grant"), "{}", expired.log());
    third.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-gcp-key"));
    assert_log_free_of(&third, &[("new subject token", fresh.as_bytes())]);
}

#[test]
fn no_metadata_fallback_without_configuration() {
    let gcp = Gcp::start();
    let target = gcp.tmpfs.join("portainer");
    let store = format!(
        "[stores.sm]\ntype = \"gcp\"\nproject = \"{}\"\nendpoint_url = \"{}\"\n",
        GoogleSecretManager::PROJECT_ID,
        gcp.google.url()
    );
    let config = write_config(
        gcp.dir.path(),
        &format!(
            "{store}\n{}",
            secret("db", "encryption-key", "sm", "portainer-db", &target, "")
        ),
    );

    let output = Agent::fetch(&config).run();

    output.assert_exit(78);
    assert!(
        output.log().contains("allow_metadata_server"),
        "{}",
        output.log()
    );
}
