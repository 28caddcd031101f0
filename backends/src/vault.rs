//! Vault and OpenBao: Kubernetes or token-file login, KV v1 and v2.
//!
//! A thin client over the HTTP API. The KV engine version of each mount is read
//! from `sys/internal/ui/mounts/<path>` unless the settings fix it, and `data/` or
//! `metadata/` is inserted only after the mount prefix, so a secret whose own path
//! starts with `data` keeps it.

use std::collections::HashMap;
use std::path::PathBuf;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

use crate::http::{Transport, send_error};
use crate::wipe_json;
use crate::{
    BackendError, BackendFuture, SecretBackend, SecretBytes, SecretRequest, SecretValue,
    SecretVersion,
};

/// The projected service-account token that the kubelet mounts in every pod.
pub const DEFAULT_KUBERNETES_TOKEN_PATH: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The mount path of the Kubernetes auth method when none is configured.
pub const DEFAULT_KUBERNETES_MOUNT: &str = "kubernetes";

/// What to do about a deleted or destroyed KV v2 version.
const UNDELETE_HINT: &str =
    "undelete the version (bao kv undelete / vault kv undelete), or pin or write another one";

/// Largest reply body accepted from Vault.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Login method of the agent at Vault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VaultAuth {
    /// Kubernetes auth: the service-account JWT is read from `token_path` at every
    /// login and exchanged for a Vault token bound to `role`.
    Kubernetes {
        role: String,
        mount: String,
        token_path: PathBuf,
    },
    /// A Vault token read from a file at every use, for local runs.
    TokenFile { path: PathBuf },
}

/// KV secrets engine version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvVersion {
    V1,
    V2,
}

/// Settings of one Vault or OpenBao server.
#[derive(Clone, Debug)]
pub struct VaultSettings {
    pub address: Url,
    /// Sent as `X-Vault-Namespace` on every request, login included.
    pub namespace: Option<String>,
    pub auth: VaultAuth,
    /// Skips mount detection; the mount is then the first segment of each path.
    pub kv_version: Option<KvVersion>,
    pub transport: Transport,
}

/// A KV mount as Vault reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KvMount {
    /// Mount path with its trailing slash, such as `secret/`.
    prefix: String,
    version: KvVersion,
}

/// A Vault token from a login, with its lease.
#[derive(Clone)]
struct CachedToken {
    token: SecretBytes,
    obtained: tokio::time::Instant,
    /// Lease duration; zero for a token that never expires.
    ttl: std::time::Duration,
    renewable: bool,
}

impl CachedToken {
    /// Renewal starts after two thirds of the lease, as Vault Agent does.
    fn wants_renewal(&self) -> bool {
        !self.ttl.is_zero() && self.obtained.elapsed() >= self.ttl * 2 / 3
    }

    /// Tells whether the token is close enough to expiry to need a new login.
    fn is_expiring(&self) -> bool {
        !self.ttl.is_zero()
            && self.obtained.elapsed() + std::time::Duration::from_secs(5) >= self.ttl
    }
}

/// A Vault or OpenBao server.
pub struct VaultBackend {
    settings: VaultSettings,
    client: reqwest::Client,
    label: String,
    token: Mutex<Option<CachedToken>>,
    mounts: Mutex<HashMap<String, KvMount>>,
}

impl std::fmt::Debug for VaultBackend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("VaultBackend")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl VaultBackend {
    /// Creates a client; nothing is sent until the first fetch.
    pub fn new(settings: VaultSettings) -> Result<Self, BackendError> {
        let label = format!("vault {}", settings.address);
        let client = if settings.address.scheme() == "http" {
            settings.transport.plain_http_client(&label)?
        } else {
            settings.transport.client(&label)?
        };
        Ok(Self {
            settings,
            client,
            label,
            token: Mutex::new(None),
            mounts: Mutex::new(HashMap::new()),
        })
    }

