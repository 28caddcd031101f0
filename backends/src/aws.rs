//! AWS Secrets Manager with workload identity.
//!
//! Credentials come from the SDK's own providers, limited by default to environment
//! keys, web identity (IRSA: `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`) and
//! container credentials (EKS Pod Identity: `AWS_CONTAINER_CREDENTIALS_FULL_URI` and
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`). Instance metadata is added only when
//! the settings ask for it, so a pod never falls back to its node's role.
//! The web identity provider reaches STS at `AWS_ENDPOINT_URL_STS` when that is set.

use aws_config::BehaviorVersion;
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::provider_config::ProviderConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{Region, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use zeroize::Zeroize;

use crate::aws_http::ReqwestHttpClient;
use crate::http::{Transport, error_chain};
use crate::{
    BackendError, BackendFuture, SecretBackend, SecretBytes, SecretRequest, SecretValue,
    SecretVersion,
};

/// The staging label read when a secret names none.
pub const DEFAULT_STAGE: &str = "AWSCURRENT";

/// Settings of one Secrets Manager endpoint.
#[derive(Clone, Debug)]
pub struct AwsSettings {
    pub region: String,
    /// Secrets Manager endpoint, for VPC endpoints and tests.
    pub endpoint_url: Option<String>,
    /// Adds EC2 instance metadata as the last credential source.
    pub allow_instance_metadata: bool,
    pub transport: Transport,
}

/// AWS Secrets Manager.
#[derive(Debug)]
pub struct AwsBackend {
    client: Client,
    label: String,
}

impl AwsBackend {
    /// Creates the client and its credential chain; nothing is sent until the first
    /// fetch.
    ///
    /// # Errors
    /// A [`BackendError::Configuration`] when the CA bundle or a proxy URL is invalid.
    pub fn new(settings: &AwsSettings) -> Result<Self, BackendError> {
        let label = match &settings.endpoint_url {
            Some(endpoint) => format!("aws secrets manager {endpoint}"),
            None => format!("aws secrets manager {}", settings.region),
        };
        let http_client = ReqwestHttpClient::shared(settings.transport.client(&label)?);
        let client = Client::new(&sdk_config(settings, http_client));
        Ok(Self { client, label })
    }

    async fn get_value(&self, request: &SecretRequest) -> Result<SecretValue, BackendError> {
        let mut call = self.client.get_secret_value().secret_id(&request.path);
        call = match &request.version {
            Some(version) => call.version_id(version),
            None => call.version_stage(stage(request)),
        };

        let output = call
            .send()
            .await
            .map_err(|error| self.classify(&request.path, &error))?;
        self.value_from_output(&request.path, output)
    }

    fn value_from_output(
        &self,
        path: &str,
        mut output: GetSecretValueOutput,
    ) -> Result<SecretValue, BackendError> {
        let version = output.version_id().unwrap_or("unknown").to_owned();
        let bytes = if let Some(text) = output.secret_string.take() {
            SecretBytes::from(text)
        } else if let Some(blob) = output.secret_binary.take() {
            SecretBytes::new(blob.into_inner())
        } else {
            return Err(BackendError::InvalidResponse {
                store: self.label.clone(),
                path: path.to_owned(),
                detail: "the version has neither SecretString nor SecretBinary".to_owned(),
                hint: "store a value in the secret".to_owned(),
            });
        };
        if let Some(name) = output.name.as_mut() {
            name.zeroize();
        }
        Ok(SecretValue {
            bytes,
            is_json_object: false,
            version,
        })
    }

    async fn describe_version(
        &self,
        request: &SecretRequest,
    ) -> Result<SecretVersion, BackendError> {
        let output = self
            .client
            .describe_secret()
            .secret_id(&request.path)
            .send()
            .await
            .map_err(|error| self.classify(&request.path, &error))?;
        let stages = output.version_ids_to_stages().cloned().unwrap_or_default();

        let found = match &request.version {
            Some(version) => stages.contains_key(version).then(|| version.clone()),
            None => {
                let stage = stage(request);
                stages
                    .iter()
                    .find(|(_, labels)| labels.iter().any(|label| label == stage))
                    .map(|(version, _)| version.clone())
            }
        };
        found
            .map(|version| SecretVersion { version })
            .ok_or_else(|| BackendError::NotFound {
                store: self.label.clone(),
                path: request.path.clone(),
                detail: match &request.version {
                    Some(version) => format!("version {version} does not exist"),
                    None => format!("no version has the stage {}", stage(request)),
                },
                hint: "check the version id or staging label".to_owned(),
            })
    }

    fn classify<E>(&self, path: &str, error: &SdkError<E>) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        if let Some(credentials) = find_credentials_error(error) {
            return credentials_error(&self.label, credentials);
        }
        match error {
            SdkError::ServiceError(context) => service_error(
                &self.label,
                path,
                context.err(),
                context.raw().status().as_u16(),
            ),
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => BackendError::Unavailable {
                store: self.label.clone(),
                detail: error_chain(error),
            },
            _ => BackendError::InvalidResponse {
                store: self.label.clone(),
                path: path.to_owned(),
                detail: error_chain(error),
                hint: "check the secret id and the endpoint".to_owned(),
            },
        }
    }
}

/// Payload type of a stored AWS version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwsPayload {
    /// `SecretString`: the value must be UTF-8.
    String,
    /// `SecretBinary`.
    Binary,
}

impl AwsBackend {
    /// Stores `value` as a new version labelled with `stages`.
    ///
    /// `request_token` makes the call idempotent: repeating it with the same token and
    /// value returns the same version instead of creating another.
    pub async fn put_version(
        &self,
        path: &str,
        value: &SecretBytes,
        payload: AwsPayload,
        stages: &[&str],
        request_token: &str,
    ) -> Result<SecretVersion, BackendError> {
        let mut call = self
            .client
            .put_secret_value()
            .secret_id(path)
            .client_request_token(request_token)
            .set_version_stages(Some(
                stages.iter().map(|stage| (*stage).to_owned()).collect(),
            ));
        call = match payload {
            AwsPayload::Binary => {
                call.secret_binary(aws_smithy_types::Blob::new(value.expose().to_vec()))
            }
            AwsPayload::String => {
                let text = std::str::from_utf8(value.expose()).map_err(|_| {
                    BackendError::InvalidResponse {
                        store: self.label.clone(),
                        path: path.to_owned(),
                        detail: "the new value is not UTF-8, but the secret stores SecretString"
                            .to_owned(),
                        hint: "use encoding = \"base64\" for binary keys in string secrets"
                            .to_owned(),
                    }
                })?;
                call.secret_string(text)
            }
        };

        let output = call
            .send()
            .await
            .map_err(|error| self.classify(path, &error))?;
        let version = output.version_id().unwrap_or_default().to_owned();
        Ok(SecretVersion { version })
    }

    /// Moves `stage` to `to_version`, taking it from `from_version` when given.
    /// Moving `AWSCURRENT` makes Secrets Manager label the old version `AWSPREVIOUS`.
    pub async fn move_stage(
        &self,
        path: &str,
        stage: &str,
        to_version: Option<&str>,
        from_version: Option<&str>,
    ) -> Result<(), BackendError> {
        self.client
            .update_secret_version_stage()
            .secret_id(path)
            .version_stage(stage)
            .set_move_to_version_id(to_version.map(str::to_owned))
            .set_remove_from_version_id(from_version.map(str::to_owned))
            .send()
            .await
            .map_err(|error| self.classify(path, &error))?;
        Ok(())
    }

    /// Returns the version ids that carry each staging label.
    pub async fn stages(&self, path: &str) -> Result<Vec<(String, Vec<String>)>, BackendError> {
        let output = self
            .client
            .describe_secret()
            .secret_id(path)
            .send()
            .await
            .map_err(|error| self.classify(path, &error))?;
        let mut stages: Vec<(String, Vec<String>)> = output
            .version_ids_to_stages()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        stages.sort();
        Ok(stages)
    }

    /// Reads a version and returns it with its payload type, string or binary.
    pub async fn get_with_payload(
        &self,
        request: &SecretRequest,
    ) -> Result<(SecretValue, AwsPayload), BackendError> {
        let mut call = self.client.get_secret_value().secret_id(&request.path);
        call = match &request.version {
            Some(version) => call.version_id(version),
            None => call.version_stage(stage(request)),
        };
        let output = call
            .send()
            .await
            .map_err(|error| self.classify(&request.path, &error))?;
        let payload = if output.secret_string.is_some() {
            AwsPayload::String
        } else {
            AwsPayload::Binary
        };
        Ok((self.value_from_output(&request.path, output)?, payload))
    }
}

impl SecretBackend for AwsBackend {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn fetch<'a>(&'a self, request: &'a SecretRequest) -> BackendFuture<'a, SecretValue> {
        Box::pin(self.get_value(request))
    }

    fn resolve_version<'a>(
        &'a self,
        request: &'a SecretRequest,
    ) -> BackendFuture<'a, SecretVersion> {
        Box::pin(self.describe_version(request))
    }
}

fn stage(request: &SecretRequest) -> &str {
    request.stage.as_deref().unwrap_or(DEFAULT_STAGE)
}

/// Builds the SDK configuration with the restricted credential chain and no SDK
/// retries, because the agent's own loop retries within its deadline. The SDK and
/// every credential provider send their requests through `http_client`.
fn sdk_config(settings: &AwsSettings, http_client: SharedHttpClient) -> SdkConfig {
    let region = Region::new(settings.region.clone());
    let provider_config = ProviderConfig::without_region()
        .with_region(Some(region.clone()))
        .with_http_client(http_client.clone());

    let mut chain = CredentialsProviderChain::first_try(
        "Environment",
        aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
    )
    .or_else(
        "WebIdentityToken",
        aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
            .configure(&provider_config)
            .build(),
    )
    .or_else(
        "ContainerCredentials",
        aws_config::ecs::EcsCredentialsProvider::builder()
            .configure(&provider_config)
            .build(),
    );
    if settings.allow_instance_metadata {
        chain = chain.or_else(
            "Ec2InstanceMetadata",
            aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                .configure(&provider_config)
                .build(),
        );
    }

    let timeouts = TimeoutConfig::builder()
        .connect_timeout(settings.transport.connect_timeout)
        .operation_attempt_timeout(settings.transport.request_timeout)
        .build();
    let mut builder = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(region)
        .http_client(http_client)
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(chain))
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts)
        .sleep_impl(aws_smithy_async::rt::sleep::SharedAsyncSleep::new(
            aws_smithy_async::rt::sleep::TokioSleep::new(),
        ));
    if let Some(endpoint) = &settings.endpoint_url {
        builder = builder.endpoint_url(endpoint);
    }
    builder.build()
}

fn find_credentials_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = current {
        if let Some(credentials) = cause.downcast_ref::<CredentialsError>() {
            return Some(credentials);
        }
        current = cause.source();
    }
    None
}

fn credentials_error(store: &str, error: &CredentialsError) -> BackendError {
    let detail = format!("failed to load credentials: {}", error_chain(error));
    let hint = "use IRSA (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN) or EKS Pod Identity \
                (AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE), \
                and check the role's trust policy";
    let transient_cause = detail.contains("dispatch failure")
        || detail.contains("timed out")
        || detail.contains("timeout")
        || detail.contains("connection");
    match error {
        CredentialsError::ProviderTimedOut(_) => BackendError::Unavailable {
            store: store.to_owned(),
            detail,
        },
        // NOTE: the SDK wraps STS and container-endpoint failures in an opaque
        // provider error, so connection failures are recognised by their message.
        CredentialsError::ProviderError(_) if transient_cause => BackendError::Unavailable {
            store: store.to_owned(),
            detail,
        },
        _ => BackendError::Authentication {
            store: store.to_owned(),
            detail,
            hint: hint.to_owned(),
        },
    }
}

fn service_error(
    store: &str,
    path: &str,
    error: &(impl ProvideErrorMetadata + std::error::Error),
    status: u16,
) -> BackendError {
    let code = error.code().unwrap_or("Unknown").to_owned();
    let message = error
        .message()
        .unwrap_or("no message")
        .chars()
        .take(300)
        .collect::<String>();
    let detail = format!("{code} (HTTP {status}): {message}");
    let store = store.to_owned();
    let path = path.to_owned();
    match code.as_str() {
        "InvalidRequestException" if message.contains("marked deleted") || message.contains("scheduled for deletion") => BackendError::NotFound {
            store,
            path,
            detail,
            hint: "the secret is scheduled for deletion; restore it with `aws secretsmanager restore-secret`, or point the agent at another secret".to_owned(),
        },
        "ResourceNotFoundException" => BackendError::NotFound {
            store,
            path,
            detail,
            hint: "check the secret name or ARN, the region, and the version id or stage".to_owned(),
        },
        "AccessDeniedException" | "AccessDenied" | "DecryptionFailure" | "UnrecognizedClientException"
        | "InvalidSignatureException" | "ExpiredTokenException" => BackendError::PermissionDenied {
            store,
            path,
            detail,
            hint: "allow secretsmanager:GetSecretValue and secretsmanager:DescribeSecret on the secret (and kms:Decrypt on its key) for the role".to_owned(),
        },
        "ThrottlingException" | "InternalServiceError" | "InternalFailure" | "ServiceUnavailable"
        | "RequestTimeout" => BackendError::Unavailable { store, detail },
        _ if status >= 500 => BackendError::Unavailable { store, detail },
        _ => BackendError::InvalidResponse {
            store,
            path,
            detail,
            hint: "check the secret id, version id and stage".to_owned(),
        },
    }
}
