//! Azure Key Vault with Azure workload identity.
//!
//! The federated token (a projected service-account JWT) is read from its file at
//! every exchange and sent to Entra ID as the client assertion of a
//! `client_credentials` grant. Key Vault's first reply is a 401 with a Bearer
//! challenge, and the token is requested for the challenge's scope only after
//! the challenge resource is checked against the vault host.
//!
//! This is a thin reqwest client rather than the official `azure_identity` and
//! `azure_security_keyvault_secrets` crates (1.1.0-beta.1 checked). Their
//! `WorkloadIdentityCredential` caches the token file's contents for 600 s after
//! each read, whatever the token's own expiry, so an exchange can send a token
//! that has already expired. The client below re-reads the file at every exchange
//! and sends every request through the shared [`Transport`].

use std::path::PathBuf;

use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

use crate::http::{Transport, read_body_limited, send_error};
use crate::oauth::{
    CachedToken, MAX_BODY_BYTES, bearer_header, expires_in, read_token_file, short_message,
    take_secret_string,
};
use crate::wipe_json;
use crate::{
    BackendError, BackendFuture, SecretBackend, SecretBytes, SecretRequest, SecretValue,
    SecretVersion,
};

/// Key Vault REST API version sent with every secret request.
pub const KEY_VAULT_API_VERSION: &str = "7.5";
/// Client assertion type of a federated credential (RFC 7523).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An Azure cloud: its Entra ID authority host and its Key Vault DNS suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AzureCloud {
    Public,
    UsGovernment,
    China,
}

impl AzureCloud {
    /// Parses the configuration name: `public`, `us-government` or `china`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "public" => Some(AzureCloud::Public),
            "us-government" => Some(AzureCloud::UsGovernment),
            "china" => Some(AzureCloud::China),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AzureCloud::Public => "public",
            AzureCloud::UsGovernment => "us-government",
            AzureCloud::China => "china",
        }
    }

    /// Returns the Entra ID authority host of this cloud.
    pub fn authority_host(self) -> &'static str {
        match self {
            AzureCloud::Public => "https://login.microsoftonline.com",
            AzureCloud::UsGovernment => "https://login.microsoftonline.us",
            AzureCloud::China => "https://login.chinacloudapi.cn",
        }
    }

    /// Returns the DNS suffix of vault hosts in this cloud, without the leading dot.
    pub fn vault_suffix(self) -> &'static str {
        match self {
            AzureCloud::Public => "vault.azure.net",
            AzureCloud::UsGovernment => "vault.usgovcloudapi.net",
            AzureCloud::China => "vault.azure.cn",
        }
    }

    /// Returns the cloud whose vault DNS suffix `host` ends with, if any.
    pub fn of_vault_host(host: &str) -> Option<Self> {
        let host = host.to_ascii_lowercase();
        [
            AzureCloud::Public,
            AzureCloud::UsGovernment,
            AzureCloud::China,
        ]
        .into_iter()
        .find(|cloud| host.ends_with(&format!(".{}", cloud.vault_suffix())))
    }
}

/// Settings of one Key Vault, with the workload identity already resolved from
/// the configuration and the `AZURE_*` environment variables.
#[derive(Clone, Debug)]
pub struct AzureSettings {
    /// Vault URL, such as `https://my-vault.vault.azure.net`.
    pub vault_url: Url,
    pub tenant_id: String,
    /// Client ID of the app registration or user-assigned managed identity.
    pub client_id: String,
    /// Entra ID authority host, such as `https://login.microsoftonline.com`.
    pub authority_host: Url,
    /// The federated token file, read at every token exchange.
    pub token_file: PathBuf,
    pub cloud: AzureCloud,
    pub transport: Transport,
}

/// Azure Key Vault.
pub struct AzureBackend {
    settings: AzureSettings,
    client: reqwest::Client,
    label: String,
    /// Scope from the vault's verified challenge, learned on the first request.
    scope: Mutex<Option<String>>,
    token: Mutex<Option<CachedToken>>,
}

impl std::fmt::Debug for AzureBackend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AzureBackend")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A reply from Key Vault, before it is interpreted.
struct Reply {
    status: StatusCode,
    challenge: Option<String>,
    body: SecretBytes,
}