    /// Forgets the cached Vault token, so the next call logs in again with a freshly
    /// read JWT.
    pub async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    async fn read_secret(&self, request: &SecretRequest) -> Result<SecretValue, BackendError> {
        let mount = self.mount_for(&request.path).await?;
        let (url, _) = self.kv_url(&mount, &request.path, "data", request.version.as_deref())?;
        let body = self.call(Method::GET, url, None, &request.path).await?;
        let mut reply = parse_json(&self.label, &request.path, &body)?;

        let result = match mount.version {
            KvVersion::V1 => kv1_value(&self.label, &request.path, &mut reply),
            KvVersion::V2 => kv2_value(&self.label, &request.path, &mut reply),
        };
        wipe_json(&mut reply);
        result
    }

    async fn read_version(&self, request: &SecretRequest) -> Result<SecretVersion, BackendError> {
        let mount = self.mount_for(&request.path).await?;
        if mount.version == KvVersion::V1 {
            self.read_secret(request).await?;
            return Ok(SecretVersion {
                version: "unversioned".to_owned(),
            });
        }

        let (url, _) = self.kv_url(&mount, &request.path, "metadata", None)?;
        let body = self.call(Method::GET, url, None, &request.path).await?;
        let reply = parse_json(&self.label, &request.path, &body)?;
        kv2_metadata_version(
            &self.label,
            &request.path,
            &reply,
            request.version.as_deref(),
        )
    }

    /// Finds the KV mount that contains `path`, asking Vault once per path.
    async fn mount_for(&self, path: &str) -> Result<KvMount, BackendError> {
        if let Some(version) = self.settings.kv_version {
            let first = path.split('/').next().unwrap_or_default();
            return Ok(KvMount {
                prefix: format!("{first}/"),
                version,
            });
        }
        if let Some(mount) = self.mounts.lock().await.get(path) {
            return Ok(mount.clone());
        }

        let url = self.api_url(&["sys", "internal", "ui", "mounts"], path)?;
        let body = self.call(Method::GET, url, None, path).await?;
        let reply = parse_json(&self.label, path, &body)?;
        let mount = parse_mount(&self.label, path, &reply)?;
        self.mounts
            .lock()
            .await
            .insert(path.to_owned(), mount.clone());
        Ok(mount)
    }

    /// Builds `/v1/<mount><kind>/<rest>` for KV v2, or `/v1/<path>` for KV v1.
    fn kv_url(
        &self,
        mount: &KvMount,
        path: &str,
        kind: &str,
        version: Option<&str>,
    ) -> Result<(Url, String), BackendError> {
        let rest = path.strip_prefix(&mount.prefix).unwrap_or_default();
        let mut url = match mount.version {
            KvVersion::V1 => self.api_url(&[], path)?,
            KvVersion::V2 => {
                let mount_path = mount.prefix.trim_end_matches('/');
                self.api_url(&[], &format!("{mount_path}/{kind}/{rest}"))?
            }
        };
        if let Some(version) = version {
            url.query_pairs_mut().append_pair("version", version);
        }
        Ok((url, rest.to_owned()))
    }

    /// Builds `<address>/v1/<fixed...>/<path segments>`, percent-encoding each segment.
    fn api_url(&self, fixed: &[&str], path: &str) -> Result<Url, BackendError> {
        check_path(&self.label, path)?;
        let mut url = self.settings.address.clone();
        {
            let mut segments =
                url.path_segments_mut()
                    .map_err(|()| BackendError::Configuration {
                        store: self.label.clone(),
                        detail: "the address cannot be a base URL".to_owned(),
                        hint: "set address to an http:// or https:// URL".to_owned(),
                    })?;
            segments.pop_if_empty().push("v1");
            segments.extend(fixed.iter().copied());
            segments.extend(path.split('/').filter(|segment| !segment.is_empty()));
        }
        Ok(url)
    }

