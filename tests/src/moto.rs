//! moto's server as an AWS Secrets Manager and STS endpoint on 127.0.0.1.

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::http::{self, Response};
use crate::paths;
use crate::process::{START_TIMEOUT, ServerProcess};

/// Region that the helpers create secrets in.
pub const REGION: &str = "us-east-1";

/// Static keys for set-up calls. moto takes any signature; the access key only
/// selects the account (the default, 123456789012).
pub const ACCESS_KEY_ID: &str = "AKIAINTEGRATIONTESTS";
pub const SECRET_ACCESS_KEY: &str = "integration-tests-secret-access-key";

/// A moto server. Each instance has its own in-memory state.
#[derive(Debug)]
pub struct Moto {
    process: ServerProcess,
    url: String,
}

impl Moto {
    /// Starts moto on a port the kernel picks and waits for its ready line.
    pub fn start() -> Self {
        let mut command = Command::new(paths::venv_python());
        command
            .env_clear()
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", "0"]);
        let mut process = ServerProcess::spawn("moto_server", command);
        // Werkzeug prints " * Running on http://127.0.0.1:PORT" once the socket listens.
        let url = process.wait_for_line(START_TIMEOUT, |line| {
            line.split_once("Running on ")
                .map(|(_, url)| url.trim().to_owned())
                .filter(|url| url.starts_with("http://127.0.0.1:"))
        });
        Self { process, url }
    }

    /// Endpoint URL, for the agent's `endpoint_url` and for AWS clients.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls a Secrets Manager action (JSON protocol) and returns the response.
    pub fn secrets_manager(&self, action: &str, body: &Value) -> Response {
        let target = format!("secretsmanager.{action}");
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20261204/{REGION}/secretsmanager/aws4_request, \
             SignedHeaders=host;x-amz-date;x-amz-target, Signature=0"
        );
        let headers = [
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", target.as_str()),
            ("X-Amz-Date", "20261204T000000Z"),
            ("Authorization", authorization.as_str()),
        ];
        http::send(
            "POST",
            &format!("{}/", self.url),
            &headers,
            Some(body.to_string().into_bytes()),
        )
        .unwrap_or_else(|error| panic!("Secrets Manager {action} failed: {error}"))
    }

    fn secrets_manager_ok(&self, action: &str, body: &Value) -> Value {
        let response = self.secrets_manager(action, body);
        assert_eq!(
            response.status,
            200,
            "Secrets Manager {action}: {}",
            response.text()
        );
        response.json()
    }

    /// Creates a secret with a SecretString; returns its ARN.
    pub fn create_secret_string(&self, name: &str, value: &str) -> String {
        let response = self.secrets_manager_ok(
            "CreateSecret",
            &json!({ "Name": name, "SecretString": value }),
        );
        string_field(&response, "ARN")
    }

    /// Creates a secret with a SecretBinary; returns its ARN.
    pub fn create_secret_binary(&self, name: &str, value: &[u8]) -> String {
        let response = self.secrets_manager_ok(
            "CreateSecret",
            &json!({ "Name": name, "SecretBinary": STANDARD.encode(value) }),
        );
        string_field(&response, "ARN")
    }

    /// Adds a SecretString version (staged AWSCURRENT, or `stages`); returns its VersionId.
    pub fn put_secret_string(&self, name: &str, value: &str, stages: &[&str]) -> String {
        let mut body = json!({ "SecretId": name, "SecretString": value });
        if !stages.is_empty() {
            body["VersionStages"] = json!(stages);
        }
        string_field(
            &self.secrets_manager_ok("PutSecretValue", &body),
            "VersionId",
        )
    }

    /// Adds a SecretBinary version (staged AWSCURRENT); returns its VersionId.
    pub fn put_secret_binary(&self, name: &str, value: &[u8]) -> String {
        let body = json!({ "SecretId": name, "SecretBinary": STANDARD.encode(value) });
        string_field(
            &self.secrets_manager_ok("PutSecretValue", &body),
            "VersionId",
        )
    }

    /// Secret access keys and session tokens that STS handed out so far
    /// (AssumeRole and AssumeRoleWithWebIdentity), from moto's state dump.
    ///
    /// moto's AssumeRoleWithWebIdentity accepts any token; these tests check the
    /// agent's side of IRSA, not the token validation that AWS performs.
    pub fn issued_sts_secrets(&self) -> Vec<String> {
        let url = format!("{}/moto-api/data.json", self.url);
        let response = http::send("GET", &url, &[], None)
            .unwrap_or_else(|error| panic!("GET {url} failed: {error}"));
        assert_eq!(response.status, 200, "GET {url}: {}", response.text());
        let state = response.json();
        let roles = state
            .pointer("/sts/AssumedRole")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        roles
            .iter()
            .flat_map(|role| {
                ["secret_access_key", "session_token"].map(|field| role.get(field).cloned())
            })
            .flatten()
            .filter_map(|value| value.as_str().map(str::to_owned))
            .collect()
    }

    /// Server log, for failure messages.
    pub fn output(&self) -> String {
        self.process.output()
    }
}

fn string_field(document: &Value, field: &str) -> String {
    document
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("response has no {field}: {document}"))
        .to_owned()
}