impl AzureBackend {
    /// Creates a client; nothing is sent until the first fetch.
    pub fn new(settings: AzureSettings) -> Result<Self, BackendError> {
        let label = format!("azure key vault {}", settings.vault_url);
        let client = settings.transport.client(&label)?;
        Ok(Self {
            settings,
            client,
            label,
            scope: Mutex::new(None),
            token: Mutex::new(None),
        })
    }

    async fn get_secret(&self, request: &SecretRequest) -> Result<SecretValue, BackendError> {
        let url = self.secret_url(request)?;
        let scope = self.scope(&url, &request.path).await?;

        let mut reply = self.get_with_token(&url, &scope, false).await?;
        if reply.status == StatusCode::UNAUTHORIZED {
            // The cached token may have been revoked: exchange a new one once.
            tracing::debug!(store = %self.label, "Key Vault rejected the access token; requesting a new one");
            *self.token.lock().await = None;
            reply = self.get_with_token(&url, &scope, true).await?;
        }
        if reply.status == StatusCode::UNAUTHORIZED {
            return Err(BackendError::Authentication {
                store: self.label.clone(),
                detail: format!(
                    "Key Vault rejected a new access token (HTTP 401: {})",
                    key_vault_message(&reply.body)
                ),
                hint: "check that tenant_id is the vault's tenant and that the token is for the vault's scope".to_owned(),
            });
        }
        self.secret_from_reply(&request.path, reply)
    }

