//! GCP Secret Manager with workload identity federation.
//!
//! Credentials come from an `external_account` credential configuration, as
//! `gcloud iam workload-identity-pools create-cred-config` writes it. The subject
//! token (a projected service-account JWT) is read from `credential_source.file`
//! at every exchange and traded at Google STS for a federated access token. When
//! `service_account_impersonation_url` is set, that token is traded again at IAM
//! Credentials (`generateAccessToken`) for a service account's token. The GCE
//! metadata server is used only when no credential configuration is set and the
//! settings allow it.
//!
//! This is a thin reqwest client rather than the official `google-cloud-auth` and
//! `google-cloud-secretmanager-v1` crates (1.19.0 and 1.14.0 checked). Those build
//! their own reqwest clients: the Secret Manager client offers no way to add a CA
//! bundle or to set a proxy other than the environment's, and the STS exchange
//! builds a new client without timeouts on every call, so the stores could not
//! share one transport policy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
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

/// The public Secret Manager endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://secretmanager.googleapis.com";
/// The public STS token endpoint, used when the configuration names none.
pub const DEFAULT_STS_URL: &str = "https://sts.googleapis.com/v1/token";
/// The metadata server's host name on GCE and GKE.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
/// OAuth scope requested for every token.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Subject token types that a file source can hold.
const FILE_SUBJECT_TOKEN_TYPES: &[&str] = &[
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:aws:token-type:aws4_request",
    "urn:ietf:params:oauth:token-type:saml2",
];
/// Lifetime requested for impersonated tokens: one hour, the longest that
/// `generateAccessToken` grants without an organization policy exception.
const IMPERSONATION_LIFETIME: Duration = Duration::from_secs(3600);

/// Source of the access token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GcpCredentials {
    /// An `external_account` credential configuration file.
    ExternalAccount { file: PathBuf },
    /// The GCE metadata server at `host` (host and optional port), used only when
    /// the configuration allows it.
    MetadataServer { host: String },
}

/// Settings of one Secret Manager project.
#[derive(Clone, Debug)]
pub struct GcpSettings {
    /// Project ID or number of secrets given by their short ID.
    pub project: String,
    pub credentials: GcpCredentials,
    /// Secret Manager endpoint, such as `https://secretmanager.googleapis.com`.
    pub endpoint_url: Url,
    /// Replaces the configuration's `token_url`, for private endpoints and tests.
    pub sts_url: Option<Url>,
    pub transport: Transport,
}

/// The parts of an `external_account` credential configuration that the agent uses.
#[derive(Clone, Debug, Deserialize)]
struct ExternalAccount {
    #[serde(rename = "type")]
    credential_type: String,
    audience: String,
    subject_token_type: String,
    token_url: Option<String>,
    credential_source: CredentialSource,
    service_account_impersonation_url: Option<String>,
    service_account_impersonation: Option<ImpersonationOptions>,
    workforce_pool_user_project: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
struct CredentialSource {
    file: Option<PathBuf>,
    url: Option<String>,
    executable: Option<Value>,
    environment_id: Option<String>,
    format: Option<SourceFormat>,
}

#[derive(Clone, Debug, Deserialize)]
struct SourceFormat {
    #[serde(rename = "type")]
    format_type: Option<String>,
    subject_token_field_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
struct ImpersonationOptions {
    token_lifetime_seconds: Option<u64>,
}

/// The validated way to an access token.
#[derive(Clone, Debug)]
enum TokenSource {
    Federated {
        account: Box<ExternalAccount>,
        token_file: PathBuf,
        sts_url: Url,
        impersonation_url: Option<Url>,
        impersonation_lifetime: Duration,
    },
    Metadata {
        url: Url,
    },
}

/// GCP Secret Manager.
pub struct GcpBackend {
    settings: GcpSettings,
    source: TokenSource,
    client: reqwest::Client,
    label: String,
    token: Mutex<Option<CachedToken>>,
}

impl std::fmt::Debug for GcpBackend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GcpBackend")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A secret's resource name, split into its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SecretName {
    project: String,
    secret: String,
    version: String,
}

impl GcpBackend {
    /// Reads and checks the credential configuration; nothing is sent until the
    /// first fetch.
    pub fn new(settings: GcpSettings) -> Result<Self, BackendError> {
        let label = format!(
            "gcp secret manager {} project {}",
            settings.endpoint_url, settings.project
        );
        let source = token_source(&label, &settings)?;
        let client = settings.transport.client(&label)?;
        Ok(Self {
            settings,
            source,
            client,
            label,
            token: Mutex::new(None),
        })
    }

