//! `fetch` against a real OpenBao dev server, logging in through Kubernetes auth
//! (backed by the TokenReview double) or with a token file.

use std::path::PathBuf;

use integration_tests::config::{secret, vault_kubernetes_store, vault_token_file_store};
use integration_tests::doubles::ServiceAccount;
use integration_tests::{
    Agent, AgentOutput, Expected, KvVersion, OpenBao, Tmpfs, TokenReview, assert_absent,
    assert_file, assert_log_free_of, write_config,
};
use serde_json::json;
use tempfile::TempDir;

/// OpenBao with Kubernetes auth, a role `portainer` bound to portainer/portainer,
/// and a policy `agent` that reads the given API paths.
struct Vault {
    bao: OpenBao,
    tokenreview: TokenReview,
    account: ServiceAccount,
    jwt: String,
    jwt_file: PathBuf,
    tmpfs: Tmpfs,
    dir: TempDir,
}

impl Vault {
    fn start(readable: &[&str]) -> Self {
        let bao = OpenBao::start();
        let tokenreview = TokenReview::start();
        let account = ServiceAccount::new("portainer", "portainer", "portainer-uid");
        bao.enable_kubernetes_auth("kubernetes", &tokenreview);
        bao.write_read_policy("agent", readable);
        bao.write_kubernetes_role("kubernetes", "portainer", &account, &["agent"]);
        let jwt = tokenreview.issue(&account);
        let dir = TempDir::new().expect("temporary directory");
        let jwt_file = dir.path().join("token");
        std::fs::write(&jwt_file, &jwt).expect("write service account token");
        Self {
            bao,
            tokenreview,
            account,
            jwt,
            jwt_file,
            tmpfs: Tmpfs::mount(),
            dir,
        }
    }

    fn store(&self) -> String {
        vault_kubernetes_store("bao", self.bao.address(), "portainer", &self.jwt_file)
    }

    fn fetch(&self, store: &str, secrets: &str) -> AgentOutput {
        let config = write_config(
            self.dir.path(),
            &format!("deadline_seconds = 20\n{store}\n{secrets}"),
        );
        Agent::fetch(&config).trace().run()
    }

    /// Checks that the log has no Vault token, no service account JWT, and none of `values`.
    fn assert_log_clean(&self, output: &AgentOutput, values: &[&[u8]]) {
        let tokens = self.bao.client_tokens_seen();
        let mut secrets: Vec<(&str, &[u8])> = vec![
            ("service account JWT", self.jwt.as_bytes()),
            (
                "TokenReview reviewer JWT",
                self.tokenreview.reviewer_jwt().as_bytes(),
            ),
        ];
        secrets.extend(tokens.iter().map(|token| ("Vault token", token.as_bytes())));
        secrets.extend(values.iter().map(|value| ("secret value", *value)));
        assert!(
            tokens.len() >= 2,
            "expected the root token and a login token in the audit log: {tokens:?}"
        );
        assert_log_free_of(output, &secrets);
    }
}

#[test]
fn kv2_value_keeps_trailing_newline_exactly() {
    let vault = Vault::start(&["secret/data/portainer/db"]);
    let value = "pka-database-key-5d1f0c\n";
    vault
        .bao
        .kv2_put("secret", "portainer/db", &json!({ "key": value }));
    let target = vault.tmpfs.join("portainer");

    let output = vault.fetch(
        &vault.store(),
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/db",
            &target,
            "",
        ),
    );

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(value.as_bytes()));
    vault.assert_log_clean(&output, &[value.trim_end().as_bytes()]);
}

#[test]
fn newline_policies_apply_per_file() {
    let vault = Vault::start(&["secret/data/keys/*"]);
    let cases: [(&str, &str, &str, &[u8]); 5] = [
        ("strip-one-with-two", "strip-one", "key-a\n\n", b"key-a\n"),
        ("strip-one-without", "strip-one", "key-b", b"key-b"),
        ("ensure-one-without", "ensure-one", "key-c", b"key-c\n"),
        ("ensure-one-with", "ensure-one", "key-d\n", b"key-d\n"),
        ("exact-crlf", "exact", "key-e\r\n", b"key-e\r\n"),
    ];
    let mut secrets = String::new();
    for (name, policy, value, _) in &cases {
        vault
            .bao
            .kv2_put("secret", &format!("keys/{name}"), &json!({ "key": value }));
        let target = vault.tmpfs.join(name);
        let extra = format!("newline = \"{policy}\"");
        secrets.push_str(&secret(
            name,
            "generic",
            "bao",
            &format!("secret/keys/{name}"),
            &target,
            &extra,
        ));
    }

    let output = vault.fetch(&vault.store(), &secrets);

    output.assert_exit(0);
    for (name, _, _, expected) in &cases {
        assert_file(&vault.tmpfs.join(name), Expected::default_owner(expected));
    }
}

