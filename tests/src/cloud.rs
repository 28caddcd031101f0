//! Guards for the HTTPS cloud doubles: Entra ID with Key Vault, Google STS with IAM
//! Credentials and Secret Manager, a CONNECT proxy, a TLS front for plain-HTTP
//! servers, and the private CA they share.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::doubles::{python_double, start_double, write_atomically};
use crate::jwt;
use crate::paths;
use crate::process::ServerProcess;

/// A private CA and a server certificate for 127.0.0.1, ::1 and localhost.
#[derive(Debug)]
pub struct TestCa {
    dir: TempDir,
}

impl TestCa {
    /// Creates fresh keys with `tests/doubles/testca.py`.
    pub fn create() -> Self {
        let dir = TempDir::new().expect("temporary directory");
        let output = std::process::Command::new(paths::venv_python())
            .env_clear()
            .arg(paths::doubles_dir().join("testca.py"))
            .arg("--out")
            .arg(dir.path())
            .output()
            .expect("run testca.py");
        assert!(
            output.status.success(),
            "testca.py failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self { dir }
    }

    /// Returns the CA certificate's path, for `ca_cert`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn cert_file(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("server-key.pem")
    }

    /// Reads a JSON control document from an HTTPS double that this CA signed.
    fn get_json(&self, url: &str) -> Value {
        assert!(
            url.starts_with("https://127.0.0.1:") || url.starts_with("https://[::1]:"),
            "test set-up may only call servers on the loopback address, not {url}"
        );
        let pem = std::fs::read(self.ca_file()).expect("read CA");
        let certificate = reqwest::Certificate::from_pem(&pem).expect("CA certificate");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .no_proxy()
                .tls_certs_merge([certificate])
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("client");
            let response = client.get(url).send().await.expect("GET control document");
            response.json().await.expect("JSON control document")
        })
    }
}

fn start_tls_double(
    script: &str,
    ca: &TestCa,
    state: &Path,
    ipv6: bool,
) -> (ServerProcess, String) {
    let mut command = python_double(script);
    command
        .arg("--state")
        .arg(state)
        .arg("--tls-cert")
        .arg(ca.cert_file())
        .arg("--tls-key")
        .arg(ca.key_file());
    if ipv6 {
        command.args(["--host", "::1"]);
    }
    start_double(script, command)
}

/// The issuer of the federated tokens that the cloud doubles trust.
pub const FEDERATED_ISSUER: &str = jwt::DEFAULT_ISSUER;
/// The subject of the federated tokens: the agent's service account.
pub const FEDERATED_SUBJECT: &str = "system:serviceaccount:portainer:portainer-key-agent";

fn federated_jwt(audience: &str, lifetime_seconds: i64) -> String {
    jwt::service_account_jwt_with(
        "portainer",
        "portainer-key-agent",
        "agent-uid",
        &[audience],
        lifetime_seconds,
    )
}

/// `entra_keyvault.py`: Entra ID and Key Vault on one HTTPS port.
#[derive(Debug)]
pub struct EntraKeyVault {
    process: ServerProcess,
    url: String,
    ca: TestCa,
    state_file: PathBuf,
    state: Mutex<Value>,
    _dir: TempDir,
}

/// Audience of Azure workload identity tokens.
pub const AZURE_TOKEN_AUDIENCE: &str = "api://AzureADTokenExchange";

impl EntraKeyVault {
    pub const TENANT: &'static str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    pub const CLIENT: &'static str = "5d4bd1a8-5e3f-4a3e-a4f4-1a5f2a9b3c01";

    /// Starts the double on 127.0.0.1 with no secrets.
    pub fn start() -> Self {
        Self::start_on(false)
    }

    /// Starts the double on [::1].
    pub fn start_ipv6() -> Self {
        Self::start_on(true)
    }

    fn start_on(ipv6: bool) -> Self {
        let dir = TempDir::new().expect("temporary directory");
        let ca = TestCa::create();
        let state_file = dir.path().join("state.json");
        let state = json!({
            "tenant_id": Self::TENANT,
            "client_id": Self::CLIENT,
            "issuer": FEDERATED_ISSUER,
            "subject": FEDERATED_SUBJECT,
            "secrets": {},
            "rbac_denied": [],
        });
        write_atomically(&state_file, state.to_string().as_bytes());
        let (process, url) = start_tls_double("entra_keyvault.py", &ca, &state_file, ipv6);
        Self {
            process,
            url,
            ca,
            state_file,
            state: Mutex::new(state),
            _dir: dir,
        }
    }

    /// Origin of both services, for `vault_url` and `authority_host`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// Builds a federated token that the double accepts, valid for `lifetime_seconds`.
    pub fn federated_token(&self, lifetime_seconds: i64) -> String {
        federated_jwt(AZURE_TOKEN_AUDIENCE, lifetime_seconds)
    }