    async fn access(&self, request: &SecretRequest) -> Result<SecretValue, BackendError> {
        let name = secret_name(&self.label, &self.settings.project, request)?;
        let url = self.access_url(&name)?;

        let mut token = self.access_token(false).await?;
        let (mut status, mut body) = self.get(&url, &token).await?;
        if status == StatusCode::UNAUTHORIZED {
            tracing::debug!(store = %self.label, "Secret Manager rejected the access token; requesting a new one");
            token = self.access_token(true).await?;
            (status, body) = self.get(&url, &token).await?;
        }
        if !status.is_success() {
            return Err(self.status_error(&request.path, status, &body));
        }
        self.value_from_reply(&request.path, &body)
    }

    /// Builds `<endpoint>/v1/projects/P/secrets/S/versions/V:access`.
    fn access_url(&self, name: &SecretName) -> Result<Url, BackendError> {
        let mut url = self.settings.endpoint_url.clone();
        url.set_query(None);
        url.path_segments_mut()
            .map_err(|()| BackendError::Configuration {
                store: self.label.clone(),
                detail: "the endpoint URL cannot be a base URL".to_owned(),
                hint: "set endpoint_url to an https:// URL".to_owned(),
            })?
            .pop_if_empty()
            .extend([
                "v1",
                "projects",
                &name.project,
                "secrets",
                &name.secret,
                "versions",
                &format!("{}:access", name.version),
            ]);
        Ok(url)
    }

    async fn get(
        &self,
        url: &Url,
        token: &SecretBytes,
    ) -> Result<(StatusCode, SecretBytes), BackendError> {
        let response = self
            .client
            .get(url.clone())
            .header(AUTHORIZATION, bearer_header(&self.label, token)?)
            .send()
            .await
            .map_err(|error| send_error(&self.label, &error))?;
        let status = response.status();
        let body = read_body_limited(&self.label, response, MAX_BODY_BYTES).await?;
        Ok((status, body))
    }

