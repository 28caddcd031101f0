//! `fetch` against the Entra ID and Key Vault double, with Azure workload identity:
//! the federated token file is exchanged for an access token after the vault's
//! challenge is verified.

use std::path::PathBuf;

use base64::Engine;

use integration_tests::config::{azure_store, secret};
use integration_tests::{
    Agent, AgentOutput, EntraKeyVault, Expected, Tmpfs, assert_absent, assert_file,
    assert_log_free_of, write_config,
};
use tempfile::TempDir;

struct Azure {
    keyvault: EntraKeyVault,
    token: String,
    token_file: PathBuf,
    tmpfs: Tmpfs,
    dir: TempDir,
}

impl Azure {
    fn start() -> Self {
        Self::with(EntraKeyVault::start())
    }

    fn with(keyvault: EntraKeyVault) -> Self {
        let dir = TempDir::new().expect("temporary directory");
        let token = keyvault.federated_token(3600);
        let token_file = dir.path().join("azure-identity-token");
        std::fs::write(&token_file, &token).expect("write federated token");
        Self {
            keyvault,
            token,
            token_file,
            tmpfs: Tmpfs::mount(),
            dir,
        }
    }

    fn agent(&self, secrets: &str) -> Agent {
        let ca = self.keyvault.ca().ca_file();
        let store = azure_store(
            "kv",
            self.keyvault.url(),
            &self.token_file,
            &format!("ca_cert = \"{}\"", ca.display()),
        );
        let config = write_config(
            self.dir.path(),
            &format!("deadline_seconds = 20\n{store}\n{secrets}"),
        );
        Agent::fetch(&config).trace()
    }

    fn fetch(&self, secrets: &str) -> AgentOutput {
        self.agent(secrets).run()
    }