    fn update(&self, change: impl FnOnce(&mut Value)) {
        let mut state = self.state.lock().expect("state lock");
        change(&mut state);
        write_atomically(&self.state_file, state.to_string().as_bytes());
    }

    /// Adds a version that becomes the current one; returns its id.
    pub fn add_version(&self, name: &str, value: &str) -> String {
        let id = random_hex();
        let entry = json!({ "id": id, "value": value, "enabled": true });
        self.update(|state| {
            let versions = state["secrets"][name]["versions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut versions = versions;
            versions.push(entry);
            state["secrets"][name] = json!({ "versions": versions });
        });
        id
    }

    /// Disables every version of `name`.
    pub fn disable(&self, name: &str) {
        self.update(|state| {
            if let Some(versions) = state["secrets"][name]["versions"].as_array_mut() {
                for version in versions {
                    version["enabled"] = Value::Bool(false);
                }
            }
        });
    }

    /// Makes reads of `name` fail with 403 ForbiddenByRbac.
    pub fn deny_rbac(&self, name: &str) {
        self.update(|state| {
            state["rbac_denied"]
                .as_array_mut()
                .expect("rbac_denied list")
                .push(Value::from(name));
        });
    }

    /// Makes the Key Vault challenge name `resource`.
    pub fn set_challenge_resource(&self, resource: &str) {
        self.update(|state| state["resource"] = Value::from(resource));
    }

    /// Returns every access token handed out so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        strings(&self.ca.get_json(&format!("{}/_double/issued", self.url)))
    }

    /// Request counts by outcome.
    pub fn request_counts(&self) -> Value {
        self.ca.get_json(&format!("{}/_double/requests", self.url))
    }

    pub fn output(&self) -> String {
        self.process.output()
    }
}

/// `google_secret_manager.py`: Google STS, IAM Credentials and Secret Manager on
/// one HTTPS port.
#[derive(Debug)]
pub struct GoogleSecretManager {
    process: ServerProcess,
    url: String,
    ca: TestCa,
    state_file: PathBuf,
    state: Mutex<Value>,
    dir: TempDir,
}

impl GoogleSecretManager {
    pub const PROJECT_ID: &'static str = "pka-test";
    pub const PROJECT_NUMBER: &'static str = "123456789012";
    pub const SERVICE_ACCOUNT: &'static str =
        "portainer-key-agent@pka-test.iam.gserviceaccount.com";
    pub const AUDIENCE: &'static str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/portainer/providers/cluster";
    pub const JWT_AUDIENCE: &'static str = "https://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/portainer/providers/cluster";

    /// Starts the double with no secrets.
    pub fn start() -> Self {
        let dir = TempDir::new().expect("temporary directory");
        let ca = TestCa::create();
        let state_file = dir.path().join("state.json");
        let state = json!({
            "audience": Self::AUDIENCE,
            "jwt_audience": Self::JWT_AUDIENCE,
            "issuer": FEDERATED_ISSUER,
            "subject": FEDERATED_SUBJECT,
            "project_id": Self::PROJECT_ID,
            "project_number": Self::PROJECT_NUMBER,
            "service_account": Self::SERVICE_ACCOUNT,
            "secrets": {},
            "denied": [],
            "corrupt_crc": [],
        });
        write_atomically(&state_file, state.to_string().as_bytes());
        let (process, url) = start_tls_double("google_secret_manager.py", &ca, &state_file, false);
        Self {
            process,
            url,
            ca,
            state_file,
            state: Mutex::new(state),
            dir,
        }
    }

    /// Origin of the three services, for `endpoint_url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// Builds a subject token that STS accepts, valid for `lifetime_seconds`.
    pub fn subject_token(&self, lifetime_seconds: i64) -> String {
        federated_jwt(Self::JWT_AUDIENCE, lifetime_seconds)
    }

    /// Writes an `external_account` credential configuration that reads the subject
    /// token from `token_file`, as `gcloud iam workload-identity-pools
    /// create-cred-config` does; returns its path.
    pub fn credential_configuration(&self, token_file: &Path, impersonate: bool) -> PathBuf {
        let mut document = json!({
            "universe_domain": "googleapis.com",
            "type": "external_account",
            "audience": Self::AUDIENCE,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("{}/v1/token", self.url),
            "credential_source": { "file": token_file, "format": { "type": "text" } },
        });
        if impersonate {
            document["service_account_impersonation_url"] = Value::from(format!(
                "{}/v1/projects/-/serviceAccounts/{}:generateAccessToken",
                self.url,
                Self::SERVICE_ACCOUNT
            ));
        }
        let path = self.dir.path().join(if impersonate {
            "credentials-impersonated.json"
        } else {
            "credentials.json"
        });
        std::fs::write(&path, document.to_string()).expect("write credential configuration");
        path
    }