    /// Decodes the payload and checks it against `payload.dataCrc32c`.
    fn value_from_reply(
        &self,
        path: &str,
        body: &SecretBytes,
    ) -> Result<SecretValue, BackendError> {
        let invalid = |detail: String| {
            BackendError::InvalidResponse {
            store: self.label.clone(),
            path: path.to_owned(),
            detail,
            hint: "the payload was changed in transit or the endpoint is not Secret Manager; retrying will not help".to_owned(),
        }
        };
        let mut parsed: Value = serde_json::from_slice(body.expose())
            .map_err(|_| invalid("the reply is not JSON".to_owned()))?;
        let version = parsed
            .get("name")
            .and_then(Value::as_str)
            .and_then(|name| name.rsplit_once("/versions/"))
            .map(|(_, version)| version.to_owned());
        let expected_crc = parsed
            .pointer("/payload/dataCrc32c")
            .and_then(|value| match value {
                Value::String(text) => text.parse::<u64>().ok(),
                Value::Number(number) => number.as_u64(),
                _ => None,
            });
        let encoded = parsed
            .get_mut("payload")
            .and_then(|payload| take_secret_string(payload, "data"))
            .unwrap_or_default();
        wipe_json(&mut parsed);

        let version = version.ok_or_else(|| invalid("the reply has no version name".to_owned()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.expose())
            .map(SecretBytes::new)
            .map_err(|_| invalid("the payload data is not base64".to_owned()))?;

        let actual_crc = u64::from(crc32c::crc32c(bytes.expose()));
        match expected_crc {
            Some(expected) if expected != actual_crc => {
                return Err(invalid(format!(
                    "the payload's CRC32C is {actual_crc}, but the reply states {expected}"
                )));
            }
            Some(_) => {}
            // NOTE: a reply without `dataCrc32c` is accepted without a check.
            None => {
                tracing::debug!(store = %self.label, version = %version, "the reply has no payload checksum")
            }
        }
        Ok(SecretValue {
            bytes,
            is_json_object: false,
            version,
        })
    }

    fn status_error(&self, path: &str, status: StatusCode, body: &SecretBytes) -> BackendError {
        let parsed: Value = serde_json::from_slice(body.expose()).unwrap_or(Value::Null);
        let code = parsed
            .pointer("/error/status")
            .and_then(Value::as_str)
            .unwrap_or("no status")
            .to_owned();
        let message = parsed
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(short_message)
            .unwrap_or_else(|| "no error message".to_owned());
        let detail = format!("HTTP {} {code}: {message}", status.as_u16());
        let store = self.label.clone();
        let path = path.to_owned();

        match (status.as_u16(), code.as_str()) {
            (_, "NOT_FOUND") | (404, _) => BackendError::NotFound {
                store,
                path,
                detail,
                hint: "check the project, the secret ID and the version".to_owned(),
            },
            // A disabled or destroyed version.
            (_, "FAILED_PRECONDITION") => BackendError::NotFound {
                store,
                path,
                detail,
                hint: "enable the version in Secret Manager, or pin an enabled version".to_owned(),
            },
            (_, "PERMISSION_DENIED") | (403, _) => BackendError::PermissionDenied {
                store,
                path,
                detail,
                hint: "grant roles/secretmanager.secretAccessor on the secret to the federated principal or the impersonated service account".to_owned(),
            },
            (_, "UNAUTHENTICATED") | (401, _) => BackendError::Authentication {
                store,
                detail,
                hint: "check the workload identity pool, its provider and the credential configuration".to_owned(),
            },
            (_, "RESOURCE_EXHAUSTED" | "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED")
            | (408 | 429 | 500..=599, _) => BackendError::Unavailable { store, detail },
            _ => BackendError::InvalidResponse {
                store,
                path,
                detail,
                hint: "check the secret ID, the version and endpoint_url".to_owned(),
            },
        }
    }

    /// Returns the cached access token, or obtains a new one.
    async fn access_token(&self, force_new: bool) -> Result<SecretBytes, BackendError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached
            .as_ref()
            .filter(|token| token.is_fresh() && !force_new)
        {
            return Ok(token.value.clone());
        }

        let token = match &self.source {
            TokenSource::Federated {
                account,
                token_file,
                sts_url,
                impersonation_url,
                impersonation_lifetime,
            } => {
                let federated = self.exchange(account, token_file, sts_url).await?;
                match impersonation_url {
                    Some(url) => {
                        self.impersonate(url, &federated.value, *impersonation_lifetime)
                            .await?
                    }
                    None => federated,
                }
            }
            TokenSource::Metadata { url } => self.metadata_token(url).await?,
        };
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }

    /// Trades the subject token at STS for a federated access token (RFC 8693).
    async fn exchange(
        &self,
        account: &ExternalAccount,
        token_file: &Path,
        sts_url: &Url,
    ) -> Result<CachedToken, BackendError> {
        let subject = self.subject_token(account, token_file)?;
        let subject_text = std::str::from_utf8(subject.expose()).unwrap_or_default();
        let options = account
            .workforce_pool_user_project
            .as_ref()
            .filter(|_| account.service_account_impersonation_url.is_none())
            .map(|project| serde_json::json!({ "userProject": project }).to_string());
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.extend_pairs([
                ("grant_type", TOKEN_EXCHANGE_GRANT),
                ("audience", account.audience.as_str()),
                ("scope", CLOUD_PLATFORM_SCOPE),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
                ("subject_token", subject_text),
                ("subject_token_type", account.subject_token_type.as_str()),
            ]);
            if let Some(options) = &options {
                form.append_pair("options", options);
            }
            SecretBytes::from(form.finish())
        };

