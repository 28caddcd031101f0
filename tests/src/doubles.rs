//! Guards for the Python test doubles in `tests/doubles/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::http;
use crate::jwt;
use crate::paths;
use crate::process::{START_TIMEOUT, ServerProcess};

/// A Kubernetes service account as TokenReview returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ServiceAccount {
    pub fn new(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
        }
    }

    /// Builds a fresh one-hour JWT for this account (not yet accepted by any double).
    pub fn jwt(&self) -> String {
        jwt::service_account_jwt(&self.namespace, &self.name, &self.uid)
    }
}

/// `tokenreview.py`: a Kubernetes TokenReview API on 127.0.0.1.
#[derive(Debug)]
pub struct TokenReview {
    process: ServerProcess,
    url: String,
    reviewer_jwt: String,
    tokens_file: PathBuf,
    accepted: Mutex<BTreeMap<String, ServiceAccount>>,
    _dir: TempDir,
}

impl TokenReview {
    /// Starts the double with a reviewer JWT and no accepted tokens.
    pub fn start() -> Self {
        let dir = TempDir::new().expect("temporary directory");
        let reviewer_jwt =
            jwt::service_account_jwt("kube-system", "openbao-reviewer", "reviewer-uid");
        let reviewer_file = dir.path().join("reviewer.jwt");
        std::fs::write(&reviewer_file, &reviewer_jwt).expect("write reviewer JWT");
        let tokens_file = dir.path().join("tokens.json");
        std::fs::write(&tokens_file, "{}").expect("write tokens file");

        let mut command = python_double("tokenreview.py");
        command
            .arg("--tokens")
            .arg(&tokens_file)
            .arg("--reviewer-token-file")
            .arg(&reviewer_file);
        let (process, url) = start_double("tokenreview.py", command);
        Self {
            process,
            url,
            reviewer_jwt,
            tokens_file,
            accepted: Mutex::default(),
            _dir: dir,
        }
    }

    /// Base URL, for OpenBao's `kubernetes_host`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// JWT that callers must send as bearer token (OpenBao's `token_reviewer_jwt`).
    pub fn reviewer_jwt(&self) -> &str {
        &self.reviewer_jwt
    }

    /// Creates a JWT for `account`, makes the double accept it, and returns it.
    pub fn issue(&self, account: &ServiceAccount) -> String {
        let token = account.jwt();
        self.accept(&token, account);
        token
    }

    /// Makes the double accept `token` as `account`.
    pub fn accept(&self, token: &str, account: &ServiceAccount) {
        let mut accepted = self.accepted.lock().expect("accepted tokens lock");
        accepted.insert(token.to_owned(), account.clone());
        self.write_tokens(&accepted);
    }

    /// Makes the double reject `token` from now on.
    pub fn revoke(&self, token: &str) {
        let mut accepted = self.accepted.lock().expect("accepted tokens lock");
        accepted.remove(token);
        self.write_tokens(&accepted);
    }

    /// Everything the double printed, including one line per request.
    pub fn output(&self) -> String {
        self.process.output()
    }

    fn write_tokens(&self, accepted: &BTreeMap<String, ServiceAccount>) {
        let document: serde_json::Map<String, Value> = accepted
            .iter()
            .map(|(token, account)| {
                let entry = json!({
                    "namespace": account.namespace,
                    "name": account.name,
                    "uid": account.uid,
                });
                (token.clone(), entry)
            })
            .collect();
        // The double reads the file on every request: replace it atomically.
        write_atomically(
            &self.tokens_file,
            Value::Object(document).to_string().as_bytes(),
        );
    }
}

/// `pod_identity.py`: an EKS Pod Identity agent (container credentials endpoint).
#[derive(Debug)]
pub struct PodIdentity {
    process: ServerProcess,
    base_url: String,
    token_file: PathBuf,
    _dir: TempDir,
}

/// Audience of EKS Pod Identity tokens.
pub const POD_IDENTITY_AUDIENCE: &str = "pods.eks.amazonaws.com";

impl PodIdentity {
    /// Starts the double with a fresh token file; see [`Self::token_file`].
    pub fn start() -> Self {
        let dir = TempDir::new().expect("temporary directory");
        let token_file = dir.path().join("eks-pod-identity-token");
        std::fs::write(&token_file, pod_identity_jwt()).expect("write token file");

        let mut command = python_double("pod_identity.py");
        command.arg("--token-file").arg(&token_file);
        let (process, base_url) = start_double("pod_identity.py", command);
        Self {
            process,
            base_url,
            token_file,
            _dir: dir,
        }
    }

    /// Value for `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    pub fn credentials_url(&self) -> String {
        format!("{}/v1/credentials", self.base_url)
    }

    /// Value for `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: the only token the double accepts.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// Replaces the accepted token with a new one; returns the new token.
    pub fn rotate_token(&self) -> String {
        let token = pod_identity_jwt();
        write_atomically(&self.token_file, token.as_bytes());
        token
    }

    /// Request counts by outcome: `issued`, `rejected_400`, `rejected_403`, `not_found`.
    pub fn request_counts(&self) -> Value {
        self.get_json("/_double/requests")
    }

    /// Returns every credential set handed out so far, as the JSON the client received.
    pub fn issued_credentials(&self) -> Vec<Value> {
        match self.get_json("/_double/issued") {
            Value::Array(items) => items,
            other => panic!("unexpected /_double/issued body: {other}"),
        }
    }

    pub fn output(&self) -> String {
        self.process.output()
    }

    fn get_json(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.base_url);
        let response = http::send("GET", &url, &[], None)
            .unwrap_or_else(|error| panic!("GET {url} failed: {error}"));
        assert_eq!(response.status, 200, "GET {url}: {}", response.text());
        response.json()
    }
}

fn pod_identity_jwt() -> String {
    jwt::service_account_jwt_with(
        "portainer",
        "portainer",
        "pod-identity-uid",
        &[POD_IDENTITY_AUDIENCE],
        3600,
    )
}

pub(crate) fn python_double(script: &str) -> Command {
    let mut command = Command::new(paths::venv_python());
    command
        .env_clear()
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .arg(paths::doubles_dir().join(script))
        .args(["--port", "0"]);
    command
}

pub(crate) fn start_double(name: &str, command: Command) -> (ServerProcess, String) {
    let mut process = ServerProcess::spawn(name, command);
    let url = process.wait_for_line(START_TIMEOUT, |line| {
        line.strip_prefix("listening on ").map(str::to_owned)
    });
    (process, url)
}

/// Writes `contents` to a sibling temporary file and renames it over `path`.
pub fn write_atomically(path: &Path, contents: &[u8]) {
    let file_name = path
        .file_name()
        .expect("path has a file name")
        .to_string_lossy();
    let temporary = path.with_file_name(format!(".{file_name}.tmp"));
    std::fs::write(&temporary, contents).expect("write temporary file");
    std::fs::rename(&temporary, path).expect("rename temporary file into place");
}