#[test]
fn base64_key_with_nul_and_ff_is_decoded() {
    let vault = Vault::start(&["secret/data/portainer/binary"]);
    let key: &[u8] = b"\x00\x01\xff\xfe\x00binary\n\x80";
    // base64 of the bytes above
    let encoded = "AAH//gBiaW5hcnkKgA==";
    vault
        .bao
        .kv2_put("secret", "portainer/binary", &json!({ "key": encoded }));
    let target = vault.tmpfs.join("portainer");
    let extra = "encoding = \"base64\"\nmode = \"0440\"\nowner = \"1000:1000\"";

    let output = vault.fetch(
        &vault.store(),
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/binary",
            &target,
            extra,
        ),
    );

    output.assert_exit(0);
    assert_file(
        &target,
        Expected {
            bytes: key,
            mode: 0o440,
            uid: 1000,
            gid: 1000,
        },
    );
    vault.assert_log_clean(&output, &[encoded.as_bytes()]);
}

#[test]
fn kv1_mount_detected_and_pinned() {
    let vault = Vault::start(&["kv1/portainer/db"]);
    vault.bao.enable_kv("kv1", KvVersion::V1);
    vault
        .bao
        .kv1_put("kv1", "portainer/db", &json!({ "key": "pka-kv1-key-0e4a" }));
    let detected = vault.tmpfs.join("detected");
    let pinned = vault.tmpfs.join("pinned");
    let secrets = secret(
        "detected",
        "generic",
        "bao",
        "kv1/portainer/db",
        &detected,
        "",
    );
    let store_with_version = vault
        .store()
        .replace("type = \"vault\"\n", "type = \"vault\"\nkv_version = 1\n");

    let detected_run = vault.fetch(&vault.store(), &secrets);
    let pinned_run = vault.fetch(
        &store_with_version,
        &secret("pinned", "generic", "bao", "kv1/portainer/db", &pinned, ""),
    );

    detected_run.assert_exit(0);
    pinned_run.assert_exit(0);
    assert_file(&detected, Expected::default_owner(b"pka-kv1-key-0e4a"));
    assert_file(&pinned, Expected::default_owner(b"pka-kv1-key-0e4a"));
    vault.assert_log_clean(&detected_run, &[b"pka-kv1-key-0e4a"]);
}

#[test]
fn kv2_pinned_version_is_fetched() {
    let vault = Vault::start(&["secret/data/portainer/db"]);
    let first = vault.bao.kv2_put(
        "secret",
        "portainer/db",
        &json!({ "key": "pka-version-one" }),
    );
    vault.bao.kv2_put(
        "secret",
        "portainer/db",
        &json!({ "key": "pka-version-two" }),
    );
    let target = vault.tmpfs.join("portainer");
    let extra = format!("version = \"{first}\"");

    let output = vault.fetch(
        &vault.store(),
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/db",
            &target,
            &extra,
        ),
    );

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-version-one"));
}

#[test]
fn kv2_soft_deleted_version_is_not_found() {
    let vault = Vault::start(&["secret/data/portainer/db"]);
    let first = vault
        .bao
        .kv2_put("secret", "portainer/db", &json!({ "key": "pka-deleted" }));
    vault
        .bao
        .kv2_put("secret", "portainer/db", &json!({ "key": "pka-current" }));
    vault
        .bao
        .kv2_soft_delete("secret", "portainer/db", &[first]);
    let target = vault.tmpfs.join("portainer");
    let extra = format!("version = \"{first}\"");

    let output = vault.fetch(
        &vault.store(),
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/db",
            &target,
            &extra,
        ),
    );

    output.assert_exit(66);
    assert_absent(&target);
}

#[test]
fn kv2_latest_soft_deleted_is_not_found() {
    let vault = Vault::start(&["secret/data/portainer/db"]);
    let only = vault
        .bao
        .kv2_put("secret", "portainer/db", &json!({ "key": "pka-deleted" }));
    vault.bao.kv2_soft_delete("secret", "portainer/db", &[only]);
    let target = vault.tmpfs.join("portainer");

    let output = vault.fetch(
        &vault.store(),
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/db",
            &target,
            "",
        ),
    );

    output.assert_exit(66);
    assert_absent(&target);
}

