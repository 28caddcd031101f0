//! The AWS SDK's HTTP client, backed by the shared reqwest client.
//!
//! The SDK's default client (`aws-smithy-http-client` 1.1) reads neither the proxy
//! variables nor an extra CA bundle, so Secrets Manager, STS and the container
//! credentials endpoint would follow another transport policy than the other
//! stores. This adapter sends every SDK request through a client built by
//! [`crate::http::Transport::client`].

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use reqwest::header::{HeaderName, HeaderValue};

use crate::http::error_chain;

/// Largest reply body accepted from AWS: Secrets Manager values are at most 64 KiB.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Request headers whose values are credentials, marked sensitive so that no
/// `Debug` output of the request shows them.
const SENSITIVE_HEADERS: &[&str] = &["authorization", "x-amz-security-token"];

/// An SDK HTTP client that sends requests with a reqwest client.
///
/// The reqwest client applies the connect and request timeouts itself, so the
/// connector settings of the SDK are not used.
#[derive(Clone, Debug)]
pub(crate) struct ReqwestHttpClient {
    client: reqwest::Client,
}

impl ReqwestHttpClient {
    pub(crate) fn shared(client: reqwest::Client) -> SharedHttpClient {
        SharedHttpClient::new(Self { client })
    }
}

impl HttpClient for ReqwestHttpClient {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for ReqwestHttpClient {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        HttpConnectorFuture::new(async move { send(&client, request).await })
    }
}

async fn send(
    client: &reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, ConnectorError> {
    let method = reqwest::Method::from_bytes(request.method().as_bytes())
        .map_err(|error| ConnectorError::other(error.into(), None))?;
    let mut builder = client.request(method, request.uri());
    for (name, value) in request.headers() {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|error| ConnectorError::other(error.into(), None))?;
        let mut value = HeaderValue::from_str(value)
            .map_err(|error| ConnectorError::other(error.into(), None))?;
        if SENSITIVE_HEADERS.contains(&name.as_str()) {
            value.set_sensitive(true);
        }
        builder = builder.header(name, value);
    }
    let Some(body) = request.body().bytes() else {
        let error = "streaming request bodies are not supported by the agent's HTTP client";
        return Err(ConnectorError::other(error.into(), None));
    };
    builder = builder.body(body.to_vec());

    let mut response = builder.send().await.map_err(connector_error)?;
    let status = StatusCode::try_from(response.status().as_u16())
        .map_err(|error| ConnectorError::other(error.into(), None))?;
    let headers = response.headers().clone();

    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(connector_error)? {
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            let error = format!("the reply is larger than {MAX_BODY_BYTES} bytes");
            return Err(ConnectorError::other(error.into(), None));
        }
        bytes.extend_from_slice(&chunk);
    }

    let mut converted = HttpResponse::new(status, SdkBody::from(bytes));
    for (name, value) in &headers {
        if let Ok(value) = value.to_str() {
            converted
                .headers_mut()
                .append(name.as_str().to_owned(), value.to_owned());
        }
    }
    Ok(converted)
}

/// Classifies a reqwest failure the way the SDK expects: timeouts and connection
/// failures become retryable dispatch failures.
fn connector_error(error: reqwest::Error) -> ConnectorError {
    let message = error_chain(&error);
    if error.is_timeout() {
        ConnectorError::timeout(message.into())
    } else if error.is_connect() || error.is_request() || error.is_body() {
        ConnectorError::io(message.into())
    } else {
        ConnectorError::other(message.into(), None)
    }
}