    /// Sends an authenticated request and returns the reply body for a 2xx status.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<SecretBytes>,
        path: &str,
    ) -> Result<SecretBytes, BackendError> {
        let token = self.token().await?;
        let mut headers = self.base_headers()?;
        headers.insert(
            "X-Vault-Token",
            sensitive_header(&self.label, token.expose())?,
        );

        let mut builder = self.client.request(method, url).headers(headers);
        if let Some(body) = body {
            builder = builder.body(body.expose().to_vec());
        }
        let response = builder
            .send()
            .await
            .map_err(|error| send_error(&self.label, &error))?;
        let status = response.status();
        let reply = read_body(&self.label, response).await?;
        if status.is_success() {
            return Ok(reply);
        }
        if status == StatusCode::FORBIDDEN {
            // A revoked or expired login token also reads as 403: the next call
            // logs in again instead of reusing it.
            self.forget_token().await;
        }
        Err(status_error(&self.label, path, status, &reply, Step::Read))
    }

    fn base_headers(&self) -> Result<HeaderMap, BackendError> {
        let mut headers = HeaderMap::new();
        if let Some(namespace) = &self.settings.namespace {
            let value =
                HeaderValue::from_str(namespace).map_err(|_| BackendError::Configuration {
                    store: self.label.clone(),
                    detail: format!("namespace {namespace:?} is not a valid header value"),
                    hint: "use a namespace path of printable ASCII characters".to_owned(),
                })?;
            headers.insert("X-Vault-Namespace", value);
        }
        Ok(headers)
    }

    /// Returns a usable token: the cached one, renewed after two thirds of its lease,
    /// or a new login when there is none, renewal is refused, or the lease (capped by
    /// the role's `max_ttl`) is about to end. A token file is read at every call.
    async fn token(&self) -> Result<SecretBytes, BackendError> {
        let (role, mount, token_path) = match &self.settings.auth {
            VaultAuth::TokenFile { path } => return read_token_file(&self.label, path),
            VaultAuth::Kubernetes {
                role,
                mount,
                token_path,
            } => (role, mount, token_path),
        };

        let mut cached = self.token.lock().await;
        if let Some(current) = cached.as_ref() {
            if !current.wants_renewal() {
                return Ok(current.token.clone());
            }
            if current.renewable && !current.is_expiring() {
                match self.renew(&current.token).await {
                    Ok(renewed) => {
                        let token = renewed.token.clone();
                        *cached = Some(renewed);
                        return Ok(token);
                    }
                    Err(error) => {
                        tracing::info!(store = %self.label, %error, "token renewal failed; logging in again");
                    }
                }
            }
        }

        let login = self.kubernetes_login(role, mount, token_path).await?;
        let token = login.token.clone();
        *cached = Some(login);
        Ok(token)
    }

    /// Returns the time left on the cached login token, for metrics.
    pub async fn login_expires_in(&self) -> Option<std::time::Duration> {
        let cached = self.token.lock().await;
        let current = cached.as_ref().filter(|token| !token.ttl.is_zero())?;
        Some(current.ttl.saturating_sub(current.obtained.elapsed()))
    }

    /// Renews the token with `auth/token/renew-self`.
    async fn renew(&self, token: &SecretBytes) -> Result<CachedToken, BackendError> {
        let mut headers = self.base_headers()?;
        headers.insert(
            "X-Vault-Token",
            sensitive_header(&self.label, token.expose())?,
        );
        let url = self.api_url(&["auth", "token"], "renew-self")?;
        let response = self
            .client
            .post(url)
            .headers(headers)
            .body("{}")
            .send()
            .await
            .map_err(|error| send_error(&self.label, &error))?;
        let status = response.status();
        let reply = read_body(&self.label, response).await?;
        if !status.is_success() {
            return Err(status_error(
                &self.label,
                "auth/token/renew-self",
                status,
                &reply,
                Step::Login,
            ));
        }
        let renewed = lease_from_reply(&self.label, "auth/token/renew-self", &reply)?;
        tracing::debug!(store = %self.label, ttl_seconds = renewed.ttl.as_secs(), "renewed the Vault token");
        Ok(renewed)
    }

    async fn kubernetes_login(
        &self,
        role: &str,
        mount: &str,
        token_path: &PathBuf,
    ) -> Result<CachedToken, BackendError> {
        let jwt = read_jwt(&self.label, token_path)?;
        let jwt_text = std::str::from_utf8(jwt.expose()).map_err(|_| {
            auth_error(
                &self.label,
                format!("{token_path:?} is not UTF-8 text"),
                "mount the projected service-account token",
            )
        })?;
        let mut request = serde_json::json!({ "role": role, "jwt": jwt_text });
        let body = SecretBytes::new(serde_json::to_vec(&request).unwrap_or_default());
        wipe_json(&mut request);

        let url = self.api_url(&["auth"], &format!("{mount}/login"))?;
        let response = self
            .client
            .post(url)
            .headers(self.base_headers()?)
            .body(body.expose().to_vec())
            .send()
            .await
            .map_err(|error| send_error(&self.label, &error))?;
        let status = response.status();
        let reply = read_body(&self.label, response).await?;
        if !status.is_success() {
            return Err(status_error(
                &self.label,
                mount,
                status,
                &reply,
                Step::Login,
            ));
        }

        let login = lease_from_reply(&self.label, mount, &reply)?;
        tracing::debug!(store = %self.label, role, mount, ttl_seconds = login.ttl.as_secs(), "logged in with Kubernetes auth");
        Ok(login)
    }
}