#[test]
fn namespace_is_sent_on_every_call() {
    // The root-namespace role may read nothing that this test writes.
    let vault = Vault::start(&["secret/data/unrelated"]);
    vault.bao.create_namespace("team-a");
    let team = vault.bao.in_namespace("team-a");
    team.enable_kv("secret", KvVersion::V2);
    team.kv2_put(
        "secret",
        "portainer/db",
        &json!({ "key": "pka-namespaced-key" }),
    );
    // The same path in the root namespace contains a decoy.
    vault.bao.kv2_put(
        "secret",
        "portainer/db",
        &json!({ "key": "pka-root-namespace-decoy" }),
    );
    team.enable_kubernetes_auth("kubernetes", &vault.tokenreview);
    team.write_read_policy("agent", &["secret/data/portainer/db"]);
    team.write_kubernetes_role("kubernetes", "portainer", &vault.account, &["agent"]);
    let store = vault.store().replace(
        "type = \"vault\"\n",
        "type = \"vault\"\nnamespace = \"team-a\"\n",
    );
    let target = vault.tmpfs.join("portainer");

    let output = vault.fetch(
        &store,
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/db",
            &target,
            "",
        ),
    );

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-namespaced-key"));
    vault.assert_log_clean(&output, &[b"pka-namespaced-key"]);
}

#[test]
fn kv2_secret_named_data_is_not_api_path() {
    let vault = Vault::start(&["secret/data/data/x", "secret/data/x"]);
    vault
        .bao
        .kv2_put("secret", "data/x", &json!({ "key": "pka-key-under-data" }));
    vault
        .bao
        .kv2_put("secret", "x", &json!({ "key": "pka-key-at-x" }));
    let target = vault.tmpfs.join("portainer");

    let output = vault.fetch(
        &vault.store(),
        &secret("db", "encryption-key", "bao", "secret/data/x", &target, ""),
    );

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-key-under-data"));
}

#[test]
fn forbidden_path_exits_77() {
    let vault = Vault::start(&["secret/data/other"]);
    vault
        .bao
        .kv2_put("secret", "portainer/db", &json!({ "key": "pka-forbidden" }));
    let target = vault.tmpfs.join("portainer");

    let output = vault.fetch(
        &vault.store(),
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/db",
            &target,
            "",
        ),
    );

    output.assert_exit(77);
    assert_absent(&target);
}

#[test]
fn missing_secret_exits_66() {
    let vault = Vault::start(&["secret/data/portainer/*"]);
    let target = vault.tmpfs.join("portainer");

    let output = vault.fetch(
        &vault.store(),
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/none",
            &target,
            "",
        ),
    );

    output.assert_exit(66);
    assert_absent(&target);
}

#[test]
fn rejected_login_exits_77() {
    let vault = Vault::start(&["secret/data/portainer/db"]);
    vault
        .bao
        .kv2_put("secret", "portainer/db", &json!({ "key": "pka-key" }));
    std::fs::write(&vault.jwt_file, vault.account.jwt()).expect("write unknown JWT");
    let target = vault.tmpfs.join("portainer");

    let output = vault.fetch(
        &vault.store(),
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/db",
            &target,
            "",
        ),
    );

    output.assert_exit(77);
    assert_absent(&target);
}

#[test]
fn replaced_token_file_is_read_at_next_login() {
    let vault = Vault::start(&["secret/data/portainer/db"]);
    vault
        .bao
        .kv2_put("secret", "portainer/db", &json!({ "key": "pka-rotation" }));
    let first_target = vault.tmpfs.join("first");
    let second_target = vault.tmpfs.join("second");
    let stale_target = vault.tmpfs.join("stale");
    let first_run = vault.fetch(
        &vault.store(),
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/db",
            &first_target,
            "",
        ),
    );

    // The kubelet replaces the projected token; the old one stops working.
    let replacement = vault.tokenreview.issue(&vault.account);
    vault.tokenreview.revoke(&vault.jwt);
    std::fs::write(&vault.jwt_file, &replacement).expect("write replacement JWT");
    let second_run = vault.fetch(
        &vault.store(),
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/db",
            &second_target,
            "",
        ),
    );
    std::fs::write(&vault.jwt_file, &vault.jwt).expect("write stale JWT");
    let stale_run = vault.fetch(
        &vault.store(),
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/db",
            &stale_target,
            "",
        ),
    );

    first_run.assert_exit(0);
    second_run.assert_exit(0);
    stale_run.assert_exit(77);
    assert_file(&first_target, Expected::default_owner(b"pka-rotation"));
    assert_file(&second_target, Expected::default_owner(b"pka-rotation"));
    assert_absent(&stale_target);
    assert_log_free_of(&second_run, &[("replacement JWT", replacement.as_bytes())]);
}