    /// Builds `<vault>/secrets/<name>[/<version>]?api-version=...`.
    fn secret_url(&self, request: &SecretRequest) -> Result<Url, BackendError> {
        check_secret_name(&self.label, &request.path)?;
        if let Some(version) = &request.version {
            check_version(&self.label, &request.path, version)?;
        }
        let mut url = self.settings.vault_url.clone();
        url.set_query(None);
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| self.configuration("the vault URL cannot be a base URL"))?;
            segments.pop_if_empty().push("secrets").push(&request.path);
            if let Some(version) = &request.version {
                segments.push(version);
            }
        }
        url.query_pairs_mut()
            .append_pair("api-version", KEY_VAULT_API_VERSION);
        Ok(url)
    }

    /// Returns the scope of the vault's challenge, sending one unauthenticated
    /// request to learn it the first time.
    async fn scope(&self, url: &Url, path: &str) -> Result<String, BackendError> {
        let mut cached = self.scope.lock().await;
        if let Some(scope) = cached.as_ref() {
            return Ok(scope.clone());
        }

        let reply = self.send(url, None).await?;
        let Some(challenge) = reply
            .challenge
            .as_deref()
            .filter(|_| reply.status == StatusCode::UNAUTHORIZED)
        else {
            if reply.status == StatusCode::UNAUTHORIZED || reply.status.is_success() {
                return Err(BackendError::InvalidResponse {
                    store: self.label.clone(),
                    path: path.to_owned(),
                    detail: format!(
                        "an unauthenticated request returned HTTP {} without a Bearer challenge",
                        reply.status.as_u16()
                    ),
                    hint: "check that vault_url points at Azure Key Vault".to_owned(),
                });
            }
            return Err(self.status_error(path, &reply));
        };

        let scope = challenge_scope(&self.label, challenge, &self.settings.vault_url)?;
        tracing::debug!(store = %self.label, scope = %scope, "Key Vault challenge verified");
        *cached = Some(scope.clone());
        Ok(scope)
    }

    async fn get_with_token(
        &self,
        url: &Url,
        scope: &str,
        force_new: bool,
    ) -> Result<Reply, BackendError> {
        let token = self.access_token(scope, force_new).await?;
        self.send(url, Some(&token)).await
    }

    async fn send(&self, url: &Url, token: Option<&SecretBytes>) -> Result<Reply, BackendError> {
        let mut builder = self.client.get(url.clone());
        if let Some(token) = token {
            builder = builder.header(AUTHORIZATION, bearer_header(&self.label, token)?);
        }
        let response = builder
            .send()
            .await
            .map_err(|error| send_error(&self.label, &error))?;
        let status = response.status();
        let challenge = response
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find(|value| {
                value
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("bearer")
            })
            .map(str::to_owned);
        let body = read_body_limited(&self.label, response, MAX_BODY_BYTES).await?;
        Ok(Reply {
            status,
            challenge,
            body,
        })
    }

    /// Returns a cached access token for `scope`, or exchanges the federated token
    /// for a new one.
    async fn access_token(
        &self,
        scope: &str,
        force_new: bool,
    ) -> Result<SecretBytes, BackendError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached
            .as_ref()
            .filter(|token| token.is_fresh() && !force_new)
        {
            return Ok(token.value.clone());
        }

        let token = self.exchange(scope).await?;
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }

    /// Sends the federated token to Entra ID as a client assertion.
    async fn exchange(&self, scope: &str) -> Result<CachedToken, BackendError> {
        let assertion = read_token_file(
            &self.label,
            &self.settings.token_file,
            "mount the Azure workload identity token there (AZURE_FEDERATED_TOKEN_FILE), or set token_file",
        )?;
        let assertion_text = std::str::from_utf8(assertion.expose()).unwrap_or_default();
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.settings.client_id.as_str()),
            ("scope", scope),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion_text),
        ];
        let body = SecretBytes::from(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish(),
        );

        let response = self
            .client
            .post(self.token_url()?)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body.expose().to_vec())
            .send()
            .await
            .map_err(|error| send_error(&self.label, &error))?;
        let status = response.status();
        let reply = read_body_limited(&self.label, response, MAX_BODY_BYTES).await?;
        if !status.is_success() {
            return Err(self.token_error(status, &reply));
        }

        let mut parsed: Value = serde_json::from_slice(reply.expose()).unwrap_or(Value::Null);
        let token = take_secret_string(&mut parsed, "access_token");
        let lifetime = expires_in(&parsed);
        wipe_json(&mut parsed);
        match (token, lifetime) {
            (Some(token), Some(lifetime)) if !token.is_empty() => {
                tracing::debug!(store = %self.label, client_id = %self.settings.client_id, expires_in_seconds = lifetime.as_secs(), "exchanged the federated token for an access token");
                Ok(CachedToken::new(token, lifetime))
            }
            _ => Err(BackendError::Authentication {
                store: self.label.clone(),
                detail: "the token reply has no access_token or expires_in".to_owned(),
                hint: "check that authority_host points at Entra ID".to_owned(),
            }),
        }
    }

    /// Builds `<authority>/<tenant>/oauth2/v2.0/token`.
    fn token_url(&self) -> Result<Url, BackendError> {
        let mut url = self.settings.authority_host.clone();
        url.set_query(None);
        url.path_segments_mut()
            .map_err(|()| self.configuration("the authority host cannot be a base URL"))?
            .pop_if_empty()
            .extend([self.settings.tenant_id.as_str(), "oauth2", "v2.0", "token"]);
        Ok(url)
    }

    fn token_error(&self, status: StatusCode, reply: &SecretBytes) -> BackendError {
        let parsed: Value = serde_json::from_slice(reply.expose()).unwrap_or(Value::Null);
        let code = parsed
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no error code");
        let description = parsed
            .get("error_description")
            .and_then(Value::as_str)
            .map(short_message)
            .unwrap_or_default();
        let detail = format!(
            "the token request returned HTTP {} ({code}: {description})",
            status.as_u16()
        );
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return BackendError::Unavailable {
                store: self.label.clone(),
                detail,
            };
        }
        BackendError::Authentication {
            store: self.label.clone(),
            detail,
            hint: "check tenant_id, client_id and the federated credential (issuer, subject and audience api://AzureADTokenExchange) of the identity".to_owned(),
        }
    }

    fn secret_from_reply(&self, path: &str, reply: Reply) -> Result<SecretValue, BackendError> {
        if !reply.status.is_success() {
            return Err(self.status_error(path, &reply));
        }

        let invalid = |detail: &str| BackendError::InvalidResponse {
            store: self.label.clone(),
            path: path.to_owned(),
            detail: detail.to_owned(),
            hint: "check that vault_url points at Azure Key Vault".to_owned(),
        };
        let mut parsed: Value = serde_json::from_slice(reply.body.expose())
            .map_err(|_| invalid("the reply is not JSON"))?;
        let version = parsed
            .get("id")
            .and_then(Value::as_str)
            .and_then(version_from_id);
        let value = take_secret_string(&mut parsed, "value");
        wipe_json(&mut parsed);

        let version =
            version.ok_or_else(|| invalid("the reply has no secret id with a version"))?;
        let bytes = value.ok_or_else(|| invalid("the reply has no string value"))?;
        Ok(SecretValue {
            bytes,
            is_json_object: false,
            version,
        })
    }

    fn status_error(&self, path: &str, reply: &Reply) -> BackendError {
        let (code, inner_code) = key_vault_codes(&reply.body);
        let message = key_vault_message(&reply.body);
        let detail = format!(
            "HTTP {} {code}{}: {message}",
            reply.status.as_u16(),
            inner_code
                .as_deref()
                .map(|inner| format!("/{inner}"))
                .unwrap_or_default()
        );
        let store = self.label.clone();
        let path = path.to_owned();
        let disabled = inner_code.as_deref() == Some("SecretDisabled")
            || (code == "Forbidden" && message.to_ascii_lowercase().contains("disabled"));

        match reply.status.as_u16() {
            404 => BackendError::NotFound {
                store,
                path,
                detail,
                hint: "check the secret name and version, and that vault_url is the right vault".to_owned(),
            },
            403 if disabled => BackendError::NotFound {
                store,
                path,
                detail,
                hint: "enable the secret version in Key Vault, or pin an enabled version".to_owned(),
            },
            403 if code == "ForbiddenByRbac" => BackendError::PermissionDenied {
                store,
                path,
                detail,
                hint: "assign the \"Key Vault Secrets User\" role on the vault or the secret to the client ID".to_owned(),
            },
            401 | 403 => BackendError::PermissionDenied {
                store,
                path,
                detail,
                hint: "allow the client ID to get secrets: the \"Key Vault Secrets User\" role, or the Get secret permission of the vault's access policy".to_owned(),
            },
            408 | 429 | 500..=599 => BackendError::Unavailable { store, detail },
            _ => BackendError::InvalidResponse {
                store,
                path,
                detail,
                hint: "check the secret name, the version and vault_url".to_owned(),
            },
        }
    }

    fn configuration(&self, detail: &str) -> BackendError {
        BackendError::Configuration {
            store: self.label.clone(),
            detail: detail.to_owned(),
            hint: "set vault_url and authority_host to https:// URLs".to_owned(),
        }
    }
}

