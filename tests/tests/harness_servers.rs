//! Checks that the harness starts each server and prepares it as the fetch tests
//! expect. These run without the agent binary.

use integration_tests::doubles::ServiceAccount;
use integration_tests::fs::{DiskDir, FileFacts, Tmpfs, filesystem_magic};
use integration_tests::http;
use integration_tests::{KvVersion, Moto, OpenBao, PodIdentity, TokenReview};
use serde_json::json;

#[test]
fn openbao_kv_versions_and_soft_delete() {
    let bao = OpenBao::start();
    bao.enable_kv("kv1", KvVersion::V1);
    bao.kv1_put("kv1", "app", &json!({ "key": "one" }));
    let first = bao.kv2_put("secret", "app", &json!({ "key": "v1" }));
    let second = bao.kv2_put("secret", "app", &json!({ "key": "v2" }));
    bao.kv2_soft_delete("secret", "app", &[first]);

    assert_eq!(bao.read("kv1/app")["data"]["key"], "one");
    assert_eq!(second, first + 1);
    assert_eq!(bao.read("secret/data/app")["data"]["data"]["key"], "v2");
    let deleted = bao.request("GET", &format!("secret/data/app?version={first}"), None);
    assert_eq!(deleted.status, 404);
    assert!(bao.client_tokens_seen().contains(bao.root_token()));
}

#[test]
fn openbao_namespace_has_own_mounts() {
    let bao = OpenBao::start();
    bao.create_namespace("team-a");
    let team = bao.in_namespace("team-a");
    team.enable_kv("secret", KvVersion::V2);
    team.kv2_put("secret", "app", &json!({ "key": "in-namespace" }));

    assert_eq!(
        team.read("secret/data/app")["data"]["data"]["key"],
        "in-namespace"
    );
    assert_eq!(bao.request("GET", "secret/data/app", None).status, 404);
}

#[test]
fn openbao_kubernetes_login_through_tokenreview() {
    let bao = OpenBao::start();
    let tokenreview = TokenReview::start();
    let account = ServiceAccount::new("portainer", "portainer", "sa-uid");
    bao.enable_kubernetes_auth("kubernetes", &tokenreview);
    bao.write_read_policy("read-app", &["secret/data/app"]);
    bao.write_kubernetes_role("kubernetes", "portainer", &account, &["read-app"]);
    let accepted = tokenreview.issue(&account);
    let unknown = account.jwt();

    let login = bao.request(
        "POST",
        "auth/kubernetes/login",
        Some(&json!({ "role": "portainer", "jwt": accepted })),
    );
    let rejected = bao.request(
        "POST",
        "auth/kubernetes/login",
        Some(&json!({ "role": "portainer", "jwt": unknown })),
    );
    tokenreview.revoke(&accepted);
    let revoked = bao.request(
        "POST",
        "auth/kubernetes/login",
        Some(&json!({ "role": "portainer", "jwt": accepted })),
    );

    assert_eq!(login.status, 200, "{}", login.text());
    assert_eq!(
        login.json()["auth"]["metadata"]["service_account_uid"],
        "sa-uid"
    );
    assert_eq!(rejected.status, 403, "{}", rejected.text());
    assert_eq!(revoked.status, 403, "{}", revoked.text());
    assert!(
        tokenreview.output().contains("tokenreviews"),
        "{}",
        tokenreview.output()
    );
}

#[test]
fn moto_stores_string_and_binary_secrets() {
    let moto = Moto::start();
    let arn = moto.create_secret_string("portainer/db", "first");
    let version = moto.put_secret_string("portainer/db", "second", &[]);
    moto.create_secret_binary("portainer/binary", b"\x00\xff");

    let current = moto.secrets_manager("GetSecretValue", &json!({ "SecretId": arn }));
    let binary = moto.secrets_manager("GetSecretValue", &json!({ "SecretId": "portainer/binary" }));

    assert_eq!(current.status, 200, "{}", current.text());
    assert_eq!(current.json()["SecretString"], "second");
    assert_eq!(current.json()["VersionId"], version.as_str());
    assert_eq!(binary.json()["SecretBinary"], "AP8=");
}

#[test]
fn pod_identity_issues_for_token_file_only() {
    let pod_identity = PodIdentity::start();
    let token = std::fs::read_to_string(pod_identity.token_file()).expect("read token file");
    let url = pod_identity.credentials_url();

    let accepted =
        http::send("GET", &url, &[("Authorization", token.as_str())], None).expect("GET");
    let stale = token.clone();
    pod_identity.rotate_token();
    let rejected =
        http::send("GET", &url, &[("Authorization", stale.as_str())], None).expect("GET");
    let missing = http::send("GET", &url, &[], None).expect("GET");

    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert!(accepted.json()["SecretAccessKey"].is_string());
    assert_eq!(rejected.status, 403);
    assert_eq!(missing.status, 400);
    assert_eq!(pod_identity.issued_credentials().len(), 1);
}

#[test]
fn tmpfs_and_disk_dirs_have_expected_filesystems() {
    let tmpfs = Tmpfs::mount();
    let disk = DiskDir::new();
    std::fs::write(tmpfs.join("probe"), b"x").expect("write to tmpfs");

    assert_eq!(filesystem_magic(tmpfs.path()), 0x0102_1994);
    assert_ne!(filesystem_magic(disk.path()), 0x0102_1994);
    assert_eq!(
        FileFacts::read(&tmpfs.join("probe")).map(|facts| facts.bytes),
        Some(b"x".to_vec())
    );
}