impl VaultBackend {
    /// Writes `data` (a JSON object) as a new KV v2 version with check-and-set:
    /// the write succeeds only while `cas` is still the current version (0 when the
    /// secret must not exist yet). Returns the new version.
    pub async fn write_kv2(
        &self,
        path: &str,
        data: &SecretBytes,
        cas: u64,
    ) -> Result<SecretVersion, BackendError> {
        let mount = self.mount_for(path).await?;
        if mount.version != KvVersion::V2 {
            return Err(BackendError::Configuration {
                store: self.label.clone(),
                detail: format!("{path:?} is on a KV v1 mount, which has no versions"),
                hint: "keep keys that rotate on a KV v2 mount".to_owned(),
            });
        }

        let mut parsed: Value = serde_json::from_slice(data.expose()).unwrap_or(Value::Null);
        let mut body = serde_json::json!({ "options": { "cas": cas }, "data": parsed.take() });
        let bytes = SecretBytes::new(serde_json::to_vec(&body).unwrap_or_default());
        wipe_json(&mut body);
        wipe_json(&mut parsed);

        let (url, _) = self.kv_url(&mount, path, "data", None)?;
        let reply = self.call(Method::POST, url, Some(bytes), path).await?;
        let reply = parse_json(&self.label, path, &reply)?;
        let version = reply
            .pointer("/data/version")
            .and_then(Value::as_u64)
            .map(|version| version.to_string())
            .ok_or_else(|| missing_data(&self.label, path))?;
        Ok(SecretVersion { version })
    }
}

impl SecretBackend for VaultBackend {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn fetch<'a>(&'a self, request: &'a SecretRequest) -> BackendFuture<'a, SecretValue> {
        Box::pin(self.read_secret(request))
    }

    fn resolve_version<'a>(
        &'a self,
        request: &'a SecretRequest,
    ) -> BackendFuture<'a, SecretVersion> {
        Box::pin(self.read_version(request))
    }

    fn token_expires_in(&self) -> BackendFuture<'_, Option<std::time::Duration>> {
        Box::pin(async { Ok(self.login_expires_in().await) })
    }
}

/// The request step, which decides how a 403 is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Login,
    Read,
}