#[test]
fn token_file_auth_reads_secret() {
    let vault = Vault::start(&["secret/data/portainer/db"]);
    vault.bao.kv2_put(
        "secret",
        "portainer/db",
        &json!({ "key": "pka-token-file-key" }),
    );
    let token = vault.bao.create_token(&["agent"]);
    let token_file = vault.dir.path().join("vault-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write Vault token");
    let store = vault_token_file_store("bao", vault.bao.address(), &token_file);
    let target = vault.tmpfs.join("portainer");

    let output = vault.fetch(
        &store,
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/db",
            &target,
            "",
        ),
    );

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-token-file-key"));
    assert_log_free_of(
        &output,
        &[
            ("Vault token", token.as_bytes()),
            ("secret value", b"pka-token-file-key"),
        ],
    );
}

#[test]
fn json_field_is_extracted() {
    let vault = Vault::start(&["secret/data/portainer/bundle"]);
    vault.bao.kv2_put(
        "secret",
        "portainer/bundle",
        &json!({ "key": "pka-field-key", "password": "pka-field-password" }),
    );
    let key_target = vault.tmpfs.join("portainer");
    let password_target = vault.tmpfs.join("admin-password");
    let secrets = [
        secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/bundle",
            &key_target,
            "field = \"key\"",
        ),
        secret(
            "admin",
            "admin-password",
            "bao",
            "secret/portainer/bundle",
            &password_target,
            "field = \"password\"",
        ),
    ]
    .concat();

    let output = vault.fetch(&vault.store(), &secrets);

    output.assert_exit(0);
    assert_file(&key_target, Expected::default_owner(b"pka-field-key"));
    assert_file(
        &password_target,
        Expected::default_owner(b"pka-field-password"),
    );
    vault.assert_log_clean(&output, &[b"pka-field-key", b"pka-field-password"]);
}

#[test]
fn missing_json_field_exits_66() {
    let vault = Vault::start(&["secret/data/portainer/bundle"]);
    vault.bao.kv2_put(
        "secret",
        "portainer/bundle",
        &json!({ "key": "pka-field-key", "other": "x" }),
    );
    let target = vault.tmpfs.join("portainer");
    let extra = "field = \"missing\"";

    let output = vault.fetch(
        &vault.store(),
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/bundle",
            &target,
            extra,
        ),
    );

    output.assert_exit(66);
    assert_absent(&target);
}

#[test]
fn empty_value_exits_65_without_file() {
    let vault = Vault::start(&["secret/data/portainer/db"]);
    vault
        .bao
        .kv2_put("secret", "portainer/db", &json!({ "key": "" }));
    let target = vault.tmpfs.join("portainer");

    let output = vault.fetch(
        &vault.store(),
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/db",
            &target,
            "",
        ),
    );

    output.assert_exit(65);
    assert_absent(&target);
}

#[test]
fn newline_only_key_stripped_to_empty_exits_65() {
    let vault = Vault::start(&["secret/data/portainer/db"]);
    vault
        .bao
        .kv2_put("secret", "portainer/db", &json!({ "key": "\n" }));
    let target = vault.tmpfs.join("portainer");
    let extra = "newline = \"strip-one\"";

    let output = vault.fetch(
        &vault.store(),
        &secret(
            "db",
            "encryption-key",
            "bao",
            "secret/portainer/db",
            &target,
            extra,
        ),
    );

    output.assert_exit(65);
    assert_absent(&target);
}

#[test]
fn admin_password_rules() {
    let vault = Vault::start(&["secret/data/passwords/*"]);
    let longest = "p".repeat(72);
    let too_long = "p".repeat(73);
    let bcrypt_hash = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";
    let cases: [(&str, &str, i32); 4] = [
        ("longest", &longest, 0),
        ("longest-with-newline", &format!("{longest}\n"), 0),
        ("too-long", &too_long, 65),
        ("bcrypt-hash", bcrypt_hash, 65),
    ];

    for (name, password, expected_exit) in cases {
        vault.bao.kv2_put(
            "secret",
            &format!("passwords/{name}"),
            &json!({ "password": password }),
        );
        let target = vault.tmpfs.join(name);
        let path = format!("secret/passwords/{name}");

        let output = vault.fetch(
            &vault.store(),
            &secret("admin", "admin-password", "bao", &path, &target, ""),
        );

        assert_eq!(
            output.code(),
            Some(expected_exit),
            "case {name}:\n{}",
            output.log()
        );
        if expected_exit == 0 {
            assert_file(&target, Expected::default_owner(password.as_bytes()));
            vault.assert_log_clean(&output, &[password.trim_end().as_bytes()]);
        } else {
            assert_absent(&target);
        }
    }
}