        let response = self
            .client
            .post(sts_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.expose().to_vec())
            .send()
            .await
            .map_err(|error| send_error(&self.label, &error))?;
        let token = self
            .token_reply(response, "access_token", "the STS token exchange", "check the audience (the workload identity provider), the subject token type and the provider's attribute condition")
            .await?;
        tracing::debug!(store = %self.label, audience = %account.audience, "exchanged the subject token at STS");
        Ok(token)
    }

    /// Reads the subject token from its file, as text or as a field of a JSON file.
    fn subject_token(
        &self,
        account: &ExternalAccount,
        path: &Path,
    ) -> Result<SecretBytes, BackendError> {
        let hint = "mount the projected service-account token at credential_source.file";
        let token = read_token_file(&self.label, path, hint)?;
        let format = account.credential_source.format.as_ref();
        if format.and_then(|format| format.format_type.as_deref()) != Some("json") {
            return Ok(token);
        }

        let field = format
            .and_then(|format| format.subject_token_field_name.as_deref())
            .unwrap_or_default();
        let mut parsed: Value = serde_json::from_slice(token.expose()).unwrap_or(Value::Null);
        let value = take_secret_string(&mut parsed, field);
        wipe_json(&mut parsed);
        value
            .filter(|value| !value.is_empty())
            .ok_or_else(|| BackendError::Authentication {
                store: self.label.clone(),
                detail: format!("the token file {path:?} has no string field {field:?}"),
                hint: "check credential_source.format.subject_token_field_name".to_owned(),
            })
    }

    /// Trades the federated token for a service account's token (IAM Credentials
    /// `generateAccessToken`).
    async fn impersonate(
        &self,
        url: &Url,
        federated: &SecretBytes,
        lifetime: Duration,
    ) -> Result<CachedToken, BackendError> {
        let body = serde_json::json!({
            "scope": [CLOUD_PLATFORM_SCOPE],
            "lifetime": format!("{}s", lifetime.as_secs()),
        });
        let response = self
            .client
            .post(url.clone())
            .header(AUTHORIZATION, bearer_header(&self.label, federated)?)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|error| send_error(&self.label, &error))?;
        let status = response.status();
        let reply = read_body_limited(&self.label, response, MAX_BODY_BYTES).await?;
        if !status.is_success() {
            return Err(self.token_error("service account impersonation", status, &reply, "grant roles/iam.workloadIdentityUser on the service account to the federated principal"));
        }

