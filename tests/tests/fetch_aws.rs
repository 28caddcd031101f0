//! `fetch` against moto's Secrets Manager, with credentials from environment keys,
//! IRSA (web identity through moto's STS) and EKS Pod Identity (the double).

use integration_tests::config::{aws_store, secret};
use integration_tests::moto::{ACCESS_KEY_ID, SECRET_ACCESS_KEY};
use integration_tests::{
    Agent, AgentOutput, Expected, Moto, PodIdentity, Tmpfs, assert_absent, assert_file,
    assert_log_free_of, write_config,
};
use serde_json::json;
use tempfile::TempDir;

struct Aws {
    moto: Moto,
    tmpfs: Tmpfs,
    dir: TempDir,
}

impl Aws {
    fn start() -> Self {
        Self {
            moto: Moto::start(),
            tmpfs: Tmpfs::mount(),
            dir: TempDir::new().expect("temporary directory"),
        }
    }

    fn agent(&self, secrets: &str) -> Agent {
        let store = aws_store("aws", self.moto.url());
        let config = write_config(
            self.dir.path(),
            &format!("deadline_seconds = 20\n{store}\n{secrets}"),
        );
        Agent::fetch(&config).trace()
    }

    /// Runs the agent with static keys from the environment.
    fn fetch_with_keys(&self, secrets: &str) -> AgentOutput {
        self.agent(secrets)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
            .run()
    }
}

#[test]
fn secret_string_with_newline_kept_exactly() {
    let aws = Aws::start();
    aws.moto
        .create_secret_string("portainer/db", "pka-aws-key-71c2\n");
    let target = aws.tmpfs.join("portainer");

    let output = aws.fetch_with_keys(&secret(
        "db",
        "encryption-key",
        "aws",
        "portainer/db",
        &target,
        "",
    ));

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-aws-key-71c2\n"));
    assert_log_free_of(
        &output,
        &[
            ("secret value", b"pka-aws-key-71c2"),
            ("AWS secret key", SECRET_ACCESS_KEY.as_bytes()),
        ],
    );
}

#[test]
fn secret_binary_non_utf8_is_byte_exact() {
    let aws = Aws::start();
    let key: &[u8] = b"\x00\xff\x80pka\xc3\x28\n\x00";
    let arn = aws.moto.create_secret_binary("portainer/binary", key);
    let target = aws.tmpfs.join("portainer");

    let output = aws.fetch_with_keys(&secret("db", "encryption-key", "aws", &arn, &target, ""));

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(key));
    assert_log_free_of(&output, &[("secret value", key)]);
}

#[test]
fn pinned_version_id_and_previous_stage() {
    let aws = Aws::start();
    aws.moto
        .create_secret_string("portainer/db", "pka-aws-first");
    let first = aws
        .moto
        .secrets_manager("GetSecretValue", &json!({ "SecretId": "portainer/db" }));
    let first_version = first.json()["VersionId"]
        .as_str()
        .expect("VersionId")
        .to_owned();
    aws.moto
        .put_secret_string("portainer/db", "pka-aws-second", &[]);
    let pinned = aws.tmpfs.join("pinned");
    let previous = aws.tmpfs.join("previous");
    let current = aws.tmpfs.join("current");
    let secrets = [
        secret(
            "pinned",
            "generic",
            "aws",
            "portainer/db",
            &pinned,
            &format!("version = \"{first_version}\""),
        ),
        secret(
            "previous",
            "generic",
            "aws",
            "portainer/db",
            &previous,
            "stage = \"AWSPREVIOUS\"",
        ),
        secret("current", "generic", "aws", "portainer/db", &current, ""),
    ]
    .concat();

    let output = aws.fetch_with_keys(&secrets);

    output.assert_exit(0);
    assert_file(&pinned, Expected::default_owner(b"pka-aws-first"));
    assert_file(&previous, Expected::default_owner(b"pka-aws-first"));
    assert_file(&current, Expected::default_owner(b"pka-aws-second"));
}

#[test]
fn json_field_is_extracted() {
    let aws = Aws::start();
    aws.moto.create_secret_string(
        "portainer/bundle",
        r#"{"key":"pka-json-key","password":"pka-json-pass"}"#,
    );
    let key_target = aws.tmpfs.join("portainer");
    let password_target = aws.tmpfs.join("admin-password");
    let secrets = [
        secret(
            "db",
            "encryption-key",
            "aws",
            "portainer/bundle",
            &key_target,
            "field = \"key\"",
        ),
        secret(
            "admin",
            "admin-password",
            "aws",
            "portainer/bundle",
            &password_target,
            "field = \"password\"",
        ),
    ]
    .concat();

    let output = aws.fetch_with_keys(&secrets);

    output.assert_exit(0);
    assert_file(&key_target, Expected::default_owner(b"pka-json-key"));
    assert_file(&password_target, Expected::default_owner(b"pka-json-pass"));
    assert_log_free_of(
        &output,
        &[("key", b"pka-json-key"), ("password", b"pka-json-pass")],
    );
}