/// Reads `auth.client_token`, `auth.lease_duration` and `auth.renewable` from a
/// login or renewal reply.
fn lease_from_reply(
    store: &str,
    path: &str,
    reply: &SecretBytes,
) -> Result<CachedToken, BackendError> {
    let mut parsed = parse_json(store, path, reply)?;
    let token = parsed
        .pointer("/auth/client_token")
        .and_then(Value::as_str)
        .map(|token| SecretBytes::copy_from(token.as_bytes()));
    let ttl = parsed
        .pointer("/auth/lease_duration")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let renewable = parsed
        .pointer("/auth/renewable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    wipe_json(&mut parsed);

    let token = token.ok_or_else(|| {
        auth_error(
            store,
            "the reply has no auth.client_token".to_owned(),
            "check that the auth mount is a Kubernetes auth method",
        )
    })?;
    Ok(CachedToken {
        token,
        obtained: tokio::time::Instant::now(),
        ttl: std::time::Duration::from_secs(ttl),
        renewable,
    })
}

fn check_path(store: &str, path: &str) -> Result<(), BackendError> {
    let bad_segment = path
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    if path.is_empty() || path.starts_with('/') || bad_segment || path.contains(['?', '#']) {
        return Err(BackendError::Configuration {
            store: store.to_owned(),
            detail: format!("invalid Vault path {path:?}"),
            hint: "write the path as mount/secret, such as secret/portainer, without a leading slash, '.', '..', '?' or '#'".to_owned(),
        });
    }
    Ok(())
}

fn sensitive_header(store: &str, token: &[u8]) -> Result<HeaderValue, BackendError> {
    let mut value = HeaderValue::from_bytes(token).map_err(|_| {
        auth_error(
            store,
            "the Vault token contains characters that are not allowed in a header".to_owned(),
            "check the token file's content",
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

fn read_token_file(store: &str, path: &PathBuf) -> Result<SecretBytes, BackendError> {
    let mut bytes =
        read_credential_file(store, path, "set auth.path to a file holding a Vault token")?;
    let trimmed_len = bytes.expose().trim_ascii_end().len();
    bytes.expose_mut().truncate(trimmed_len);
    if bytes.is_empty() {
        return Err(auth_error(
            store,
            format!("token file {path:?} is empty"),
            "write a Vault token into the file",
        ));
    }
    Ok(bytes)
}

fn read_jwt(store: &str, path: &PathBuf) -> Result<SecretBytes, BackendError> {
    let mut bytes = read_credential_file(
        store,
        path,
        "mount a projected service-account token there, or set auth.token_path",
    )?;
    let trimmed_len = bytes.expose().trim_ascii_end().len();
    bytes.expose_mut().truncate(trimmed_len);
    if bytes.is_empty() {
        return Err(auth_error(
            store,
            format!("service-account token {path:?} is empty"),
            "check the projected token volume",
        ));
    }
    Ok(bytes)
}

fn read_credential_file(
    store: &str,
    path: &PathBuf,
    hint: &str,
) -> Result<SecretBytes, BackendError> {
    std::fs::read(path)
        .map(SecretBytes::new)
        .map_err(|error| auth_error(store, format!("failed to read {path:?}: {error}"), hint))
}

fn auth_error(store: &str, detail: String, hint: &str) -> BackendError {
    BackendError::Authentication {
        store: store.to_owned(),
        detail,
        hint: hint.to_owned(),
    }
}

async fn read_body(
    store: &str,
    mut response: reqwest::Response,
) -> Result<SecretBytes, BackendError> {
    let mut body = SecretBytes::default();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| send_error(store, &error))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(BackendError::InvalidResponse {
                store: store.to_owned(),
                path: response.url().path().to_owned(),
                detail: format!("the reply is larger than {MAX_BODY_BYTES} bytes"),
                hint: "check that address points at Vault or OpenBao".to_owned(),
            });
        }
        body.expose_mut().extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse_json(store: &str, path: &str, body: &SecretBytes) -> Result<Value, BackendError> {
    serde_json::from_slice(body.expose()).map_err(|error| BackendError::InvalidResponse {
        store: store.to_owned(),
        path: path.to_owned(),
        detail: format!("the reply is not JSON ({error})"),
        hint: "check that address points at Vault or OpenBao".to_owned(),
    })
}

/// Extracts Vault's error messages, which never contain request secrets.
fn vault_errors(body: &SecretBytes) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body.expose()).ok();
    let messages: Vec<String> = parsed
        .as_ref()
        .and_then(|reply| reply.get("errors"))
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .filter_map(Value::as_str)
                .map(|message| message.chars().take(300).collect())
                .collect()
        })
        .unwrap_or_default();
    if messages.is_empty() {
        "no error message".to_owned()
    } else {
        messages.join("; ")
    }
}