impl SecretBackend for AzureBackend {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn fetch<'a>(&'a self, request: &'a SecretRequest) -> BackendFuture<'a, SecretValue> {
        Box::pin(self.get_secret(request))
    }

    /// Key Vault returns the version only with the value, so the value is read and
    /// dropped.
    fn resolve_version<'a>(
        &'a self,
        request: &'a SecretRequest,
    ) -> BackendFuture<'a, SecretVersion> {
        Box::pin(async move {
            let value = self.get_secret(request).await?;
            Ok(SecretVersion {
                version: value.version,
            })
        })
    }
}

/// Checks a Key Vault secret name: 1 to 127 letters, digits and hyphens.
pub fn check_secret_name(store: &str, name: &str) -> Result<(), BackendError> {
    let valid = !name.is_empty()
        && name.len() <= 127
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        return Ok(());
    }
    Err(BackendError::Configuration {
        store: store.to_owned(),
        detail: format!("invalid Key Vault secret name {name:?}"),
        hint: "use the secret's name: 1 to 127 letters, digits and hyphens".to_owned(),
    })
}

/// Checks a Key Vault version id: 1 to 64 letters and digits. Key Vault issues
/// ids of 32 hex digits.
pub fn check_version(store: &str, path: &str, version: &str) -> Result<(), BackendError> {
    let valid = !version.is_empty()
        && version.len() <= 64
        && version.chars().all(|c| c.is_ascii_alphanumeric());
    if valid {
        return Ok(());
    }
    Err(BackendError::Configuration {
        store: store.to_owned(),
        detail: format!("invalid Key Vault version {version:?} for {path:?}"),
        hint: "pin a version id as Key Vault lists it, such as 4387e9f3d6e14c459867679a90fd0f79"
            .to_owned(),
    })
}

/// Returns the version from a secret id such as
/// `https://v.vault.azure.net/secrets/name/4387e9f3d6e14c459867679a90fd0f79`.
fn version_from_id(id: &str) -> Option<String> {
    let url = Url::parse(id).ok()?;
    let segments: Vec<&str> = url.path_segments()?.collect();
    match segments.as_slice() {
        ["secrets", _, version] if !version.is_empty() => Some((*version).to_owned()),
        _ => None,
    }
}