    fn update(&self, change: impl FnOnce(&mut Value)) {
        let mut state = self.state.lock().expect("state lock");
        change(&mut state);
        write_atomically(&self.state_file, state.to_string().as_bytes());
    }

    /// Adds a version with `data` as its payload; returns its number.
    pub fn add_version(&self, secret: &str, data: &[u8]) -> u64 {
        let encoded = base64::engine::general_purpose::STANDARD.encode(data);
        let mut number = 0;
        self.update(|state| {
            let mut versions = state["secrets"][secret]["versions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            versions.push(json!({ "data": encoded, "state": "ENABLED" }));
            number = versions.len() as u64;
            state["secrets"][secret] = json!({ "versions": versions });
        });
        number
    }

    /// Disables version `number` of `secret`.
    pub fn disable(&self, secret: &str, number: u64) {
        self.update(|state| {
            let index = usize::try_from(number - 1).expect("version index");
            state["secrets"][secret]["versions"][index]["state"] = Value::from("DISABLED");
        });
    }

    /// Makes reads of `secret` fail with 403 PERMISSION_DENIED.
    pub fn deny(&self, secret: &str) {
        self.update(|state| {
            state["denied"]
                .as_array_mut()
                .expect("denied list")
                .push(Value::from(secret));
        });
    }

    /// Makes replies for `secret` state a wrong `dataCrc32c`.
    pub fn corrupt_checksum(&self, secret: &str) {
        self.update(|state| {
            state["corrupt_crc"]
                .as_array_mut()
                .expect("corrupt_crc list")
                .push(Value::from(secret));
        });
    }

    /// Makes Secret Manager deny federated tokens, so only impersonation works.
    pub fn require_impersonation(&self) {
        self.update(|state| state["require_impersonation"] = Value::Bool(true));
    }

    /// Returns every access token handed out so far, federated and impersonated.
    pub fn issued_tokens(&self) -> Vec<String> {
        strings(&self.ca.get_json(&format!("{}/_double/issued", self.url)))
    }

    /// Request counts by outcome.
    pub fn request_counts(&self) -> Value {
        self.ca.get_json(&format!("{}/_double/requests", self.url))
    }

    pub fn output(&self) -> String {
        self.process.output()
    }
}

/// `connect_proxy.py`: an HTTP CONNECT proxy on 127.0.0.1 that records targets.
#[derive(Debug)]
pub struct ConnectProxy {
    process: ServerProcess,
    url: String,
}

impl ConnectProxy {
    pub fn start() -> Self {
        let mut command = std::process::Command::new(paths::venv_python());
        command
            .env_clear()
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .arg(paths::doubles_dir().join("connect_proxy.py"))
            .args(["--port", "0"]);
        let (process, url) = start_double("connect_proxy.py", command);
        Self { process, url }
    }

    /// Value for `HTTPS_PROXY` and `proxy_url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Returns every `CONNECT` target so far, such as `127.0.0.1:8443`.
    pub fn targets(&self) -> Vec<String> {
        let response =
            crate::http::send("GET", &format!("{}/_double/targets", self.url), &[], None)
                .unwrap_or_else(|error| panic!("GET proxy targets failed: {error}"));
        strings(&response.json())
    }

    pub fn output(&self) -> String {
        self.process.output()
    }
}

/// `tls_front.py`: HTTPS on 127.0.0.1 in front of a plain-HTTP loopback server.
#[derive(Debug)]
pub struct TlsFront {
    process: ServerProcess,
    url: String,
}

impl TlsFront {
    /// Serves `backend` (such as `http://127.0.0.1:8200`) over HTTPS with `ca`'s
    /// server certificate.
    pub fn start(backend: &str, ca: &TestCa) -> Self {
        let authority = backend
            .strip_prefix("http://")
            .expect("the backend is a plain-HTTP URL")
            .trim_end_matches('/');
        let mut command = std::process::Command::new(paths::venv_python());
        command
            .env_clear()
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .arg(paths::doubles_dir().join("tls_front.py"))
            .args(["--port", "0", "--backend", authority])
            .arg("--tls-cert")
            .arg(ca.cert_file())
            .arg("--tls-key")
            .arg(ca.key_file());
        let (process, url) = start_double("tls_front.py", command);
        Self { process, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn output(&self) -> String {
        self.process.output()
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Returns a Key Vault style version id: 32 hex digits, unique within the process.
fn random_hex() -> String {
    use sha2::Digest;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let digest = sha2::Sha256::digest(format!("{now}-{count}-{}", std::process::id()));
    hex::encode(&digest[..16])
}