fn status_error(
    store: &str,
    path: &str,
    status: StatusCode,
    body: &SecretBytes,
    step: Step,
) -> BackendError {
    let detail = format!("HTTP {} ({})", status.as_u16(), vault_errors(body));
    let store = store.to_owned();
    let path = path.to_owned();
    match (status.as_u16(), step) {
        (400 | 401 | 403, Step::Login) => BackendError::Authentication {
            store,
            detail,
            hint: "check the role name, its bound service account and namespace, and the auth mount".to_owned(),
        },
        (401 | 403, Step::Read) => BackendError::PermissionDenied {
            store,
            path,
            detail,
            hint: "the token may be invalid, expired or revoked, the mount may not exist, or the policy lacks read on this path (KV v2: <mount>/data/<path> and <mount>/metadata/<path>; mount detection: sys/internal/ui/mounts/<path>)".to_owned(),
        },
        (404, _) => match deleted_version(body) {
            Some(reason) => BackendError::NotFound {
                store,
                path,
                detail: format!("HTTP 404: {reason}"),
                hint: UNDELETE_HINT.to_owned(),
            },
            None => BackendError::NotFound {
                store,
                path,
                detail,
                hint: "check the mount, the path and the version".to_owned(),
            },
        },
        (412 | 429 | 472 | 473, _) | (500..=599, _) => BackendError::Unavailable { store, detail },
        _ => BackendError::InvalidResponse {
            store,
            path,
            detail,
            hint: "check the request settings against the Vault server".to_owned(),
        },
    }
}

/// Explains a KV v2 404 whose body describes a deleted or destroyed version.
fn deleted_version(body: &SecretBytes) -> Option<String> {
    let reply: Value = serde_json::from_slice(body.expose()).ok()?;
    deletion_reason(&reply)
}

/// Describes a deleted or destroyed version from a KV v2 reply's metadata.
fn deletion_reason(reply: &Value) -> Option<String> {
    let metadata = reply.pointer("/data/metadata")?;
    let version = metadata
        .get("version")
        .and_then(Value::as_u64)
        .unwrap_or_default();
    if metadata.get("destroyed").and_then(Value::as_bool) == Some(true) {
        return Some(format!("version {version} was destroyed"));
    }
    let deleted = metadata
        .get("deletion_time")
        .and_then(Value::as_str)
        .filter(|time| !time.is_empty())?;
    Some(format!("version {version} was deleted at {deleted}"))
}

fn parse_mount(store: &str, path: &str, reply: &Value) -> Result<KvMount, BackendError> {
    let data = reply.get("data").cloned().unwrap_or(Value::Null);
    let prefix = data.get("path").and_then(Value::as_str).unwrap_or_default();
    let engine = data.get("type").and_then(Value::as_str).unwrap_or_default();
    if prefix.is_empty() || !path.starts_with(prefix) {
        return Err(BackendError::NotFound {
            store: store.to_owned(),
            path: path.to_owned(),
            detail: "no secrets engine is mounted at this path".to_owned(),
            hint: "start the path with the KV mount, such as secret/portainer".to_owned(),
        });
    }
    if engine != "kv" && engine != "generic" {
        return Err(BackendError::InvalidResponse {
            store: store.to_owned(),
            path: path.to_owned(),
            detail: format!("mount {prefix:?} is a {engine:?} engine, not KV"),
            hint: "point the secret at a KV v1 or v2 mount".to_owned(),
        });
    }

    let version = match data.pointer("/options/version").and_then(Value::as_str) {
        Some("2") => KvVersion::V2,
        _ => KvVersion::V1,
    };
    Ok(KvMount {
        prefix: prefix.to_owned(),
        version,
    })
}

