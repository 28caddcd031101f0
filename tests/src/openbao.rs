//! OpenBao dev server and the API calls that tests use to prepare it.

use std::collections::BTreeSet;
use std::ops::Deref;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::doubles::{ServiceAccount, TokenReview};
use crate::http::{self, Response};
use crate::paths;
use crate::process::{self, START_TIMEOUT, ServerProcess};

/// Key/value secrets engine version of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvVersion {
    V1,
    V2,
}

/// An OpenBao dev server (in-memory storage, unsealed, one root token) on
/// 127.0.0.1, with a raw file audit device that records every client token.
#[derive(Debug)]
pub struct OpenBao {
    process: ServerProcess,
    client: BaoClient,
    audit_log: PathBuf,
    _home: TempDir,
}

/// API client for one token and namespace of an [`OpenBao`] server.
#[derive(Debug, Clone)]
pub struct BaoClient {
    address: String,
    token: String,
    namespace: Option<String>,
}

static ROOT_TOKEN_SERIAL: AtomicU64 = AtomicU64::new(0);

/// Tries before giving up when another process takes the chosen port.
const START_ATTEMPTS: usize = 3;

impl OpenBao {
    /// Starts a dev server and waits until `sys/health` returns 200.
    pub fn start() -> Self {
        let mut last_output = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start() {
                Ok(server) => return server,
                Err(output) => last_output = output,
            }
        }
        panic!(
            "OpenBao dev server did not start in {START_ATTEMPTS} attempts; last output:\n{last_output}"
        );
    }

    fn try_start() -> Result<Self, String> {
        let home = TempDir::new().expect("temporary directory");
        let audit_log = home.path().join("audit.log");
        let config = home.path().join("audit.hcl");
        // OpenBao only accepts audit devices from its configuration file.
        let audit_config = format!(
            "audit \"file\" \"raw\" {{\n  options {{\n    file_path = {}\n    log_raw = \"true\"\n  }}\n}}\n",
            Value::String(audit_log.display().to_string())
        );
        std::fs::write(&config, audit_config).expect("write OpenBao configuration");

        let port = process::free_port_pair();
        let address = format!("http://127.0.0.1:{port}");
        let serial = ROOT_TOKEN_SERIAL.fetch_add(1, Ordering::Relaxed);
        let root_token = format!("pka-root-{}-{serial}-{port}", std::process::id());

        let mut command = Command::new(paths::bao_binary());
        command
            .env_clear()
            .env("HOME", home.path())
            .arg("server")
            .arg("-dev")
            .arg("-dev-no-store-token")
            .arg(format!("-dev-root-token-id={root_token}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-config={}", config.display()));
        let mut server = ServerProcess::spawn("bao server -dev", command);

        let health = format!("{address}/v1/sys/health");
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if !server.is_running() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(server.output());
            }
            if matches!(http::send("GET", &health, &[], None), Ok(response) if response.status == 200)
            {
                let client = BaoClient {
                    address,
                    token: root_token,
                    namespace: None,
                };
                return Ok(Self {
                    process: server,
                    client,
                    audit_log,
                    _home: home,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "no healthy response from {health} within {START_TIMEOUT:?}:\n{}",
            server.output()
        ))
    }

    /// Root client, in the root namespace.
    pub fn root(&self) -> &BaoClient {
        &self.client
    }

    pub fn root_token(&self) -> &str {
        &self.client.token
    }

    /// Collects every Vault token seen in a request or response so far, from the
    /// audit log. These include the root token, tokens created by tests and login results.
    pub fn client_tokens_seen(&self) -> BTreeSet<String> {
        let log = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        let mut tokens = BTreeSet::new();
        for line in log.lines() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            for pointer in ["/auth/client_token", "/response/auth/client_token"] {
                if let Some(token) = entry.pointer(pointer).and_then(Value::as_str)
                    && !token.is_empty()
                {
                    tokens.insert(token.to_owned());
                }
            }
        }
        tokens
    }

    /// Parses every entry of the audit log so far: one JSON object per request
    /// and one per response, with request data in plain text (`log_raw`).
    pub fn audit_entries(&self) -> Vec<Value> {
        let log = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        log.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Server log, for failure messages.
    pub fn output(&self) -> String {
        self.process.output()
    }
}

impl Deref for OpenBao {
    type Target = BaoClient;

    fn deref(&self) -> &BaoClient {
        &self.client
    }
}

impl BaoClient {
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Returns the same client, sending `X-Vault-Namespace: namespace`.
    pub fn in_namespace(&self, namespace: &str) -> BaoClient {
        BaoClient {
            namespace: Some(namespace.to_owned()),
            ..self.clone()
        }
    }