        let mut parsed: Value = serde_json::from_slice(reply.expose()).unwrap_or(Value::Null);
        let token = take_secret_string(&mut parsed, "accessToken");
        wipe_json(&mut parsed);
        let token = token.filter(|token| !token.is_empty()).ok_or_else(|| {
            BackendError::Authentication {
                store: self.label.clone(),
                detail: "the impersonation reply has no accessToken".to_owned(),
                hint: "check service_account_impersonation_url".to_owned(),
            }
        })?;
        tracing::debug!(store = %self.label, "impersonated the service account");
        Ok(CachedToken::new(token, lifetime))
    }

    async fn metadata_token(&self, url: &Url) -> Result<CachedToken, BackendError> {
        let response = self
            .client
            .get(url.clone())
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .map_err(|error| send_error(&self.label, &error))?;
        self.token_reply(response, "access_token", "the metadata server token request", "check that the node's service account may access the secret, or configure workload identity federation")
            .await
    }

    async fn token_reply(
        &self,
        response: reqwest::Response,
        field: &str,
        step: &str,
        hint: &str,
    ) -> Result<CachedToken, BackendError> {
        let status = response.status();
        let reply = read_body_limited(&self.label, response, MAX_BODY_BYTES).await?;
        if !status.is_success() {
            return Err(self.token_error(step, status, &reply, hint));
        }

        let mut parsed: Value = serde_json::from_slice(reply.expose()).unwrap_or(Value::Null);
        let token = take_secret_string(&mut parsed, field);
        let lifetime = expires_in(&parsed);
        wipe_json(&mut parsed);
        match (token, lifetime) {
            (Some(token), Some(lifetime)) if !token.is_empty() => {
                Ok(CachedToken::new(token, lifetime))
            }
            _ => Err(BackendError::Authentication {
                store: self.label.clone(),
                detail: format!("the reply of {step} has no {field} or expires_in"),
                hint: hint.to_owned(),
            }),
        }
    }

    /// Classifies a failed token request from its status and the OAuth (`error`,
    /// `error_description`) or Google (`error.status`, `error.message`) error body.
    fn token_error(
        &self,
        step: &str,
        status: StatusCode,
        reply: &SecretBytes,
        hint: &str,
    ) -> BackendError {
        let parsed: Value = serde_json::from_slice(reply.expose()).unwrap_or(Value::Null);
        let (code, message) = match parsed.get("error") {
            Some(Value::String(code)) => (
                code.clone(),
                parsed
                    .get("error_description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            ),
            Some(error) => (
                error
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            ),
            None => (String::new(), String::new()),
        };
        let detail = format!(
            "{step} returned HTTP {} ({code}: {})",
            status.as_u16(),
            short_message(&message)
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
            hint: hint.to_owned(),
        }
    }
}

impl SecretBackend for GcpBackend {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn fetch<'a>(&'a self, request: &'a SecretRequest) -> BackendFuture<'a, SecretValue> {
        Box::pin(self.access(request))
    }

    /// The accessor role may not read version metadata, so the value is read
    /// (`:access`) and dropped.
    fn resolve_version<'a>(
        &'a self,
        request: &'a SecretRequest,
    ) -> BackendFuture<'a, SecretVersion> {
        Box::pin(async move {
            let value = self.access(request).await?;
            Ok(SecretVersion {
                version: value.version,
            })
        })
    }
}

/// Reads and checks the credential configuration of `settings`.
fn token_source(store: &str, settings: &GcpSettings) -> Result<TokenSource, BackendError> {
    let file = match &settings.credentials {
        GcpCredentials::MetadataServer { host } => {
            let url = Url::parse(&format!(
                "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
            ))
            .map_err(|_| BackendError::Configuration {
                store: store.to_owned(),
                detail: format!("invalid metadata server host {host:?}"),
                hint: "set GCE_METADATA_HOST to a host name with an optional port".to_owned(),
            })?;
            return Ok(TokenSource::Metadata { url });
        }
        GcpCredentials::ExternalAccount { file } => file,
    };

    let invalid = |detail: String| {
        BackendError::Configuration {
        store: store.to_owned(),
        detail,
        hint: "create the file with gcloud iam workload-identity-pools create-cred-config --credential-source-file=<projected token>".to_owned(),
    }
    };
    let text = std::fs::read(file)
        .map_err(|error| invalid(format!("failed to read credentials_file {file:?}: {error}")))?;
    let account: ExternalAccount = serde_json::from_slice(&text).map_err(|error| {
        invalid(format!(
            "credentials_file {file:?} is not an external_account configuration: {error}"
        ))
    })?;

    if account.credential_type != "external_account" {
        return Err(invalid(format!(
            "credentials_file {file:?} has type {:?}; only \"external_account\" is supported",
            account.credential_type
        )));
    }
    let source = &account.credential_source;
    let Some(token_file) = source.file.clone() else {
        let kind = if source.url.is_some() {
            "url"
        } else if source.executable.is_some() {
            "executable"
        } else if source.environment_id.is_some() {
            "environment_id (AWS)"
        } else {
            "none"
        };
        return Err(invalid(format!(
            "credentials_file {file:?} has credential source {kind}; only credential_source.file is supported"
        )));
    };
    if !FILE_SUBJECT_TOKEN_TYPES.contains(&account.subject_token_type.as_str()) {
        return Err(invalid(format!(
            "unsupported subject_token_type {:?}",
            account.subject_token_type
        )));
    }
    let format_type = source
        .format
        .as_ref()
        .and_then(|format| format.format_type.as_deref());
    let field_missing = source
        .format
        .as_ref()
        .and_then(|format| format.subject_token_field_name.as_deref())
        .is_none_or(str::is_empty);
    if format_type == Some("json") && field_missing {
        return Err(invalid(
            "credential_source.format.type is \"json\" but subject_token_field_name is missing"
                .to_owned(),
        ));
    }

    let parse_url = |key: &str, text: &str| {
        Url::parse(text)
            .ok()
            .filter(|url| matches!(url.scheme(), "https" | "http") && url.host().is_some())
            .ok_or_else(|| invalid(format!("{key} {text:?} is not an https:// URL")))
    };
    let sts_url = match &settings.sts_url {
        Some(url) => url.clone(),
        None => parse_url(
            "token_url",
            account.token_url.as_deref().unwrap_or(DEFAULT_STS_URL),
        )?,
    };
    let impersonation_url = account
        .service_account_impersonation_url
        .as_deref()
        .map(|text| parse_url("service_account_impersonation_url", text))
        .transpose()?;
    let impersonation_lifetime = account
        .service_account_impersonation
        .as_ref()
        .and_then(|options| options.token_lifetime_seconds)
        .map_or(IMPERSONATION_LIFETIME, Duration::from_secs);

    Ok(TokenSource::Federated {
        account: Box::new(account),
        token_file,
        sts_url,
        impersonation_url,
        impersonation_lifetime,
    })
}