fn kv1_value(store: &str, path: &str, reply: &mut Value) -> Result<SecretValue, BackendError> {
    let data = reply
        .get("data")
        .filter(|data| data.is_object())
        .ok_or_else(|| missing_data(store, path))?;
    Ok(SecretValue {
        bytes: json_bytes(data),
        is_json_object: true,
        version: "unversioned".to_owned(),
    })
}

fn kv2_value(store: &str, path: &str, reply: &mut Value) -> Result<SecretValue, BackendError> {
    let version = reply
        .pointer("/data/metadata/version")
        .and_then(Value::as_u64)
        .map(|version| version.to_string())
        .unwrap_or_else(|| "unknown".to_owned());
    let data = reply
        .pointer("/data/data")
        .filter(|data| data.is_object())
        .ok_or_else(|| deleted_or_missing(store, path, reply))?;
    Ok(SecretValue {
        bytes: json_bytes(data),
        is_json_object: true,
        version,
    })
}

fn json_bytes(value: &Value) -> SecretBytes {
    SecretBytes::new(serde_json::to_vec(value).unwrap_or_default())
}

fn missing_data(store: &str, path: &str) -> BackendError {
    BackendError::InvalidResponse {
        store: store.to_owned(),
        path: path.to_owned(),
        detail: "the reply has no data object".to_owned(),
        hint: "check that the path is a KV secret".to_owned(),
    }
}

/// Explains a KV v2 reply without data: a deleted or destroyed version.
fn deleted_or_missing(store: &str, path: &str, reply: &Value) -> BackendError {
    let Some(detail) = deletion_reason(reply) else {
        return missing_data(store, path);
    };
    BackendError::NotFound {
        store: store.to_owned(),
        path: path.to_owned(),
        detail,
        hint: UNDELETE_HINT.to_owned(),
    }
}