/// Parses the parameters of a `Bearer` challenge, such as
/// `Bearer authorization="https://login.microsoftonline.com/TENANT", resource="https://vault.azure.net"`.
fn challenge_parameters(challenge: &str) -> Vec<(String, String)> {
    let rest = challenge.trim_start();
    let rest = rest.get(6..).unwrap_or_default();
    let mut parameters = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let name: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if name.is_empty() || chars.next_if_eq(&'=').is_none() {
            break;
        }
        let value: String = if chars.next_if_eq(&'"').is_some() {
            let value = std::iter::from_fn(|| chars.next_if(|c| *c != '"')).collect();
            chars.next();
            value
        } else {
            std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect()
        };
        parameters.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    parameters
}

/// Returns the token scope of a Key Vault challenge: its `scope` parameter, or its
/// `resource` followed by `/.default`.
///
/// The scope's host must be the vault host or a parent domain of it (for
/// `https://my-vault.vault.azure.net`, `vault.azure.net`), so a server that is not
/// the vault cannot obtain a token for another resource.
fn challenge_scope(store: &str, challenge: &str, vault_url: &Url) -> Result<String, BackendError> {
    let parameters = challenge_parameters(challenge);
    let find = |name: &str| {
        parameters
            .iter()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.clone())
    };
    let scope = find("scope").or_else(|| {
        find("resource").map(|resource| format!("{}/.default", resource.trim_end_matches('/')))
    });
    let invalid = |detail: String| {
        BackendError::InvalidResponse {
        store: store.to_owned(),
        path: String::new(),
        detail,
        hint: "check that vault_url points at Azure Key Vault; a challenge for another resource is never followed".to_owned(),
    }
    };
    let Some(scope) = scope else {
        return Err(invalid(
            "the Bearer challenge has neither scope nor resource".to_owned(),
        ));
    };

    let resource = Url::parse(&scope)
        .map_err(|_| invalid(format!("the challenge scope {scope:?} is not a URL")))?;
    let resource_host = resource.host_str().unwrap_or_default().to_ascii_lowercase();
    let vault_host = vault_url
        .host_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let matches = !resource_host.is_empty()
        && resource.scheme() == "https"
        && (vault_host == resource_host || vault_host.ends_with(&format!(".{resource_host}")));
    if !matches {
        return Err(invalid(format!(
            "the challenge resource {resource_host:?} does not match the vault host {vault_host:?}"
        )));
    }
    Ok(scope)
}

/// Returns `error.code` and `error.innererror.code` of a Key Vault error reply.
fn key_vault_codes(body: &SecretBytes) -> (String, Option<String>) {
    let parsed: Value = serde_json::from_slice(body.expose()).unwrap_or(Value::Null);
    let code = parsed
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("no error code")
        .to_owned();
    let inner = parsed
        .pointer("/error/innererror/code")
        .and_then(Value::as_str)
        .map(str::to_owned);
    (code, inner)
}