/// Splits the request into project, secret ID and version. The path is a secret
/// ID in `project`, or a full `projects/P/secrets/S` name.
fn secret_name(
    store: &str,
    project: &str,
    request: &SecretRequest,
) -> Result<SecretName, BackendError> {
    let (project, secret) = match request.path.strip_prefix("projects/") {
        Some(rest) => match rest.split('/').collect::<Vec<_>>().as_slice() {
            [project, "secrets", secret] => ((*project).to_owned(), (*secret).to_owned()),
            _ => return Err(invalid_name(store, &request.path)),
        },
        None => (project.to_owned(), request.path.clone()),
    };
    let version = request
        .version
        .clone()
        .unwrap_or_else(|| "latest".to_owned());

    check_secret_id(store, &secret)?;
    let project_valid = !project.is_empty()
        && project
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'));
    if !project_valid {
        return Err(invalid_name(store, &request.path));
    }
    check_version(store, &request.path, &version)?;
    Ok(SecretName {
        project,
        secret,
        version,
    })
}

/// Checks a secret path as [`GcpBackend`] reads it: a secret ID, or
/// `projects/PROJECT/secrets/ID`.
pub fn check_secret_path(store: &str, path: &str) -> Result<(), BackendError> {
    secret_name(store, "project", &SecretRequest::latest(path)).map(|_| ())
}

fn invalid_name(store: &str, path: &str) -> BackendError {
    BackendError::Configuration {
        store: store.to_owned(),
        detail: format!("invalid secret {path:?}"),
        hint: "write the secret ID, such as portainer-db-key, or projects/PROJECT/secrets/ID"
            .to_owned(),
    }
}

/// Checks a secret ID: 1 to 255 letters, digits, hyphens and underscores.
pub fn check_secret_id(store: &str, secret: &str) -> Result<(), BackendError> {
    let valid = !secret.is_empty()
        && secret.len() <= 255
        && secret
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(invalid_name(store, secret))
    }
}