/// Reads the current or pinned version from a KV v2 metadata reply.
fn kv2_metadata_version(
    store: &str,
    path: &str,
    reply: &Value,
    pinned: Option<&str>,
) -> Result<SecretVersion, BackendError> {
    let version = match pinned {
        Some(version) => version.to_owned(),
        None => reply
            .pointer("/data/current_version")
            .and_then(Value::as_u64)
            .map(|version| version.to_string())
            .ok_or_else(|| missing_data(store, path))?,
    };

    let entry = reply.pointer(&format!("/data/versions/{version}"));
    let Some(entry) = entry else {
        return Err(BackendError::NotFound {
            store: store.to_owned(),
            path: path.to_owned(),
            detail: format!("version {version} does not exist"),
            hint: "pin a version listed by the metadata endpoint".to_owned(),
        });
    };
    let mut wrapped = serde_json::json!({ "data": { "metadata": entry } });
    if let Some(metadata) = wrapped.pointer_mut("/data/metadata") {
        metadata["version"] = Value::from(version.parse::<u64>().unwrap_or_default());
    }
    match deleted_or_missing(store, path, &wrapped) {
        error @ BackendError::NotFound { .. } => Err(error),
        _ => Ok(SecretVersion { version }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(kv_version: Option<KvVersion>) -> VaultBackend {
        VaultBackend::new(VaultSettings {
            address: Url::parse("http://127.0.0.1:8200").expect("url"),
            namespace: None,
            auth: VaultAuth::TokenFile {
                path: PathBuf::from("/nonexistent"),
            },
            kv_version,
            transport: Transport::default(),
        })
        .expect("backend")
    }

    #[test]
    fn kv2_url_inserts_data_after_mount_only() {
        let vault = backend(None);
        let mount = KvMount {
            prefix: "secret/".to_owned(),
            version: KvVersion::V2,
        };

        let (url, _) = vault
            .kv_url(&mount, "secret/data/portainer", "data", Some("3"))
            .expect("url");

        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8200/v1/secret/data/data/portainer?version=3"
        );
    }

    #[test]
    fn kv2_url_handles_nested_mount() {
        let vault = backend(None);
        let mount = KvMount {
            prefix: "team/kv/".to_owned(),
            version: KvVersion::V2,
        };

        let (url, _) = vault
            .kv_url(&mount, "team/kv/portainer", "metadata", None)
            .expect("url");

        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8200/v1/team/kv/metadata/portainer"
        );
    }

    #[test]
    fn kv1_url_is_the_path() {
        let vault = backend(None);
        let mount = KvMount {
            prefix: "kv/".to_owned(),
            version: KvVersion::V1,
        };

        let (url, _) = vault
            .kv_url(&mount, "kv/portainer", "data", None)
            .expect("url");

        assert_eq!(url.as_str(), "http://127.0.0.1:8200/v1/kv/portainer");
    }

    #[test]
    fn path_traversal_is_rejected() {
        let vault = backend(None);

        for path in [
            "../sys/raw",
            "secret/../../x",
            "/secret/x",
            "secret/x?version=1",
            "",
        ] {
            let error = vault.api_url(&[], path).expect_err(path);
            assert!(
                matches!(error, BackendError::Configuration { .. }),
                "{path}: {error}"
            );
        }
    }

    #[test]
    fn status_403_on_read_is_permission_denied() {
        let body = SecretBytes::copy_from(br#"{"errors":["permission denied"]}"#);

        let error = status_error(
            "vault",
            "secret/x",
            StatusCode::FORBIDDEN,
            &body,
            Step::Read,
        );

        assert!(
            matches!(error, BackendError::PermissionDenied { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("permission denied"));
    }

    #[test]
    fn status_503_is_transient() {
        let body = SecretBytes::copy_from(br#"{"errors":["Vault is sealed"]}"#);

        let error = status_error(
            "vault",
            "secret/x",
            StatusCode::SERVICE_UNAVAILABLE,
            &body,
            Step::Read,
        );

        assert!(error.is_transient());
    }

    #[test]
    fn deleted_version_is_explained() {
        let reply = serde_json::json!({"data": {"data": null, "metadata": {"version": 2, "deletion_time": "2026-01-01T00:00:00Z", "destroyed": false}}});

        let error = deleted_or_missing("vault", "secret/x", &reply);

        assert!(matches!(error, BackendError::NotFound { .. }), "{error}");
        assert!(
            error.to_string().contains("deleted at 2026-01-01"),
            "{error}"
        );
    }

    #[test]
    fn mount_reply_with_options_version_2() {
        let reply = serde_json::json!({"data": {"path": "secret/", "type": "kv", "options": {"version": "2"}}});

        let mount = parse_mount("vault", "secret/portainer", &reply).expect("mount");

        assert_eq!(mount.prefix, "secret/");
        assert_eq!(mount.version, KvVersion::V2);
    }

    #[test]
    fn mount_reply_of_other_engine_is_rejected() {
        let reply =
            serde_json::json!({"data": {"path": "transit/", "type": "transit", "options": null}});

        let error = parse_mount("vault", "transit/keys/x", &reply).expect_err("transit");

        assert!(error.to_string().contains("not KV"), "{error}");
    }

    #[test]
    fn wipe_json_clears_strings() {
        let mut value = serde_json::json!({"key": "secret", "list": ["a"]});

        wipe_json(&mut value);

        assert_eq!(value, serde_json::json!({"key": "", "list": [""]}));
    }
}