    /// Checks that the log has no federated token, no access token and none of `values`.
    fn assert_log_clean(&self, output: &AgentOutput, values: &[&[u8]]) {
        let tokens = self.keyvault.issued_tokens();
        let mut secrets: Vec<(&str, &[u8])> = vec![("federated token", self.token.as_bytes())];
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
fn value_with_newline_kept_exactly() {
    let azure = Azure::start();
    let version = azure
        .keyvault
        .add_version("portainer-db", "pka-azure-key-5e1\n");
    let target = azure.tmpfs.join("portainer");

    let output = azure.fetch(&secret(
        "db",
        "encryption-key",
        "kv",
        "portainer-db",
        &target,
        "",
    ));

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-azure-key-5e1\n"));
    assert!(
        output.log().contains(&version),
        "the log does not name version {version}"
    );
    assert!(
        !azure.keyvault.issued_tokens().is_empty(),
        "the agent obtained no access token"
    );
    azure.assert_log_clean(&output, &[b"pka-azure-key-5e1"]);
}

#[test]
fn trailing_newline_stripped() {
    let azure = Azure::start();
    azure
        .keyvault
        .add_version("admin", "pka-azure-admin-pass\n");
    let target = azure.tmpfs.join("admin-password");

    let output = azure.fetch(&secret(
        "admin",
        "admin-password",
        "kv",
        "admin",
        &target,
        "newline = \"strip-one\"",
    ));

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-azure-admin-pass"));
    azure.assert_log_clean(&output, &[b"pka-azure-admin-pass"]);
}

#[test]
fn binary_key_through_base64() {
    let azure = Azure::start();
    let key: &[u8] = b"\x00\xff\x80pka\xc3\x28\n\x00";
    let encoded = base64::engine::general_purpose::STANDARD.encode(key);
    azure.keyvault.add_version("binary", &encoded);
    let target = azure.tmpfs.join("portainer");

    let output = azure.fetch(&secret(
        "db",
        "encryption-key",
        "kv",
        "binary",
        &target,
        "encoding = \"base64\"",
    ));

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(key));
    azure.assert_log_clean(&output, &[key]);
}

#[test]
fn pinned_version_and_latest() {
    let azure = Azure::start();
    let first = azure
        .keyvault
        .add_version("portainer-db", "pka-azure-first");
    azure
        .keyvault
        .add_version("portainer-db", "pka-azure-second");
    let pinned = azure.tmpfs.join("pinned");
    let latest = azure.tmpfs.join("latest");
    let secrets = [
        secret(
            "pinned",
            "generic",
            "kv",
            "portainer-db",
            &pinned,
            &format!("version = \"{first}\""),
        ),
        secret("latest", "generic", "kv", "portainer-db", &latest, ""),
    ]
    .concat();

    let output = azure.fetch(&secrets);

    output.assert_exit(0);
    assert_file(&pinned, Expected::default_owner(b"pka-azure-first"));
    assert_file(&latest, Expected::default_owner(b"pka-azure-second"));
}

#[test]
fn missing_secret_exits_66() {
    let azure = Azure::start();
    let target = azure.tmpfs.join("portainer");

    let output = azure.fetch(&secret(
        "db",
        "encryption-key",
        "kv",
        "no-such-secret",
        &target,
        "",
    ));

    output.assert_exit(66);
    assert_absent(&target);
    assert!(output.log().contains("SecretNotFound"), "{}", output.log());
}

#[test]
fn missing_version_exits_66() {
    let azure = Azure::start();
    azure.keyvault.add_version("portainer-db", "pka-azure-key");
    let target = azure.tmpfs.join("portainer");

    let output = azure.fetch(&secret(
        "db",
        "encryption-key",
        "kv",
        "portainer-db",
        &target,
        "version = \"0123456789abcdef0123456789abcdef\"",
    ));

    output.assert_exit(66);
    assert_absent(&target);
}

#[test]
fn rbac_denial_exits_77() {
    let azure = Azure::start();
    azure.keyvault.add_version("portainer-db", "pka-azure-key");
    azure.keyvault.deny_rbac("portainer-db");
    let target = azure.tmpfs.join("portainer");

    let output = azure.fetch(&secret(
        "db",
        "encryption-key",
        "kv",
        "portainer-db",
        &target,
        "",
    ));

    output.assert_exit(77);
    assert_absent(&target);
    assert!(output.log().contains("ForbiddenByRbac"), "{}", output.log());
    assert!(
        output.log().contains("Key Vault Secrets User"),
        "{}",
        output.log()
    );
}

#[test]
fn disabled_secret_exits_66() {
    let azure = Azure::start();
    azure.keyvault.add_version("portainer-db", "pka-azure-key");
    azure.keyvault.disable("portainer-db");
    let target = azure.tmpfs.join("portainer");

    let output = azure.fetch(&secret(
        "db",
        "encryption-key",
        "kv",
        "portainer-db",
        &target,
        "",
    ));

    output.assert_exit(66);
    assert_absent(&target);
    assert!(output.log().contains("SecretDisabled"), "{}", output.log());
}

#[test]
fn empty_value_exits_65() {
    let azure = Azure::start();
    azure.keyvault.add_version("portainer-db", "");
    let target = azure.tmpfs.join("portainer");

    let output = azure.fetch(&secret(
        "db",
        "encryption-key",
        "kv",
        "portainer-db",
        &target,
        "",
    ));

    output.assert_exit(65);
    assert_absent(&target);
}

#[test]
fn challenge_for_other_resource_is_refused() {
    let azure = Azure::start();
    azure.keyvault.add_version("portainer-db", "pka-azure-key");
    azure
        .keyvault
        .set_challenge_resource("https://vault.azure.net");
    let target = azure.tmpfs.join("portainer");

    let output = azure.fetch(&secret(
        "db",
        "encryption-key",
        "kv",
        "portainer-db",
        &target,
        "",
    ));

    output.assert_exit(65);
    assert_absent(&target);
    assert!(
        output.log().contains("does not match the vault host"),
        "{}",
        output.log()
    );
    assert_eq!(azure.keyvault.request_counts().get("token_issued"), None);
}

#[test]
fn token_file_replaced_between_runs() {
    let azure = Azure::start();
    azure.keyvault.add_version("portainer-db", "pka-azure-key");
    let target = azure.tmpfs.join("portainer");
    let secrets = secret("db", "encryption-key", "kv", "portainer-db", &target, "");

    let first = azure.fetch(&secrets);
    std::fs::remove_file(&target).expect("remove the first file");
    std::fs::write(&azure.token_file, azure.keyvault.federated_token(-60)).expect("expired token");
    let expired = azure.fetch(&secrets);
    let fresh = azure.keyvault.federated_token(3600);
    std::fs::write(&azure.token_file, &fresh).expect("fresh token");
    let third = azure.fetch(&secrets);

    first.assert_exit(0);
    expired.assert_exit(77);
    assert!(expired.log().contains("AADSTS700024"), "{}", expired.log());
    third.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-azure-key"));
    assert_log_free_of(&third, &[("new federated token", fresh.as_bytes())]);
}

#[test]
fn unknown_federated_identity_exits_77() {
    let azure = Azure::start();
    azure.keyvault.add_version("portainer-db", "pka-azure-key");
    let other = integration_tests::jwt::service_account_jwt_with(
        "other",
        "intruder",
        "intruder-uid",
        &[integration_tests::cloud::AZURE_TOKEN_AUDIENCE],
        3600,
    );
    std::fs::write(&azure.token_file, &other).expect("write token");
    let target = azure.tmpfs.join("portainer");

    let output = azure.fetch(&secret(
        "db",
        "encryption-key",
        "kv",
        "portainer-db",
        &target,
        "",
    ));

    output.assert_exit(77);
    assert_absent(&target);
    assert!(output.log().contains("AADSTS70021"), "{}", output.log());
    assert_log_free_of(&output, &[("federated token", other.as_bytes())]);
}

#[test]
fn ipv6_literal_vault_url() {
    let azure = Azure::with(EntraKeyVault::start_ipv6());
    assert!(azure.keyvault.url().starts_with("https://[::1]:"));
    azure.keyvault.add_version("portainer-db", "pka-azure-ipv6");
    let target = azure.tmpfs.join("portainer");

    let output = azure.fetch(&secret(
        "db",
        "encryption-key",
        "kv",
        "portainer-db",
        &target,
        "",
    ));

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-azure-ipv6"));
}