/// Checks a version: a number, `latest` or an alias (letters, digits, `-`, `_`).
pub fn check_version(store: &str, path: &str, version: &str) -> Result<(), BackendError> {
    let valid = !version.is_empty()
        && version.len() <= 63
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && version != "0";
    if valid {
        return Ok(());
    }
    Err(BackendError::Configuration {
        store: store.to_owned(),
        detail: format!("invalid version {version:?} for {path:?}"),
        hint: "pin a version number (1, 2, ...) or an alias".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_config(dir: &Path, document: &Value) -> PathBuf {
        let path = dir.join("credentials.json");
        std::fs::write(&path, document.to_string()).expect("write");
        path
    }

    fn settings(file: PathBuf) -> GcpSettings {
        GcpSettings {
            project: "pka-test".to_owned(),
            credentials: GcpCredentials::ExternalAccount { file },
            endpoint_url: Url::parse(DEFAULT_ENDPOINT).expect("url"),
            sts_url: None,
            transport: Transport::default(),
        }
    }

    fn configuration(source: Value) -> Value {
        serde_json::json!({
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": "https://sts.googleapis.com/v1/token",
            "credential_source": source,
        })
    }

    #[test]
    fn file_source_is_accepted() {
        let dir = tempfile::tempdir().expect("dir");
        let file = write_config(
            dir.path(),
            &configuration(serde_json::json!({"file": "/var/run/token"})),
        );

        let backend = GcpBackend::new(settings(file)).expect("backend");

        assert!(matches!(backend.source, TokenSource::Federated { .. }));
    }

    #[test]
    fn url_source_is_rejected() {
        let dir = tempfile::tempdir().expect("dir");
        let file = write_config(
            dir.path(),
            &configuration(serde_json::json!({"url": "http://169.254.169.254/token"})),
        );

        let error = GcpBackend::new(settings(file)).expect_err("url source");

        assert!(
            error.to_string().contains("credential source url"),
            "{error}"
        );
    }

    #[test]
    fn json_format_needs_field_name() {
        let dir = tempfile::tempdir().expect("dir");
        let file = write_config(
            dir.path(),
            &configuration(serde_json::json!({"file": "/t", "format": {"type": "json"}})),
        );

        let error = GcpBackend::new(settings(file)).expect_err("json without field");

        assert!(
            error.to_string().contains("subject_token_field_name"),
            "{error}"
        );
    }

    #[test]
    fn names_and_versions() {
        let mut request = SecretRequest::latest("portainer-db");
        let short = secret_name("gcp", "p1", &request).expect("short");
        request.path = "projects/other/secrets/db_key".to_owned();
        request.version = Some("7".to_owned());
        let full = secret_name("gcp", "p1", &request).expect("full");

        assert_eq!(short.project, "p1");
        assert_eq!(short.version, "latest");
        assert_eq!(full.project, "other");
        assert_eq!(full.secret, "db_key");
        assert_eq!(full.version, "7");
        for bad in ["a/b", "projects/p/secrets", "..", "a b"] {
            assert!(
                secret_name("gcp", "p1", &SecretRequest::latest(bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn access_url_has_colon_verb() {
        let dir = tempfile::tempdir().expect("dir");
        let file = write_config(
            dir.path(),
            &configuration(serde_json::json!({"file": "/t"})),
        );
        let backend = GcpBackend::new(settings(file)).expect("backend");
        let name = SecretName {
            project: "p1".to_owned(),
            secret: "s".to_owned(),
            version: "latest".to_owned(),
        };

        let url = backend.access_url(&name).expect("url");

        assert_eq!(
            url.as_str(),
            "https://secretmanager.googleapis.com/v1/projects/p1/secrets/s/versions/latest:access"
        );
    }

    #[test]
    fn crc_mismatch_is_permanent() {
        let dir = tempfile::tempdir().expect("dir");
        let file = write_config(
            dir.path(),
            &configuration(serde_json::json!({"file": "/t"})),
        );
        let backend = GcpBackend::new(settings(file)).expect("backend");
        let good = serde_json::json!({
            "name": "projects/1/secrets/s/versions/3",
            "payload": {"data": "AP+A", "dataCrc32c": crc32c::crc32c(b"\x00\xff\x80").to_string()},
        });
        let bad = serde_json::json!({
            "name": "projects/1/secrets/s/versions/3",
            "payload": {"data": "AP+A", "dataCrc32c": "1"},
        });

        let value = backend
            .value_from_reply("s", &SecretBytes::copy_from(good.to_string().as_bytes()))
            .expect("good");
        let error = backend
            .value_from_reply("s", &SecretBytes::copy_from(bad.to_string().as_bytes()))
            .expect_err("bad");

        assert_eq!(value.bytes.expose(), b"\x00\xff\x80");
        assert_eq!(value.version, "3");
        assert!(
            matches!(error, BackendError::InvalidResponse { .. }),
            "{error}"
        );
        assert!(!error.is_transient());
    }
}