#[test]
fn missing_json_field_exits_66() {
    let aws = Aws::start();
    aws.moto
        .create_secret_string("portainer/bundle", r#"{"key":"pka-json-key"}"#);
    let target = aws.tmpfs.join("portainer");

    let output = aws.fetch_with_keys(&secret(
        "db",
        "encryption-key",
        "aws",
        "portainer/bundle",
        &target,
        "field = \"nope\"",
    ));

    output.assert_exit(66);
    assert_absent(&target);
}

#[test]
fn missing_secret_exits_66() {
    let aws = Aws::start();
    let target = aws.tmpfs.join("portainer");

    let output = aws.fetch_with_keys(&secret(
        "db",
        "encryption-key",
        "aws",
        "portainer/none",
        &target,
        "",
    ));

    output.assert_exit(66);
    assert_absent(&target);
}

#[test]
fn empty_field_value_exits_65() {
    let aws = Aws::start();
    // moto stores an empty SecretString as a secret without a value (404), so the
    // empty value sits in a JSON field instead.
    aws.moto
        .create_secret_string("portainer/empty", r#"{"key":""}"#);
    let target = aws.tmpfs.join("portainer");

    let output = aws.fetch_with_keys(&secret(
        "db",
        "encryption-key",
        "aws",
        "portainer/empty",
        &target,
        "field = \"key\"",
    ));

    output.assert_exit(65);
    assert_absent(&target);
}

#[test]
fn irsa_web_identity_through_sts() {
    let aws = Aws::start();
    aws.moto
        .create_secret_string("portainer/db", "pka-irsa-key");
    let jwt = integration_tests::jwt::service_account_jwt_with(
        "portainer",
        "portainer",
        "irsa-uid",
        &["sts.amazonaws.com"],
        3600,
    );
    let token_file = aws.dir.path().join("irsa-token");
    std::fs::write(&token_file, &jwt).expect("write web identity token");
    let target = aws.tmpfs.join("portainer");

    let output = aws
        .agent(&secret(
            "db",
            "encryption-key",
            "aws",
            "portainer/db",
            &target,
            "",
        ))
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
        .env(
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/portainer-agent",
        )
        .env("AWS_ROLE_SESSION_NAME", "portainer-key-agent")
        .env("AWS_ENDPOINT_URL_STS", aws.moto.url())
        .run();

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-irsa-key"));
    let sts_secrets = aws.moto.issued_sts_secrets();
    assert!(
        !sts_secrets.is_empty(),
        "the agent did not call AssumeRoleWithWebIdentity on moto"
    );
    let mut secrets: Vec<(&str, &[u8])> = vec![
        ("web identity token", jwt.as_bytes()),
        ("secret value", b"pka-irsa-key"),
    ];
    secrets.extend(
        sts_secrets
            .iter()
            .map(|secret| ("STS credential", secret.as_bytes())),
    );
    assert_log_free_of(&output, &secrets);
}

#[test]
fn pod_identity_container_credentials() {
    let aws = Aws::start();
    let pod_identity = PodIdentity::start();
    aws.moto
        .create_secret_string("portainer/db", "pka-pod-identity-key");
    let target = aws.tmpfs.join("portainer");
    let token = std::fs::read_to_string(pod_identity.token_file()).expect("read token file");

    let output = aws
        .agent(&secret(
            "db",
            "encryption-key",
            "aws",
            "portainer/db",
            &target,
            "",
        ))
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            pod_identity.credentials_url(),
        )
        .env(
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            pod_identity.token_file(),
        )
        .run();

    output.assert_exit(0);
    assert_file(&target, Expected::default_owner(b"pka-pod-identity-key"));
    let issued = pod_identity.issued_credentials();
    assert!(
        !issued.is_empty(),
        "the agent fetched no container credentials:\n{}",
        pod_identity.output()
    );
    let issued_secrets: Vec<String> = issued
        .iter()
        .flat_map(|credentials| {
            ["SecretAccessKey", "Token"].map(|field| credentials[field].as_str().map(str::to_owned))
        })
        .flatten()
        .collect();
    let mut secrets: Vec<(&str, &[u8])> = vec![
        ("Pod Identity token", token.as_bytes()),
        ("secret value", b"pka-pod-identity-key"),
    ];
    secrets.extend(
        issued_secrets
            .iter()
            .map(|secret| ("container credential", secret.as_bytes())),
    );
    assert_log_free_of(&output, &secrets);
}

#[test]
fn pod_identity_rejected_token_exits_77() {
    let aws = Aws::start();
    let pod_identity = PodIdentity::start();
    aws.moto
        .create_secret_string("portainer/db", "pka-pod-identity-key");
    let target = aws.tmpfs.join("portainer");
    let stale_token = aws.dir.path().join("stale-token");
    std::fs::copy(pod_identity.token_file(), &stale_token).expect("copy token");
    pod_identity.rotate_token();

    let output = aws
        .agent(&secret(
            "db",
            "encryption-key",
            "aws",
            "portainer/db",
            &target,
            "",
        ))
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            pod_identity.credentials_url(),
        )
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &stale_token)
        .run();

    output.assert_exit(77);
    assert_absent(&target);
    assert_eq!(pod_identity.request_counts().get("issued"), None);
}