    /// Returns the same client with another token.
    pub fn with_token(&self, token: &str) -> BaoClient {
        BaoClient {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    /// Sends a request to `/v1/{path}` and returns the response, whatever its status.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let url = format!("{}/v1/{}", self.address, path.trim_start_matches('/'));
        let mut headers = vec![("X-Vault-Token", self.token.as_str())];
        if let Some(namespace) = &self.namespace {
            headers.push(("X-Vault-Namespace", namespace.as_str()));
        }
        let body = body.map(|value| {
            headers.push(("Content-Type", "application/json"));
            value.to_string().into_bytes()
        });
        http::send(method, &url, &headers, body)
            .unwrap_or_else(|error| panic!("{method} {url} failed: {error}"))
    }

    /// Writes `body` to `path`, panicking unless OpenBao returns 2xx; returns the body.
    pub fn write(&self, path: &str, body: &Value) -> Value {
        let response = self.request("POST", path, Some(body));
        self.expect_success("POST", path, &response);
        response.json()
    }

    /// Reads `path`, panicking unless OpenBao returns 200.
    pub fn read(&self, path: &str) -> Value {
        let response = self.request("GET", path, None);
        self.expect_success("GET", path, &response);
        response.json()
    }

    fn expect_success(&self, method: &str, path: &str, response: &Response) {
        assert!(
            (200..300).contains(&response.status),
            "OpenBao {method} {path} (namespace {:?}) returned {}: {}",
            self.namespace,
            response.status,
            response.text()
        );
    }

    /// Creates a child namespace of this client's namespace.
    pub fn create_namespace(&self, name: &str) {
        self.write(&format!("sys/namespaces/{name}"), &json!({}));
    }

    /// Mounts a KV secrets engine at `mount`.
    pub fn enable_kv(&self, mount: &str, version: KvVersion) {
        let version = match version {
            KvVersion::V1 => "1",
            KvVersion::V2 => "2",
        };
        self.write(
            &format!("sys/mounts/{mount}"),
            &json!({ "type": "kv", "options": { "version": version } }),
        );
    }

    /// Writes `data` at `path` of a KV v2 mount and returns the new version number.
    pub fn kv2_put(&self, mount: &str, path: &str, data: &Value) -> u64 {
        let response = self.write(&format!("{mount}/data/{path}"), &json!({ "data": data }));
        response
            .pointer("/data/version")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("KV v2 write returned no version: {response}"))
    }

    /// Writes `data` at `path` of a KV v1 mount.
    pub fn kv1_put(&self, mount: &str, path: &str, data: &Value) {
        self.write(&format!("{mount}/{path}"), data);
    }

    /// Soft-deletes versions of a KV v2 secret (recoverable with undelete).
    pub fn kv2_soft_delete(&self, mount: &str, path: &str, versions: &[u64]) {
        self.write(
            &format!("{mount}/delete/{path}"),
            &json!({ "versions": versions }),
        );
    }

    /// Destroys versions of a KV v2 secret for good.
    pub fn kv2_destroy(&self, mount: &str, path: &str, versions: &[u64]) {
        self.write(
            &format!("{mount}/destroy/{path}"),
            &json!({ "versions": versions }),
        );
    }

    /// Writes an ACL policy.
    pub fn write_policy(&self, name: &str, hcl: &str) {
        self.write(
            &format!("sys/policies/acl/{name}"),
            &json!({ "policy": hcl }),
        );
    }

    /// Writes a policy that allows reading `paths` (API paths, such as `secret/data/x`).
    pub fn write_read_policy(&self, name: &str, paths: &[&str]) {
        let rules: String = paths
            .iter()
            .map(|path| format!("path \"{path}\" {{\n  capabilities = [\"read\"]\n}}\n"))
            .collect();
        self.write_policy(name, &rules);
    }

    /// Creates a token with `policies` (no default policy) and returns it.
    pub fn create_token(&self, policies: &[&str]) -> String {
        let response = self.write(
            "auth/token/create",
            &json!({ "policies": policies, "no_default_policy": true, "ttl": "1h" }),
        );
        response
            .pointer("/auth/client_token")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("token create returned no token: {response}"))
            .to_owned()
    }

    /// Enables Kubernetes auth at `mount` and points it at the TokenReview double.
    ///
    /// OpenBao accepts an http `kubernetes_host` but requires `kubernetes_ca_cert`
    /// when `disable_local_ca_jwt` is set, so a throwaway CA certificate is passed;
    /// over http it is never used.
    pub fn enable_kubernetes_auth(&self, mount: &str, tokenreview: &TokenReview) {
        self.write(
            &format!("sys/auth/{mount}"),
            &json!({ "type": "kubernetes" }),
        );
        self.write(
            &format!("auth/{mount}/config"),
            &json!({
                "kubernetes_host": tokenreview.url(),
                "kubernetes_ca_cert": UNUSED_CA_CERT,
                "token_reviewer_jwt": tokenreview.reviewer_jwt(),
                "disable_local_ca_jwt": true,
            }),
        );
    }

    /// Creates a Kubernetes auth role bound to one service account.
    pub fn write_kubernetes_role(
        &self,
        mount: &str,
        role: &str,
        account: &ServiceAccount,
        policies: &[&str],
    ) {
        self.write(
            &format!("auth/{mount}/role/{role}"),
            &json!({
                "bound_service_account_names": [account.name],
                "bound_service_account_namespaces": [account.namespace],
                "token_policies": policies,
                "token_ttl": "1h",
            }),
        );
    }
}

/// Self-signed CA certificate (P-256, CN=integration-tests-unused-ca) whose key
/// was discarded. OpenBao's Kubernetes auth config requires one; the tests reach
/// the TokenReview double over http, so it never verifies anything.
const UNUSED_CA_CERT: &str = include_str!("unused-ca.pem");