/// Returns `error.message` of a Key Vault error reply, which names the caller and
/// the secret but never carries a value.
fn key_vault_message(body: &SecretBytes) -> String {
    let parsed: Value = serde_json::from_slice(body.expose()).unwrap_or(Value::Null);
    parsed
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(short_message)
        .unwrap_or_else(|| "no error message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Url {
        Url::parse("https://pka-test.vault.azure.net").expect("url")
    }

    #[test]
    fn challenge_with_resource_gives_default_scope() {
        let challenge = r#"Bearer authorization="https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47", resource="https://vault.azure.net""#;

        let scope = challenge_scope("azure", challenge, &vault()).expect("scope");

        assert_eq!(scope, "https://vault.azure.net/.default");
    }

    #[test]
    fn challenge_scope_parameter_wins() {
        let challenge = r#"Bearer authorization_uri="https://login.microsoftonline.com/t", scope="https://vault.azure.net/.default", resource="https://other.example""#;

        let scope = challenge_scope("azure", challenge, &vault()).expect("scope");

        assert_eq!(scope, "https://vault.azure.net/.default");
    }

    #[test]
    fn challenge_for_other_resource_is_rejected() {
        for resource in [
            "https://management.azure.com",
            "https://evil.example",
            "https://azure.net.evil.example",
            "http://vault.azure.net",
        ] {
            let challenge = format!(
                r#"Bearer authorization="https://login.microsoftonline.com/t", resource="{resource}""#
            );

            let error = challenge_scope("azure", &challenge, &vault()).expect_err(resource);

            assert!(
                matches!(error, BackendError::InvalidResponse { .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn challenge_may_name_the_vault_host_itself() {
        let vault = Url::parse("https://[::1]:8443").expect("url");
        let challenge =
            r#"Bearer authorization="https://[::1]:8443/t", resource="https://[::1]:8443""#;

        let scope = challenge_scope("azure", challenge, &vault).expect("scope");

        assert_eq!(scope, "https://[::1]:8443/.default");
    }

    #[test]
    fn version_is_read_from_id() {
        let id = "https://v.vault.azure.net/secrets/portainer/4387e9f3d6e14c459867679a90fd0f79";

        assert_eq!(
            version_from_id(id).as_deref(),
            Some("4387e9f3d6e14c459867679a90fd0f79")
        );
        assert_eq!(version_from_id("https://v.vault.azure.net/secrets/x"), None);
    }

    #[test]
    fn secret_names_are_checked() {
        assert!(check_secret_name("azure", "portainer-db-key").is_ok());
        for name in ["", "a/b", "a_b", "..", "a?b"] {
            assert!(check_secret_name("azure", name).is_err(), "{name}");
        }
    }

    #[test]
    fn clouds_map_vault_hosts() {
        assert_eq!(
            AzureCloud::of_vault_host("x.vault.usgovcloudapi.net"),
            Some(AzureCloud::UsGovernment)
        );
        assert_eq!(
            AzureCloud::of_vault_host("x.vault.azure.cn"),
            Some(AzureCloud::China)
        );
        assert_eq!(AzureCloud::of_vault_host("127.0.0.1"), None);
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).expect("status"),
            challenge: None,
            body: SecretBytes::copy_from(body.as_bytes()),
        }
    }

    fn backend() -> AzureBackend {
        AzureBackend::new(AzureSettings {
            vault_url: vault(),
            tenant_id: "t".to_owned(),
            client_id: "c".to_owned(),
            authority_host: Url::parse("https://login.microsoftonline.com").expect("url"),
            token_file: PathBuf::from("/nonexistent"),
            cloud: AzureCloud::Public,
            transport: Transport::default(),
        })
        .expect("backend")
    }

    #[test]
    fn key_vault_errors_are_classified() {
        let azure = backend();
        let disabled = reply(
            403,
            r#"{"error":{"code":"Forbidden","message":"Operation get is not allowed on a disabled secret.","innererror":{"code":"SecretDisabled"}}}"#,
        );
        let rbac = reply(
            403,
            r#"{"error":{"code":"Forbidden","message":"Caller is not authorized","innererror":{"code":"ForbiddenByRbac"}}}"#,
        );
        let rbac_top = reply(
            403,
            r#"{"error":{"code":"ForbiddenByRbac","message":"no"}}"#,
        );
        let missing = reply(
            404,
            r#"{"error":{"code":"SecretNotFound","message":"A secret with (name/id) x was not found in this key vault."}}"#,
        );
        let throttled = reply(
            429,
            r#"{"error":{"code":"Throttled","message":"slow down"}}"#,
        );

        assert!(matches!(
            azure.status_error("x", &disabled),
            BackendError::NotFound { .. }
        ));
        assert!(matches!(
            azure.status_error("x", &rbac),
            BackendError::PermissionDenied { .. }
        ));
        assert!(matches!(
            azure.status_error("x", &rbac_top),
            BackendError::PermissionDenied { .. }
        ));
        assert!(matches!(
            azure.status_error("x", &missing),
            BackendError::NotFound { .. }
        ));
        assert!(azure.status_error("x", &throttled).is_transient());
    }

    #[test]
    fn urls_are_built_from_settings() {
        let azure = backend();
        let mut request = SecretRequest::latest("portainer");

        let latest = azure.secret_url(&request).expect("url");
        request.version = Some("abc123".to_owned());
        let pinned = azure.secret_url(&request).expect("url");

        assert_eq!(
            latest.as_str(),
            "https://pka-test.vault.azure.net/secrets/portainer?api-version=7.5"
        );
        assert_eq!(
            pinned.as_str(),
            "https://pka-test.vault.azure.net/secrets/portainer/abc123?api-version=7.5"
        );
        assert_eq!(
            azure.token_url().expect("url").as_str(),
            "https://login.microsoftonline.com/t/oauth2/v2.0/token"
        );
    }
}
