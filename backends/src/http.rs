//! One transport policy for the HTTP stores: CA bundle, timeouts, proxies.

use std::path::PathBuf;
use std::time::Duration;

use crate::BackendError;

/// Default time to establish a TCP and TLS connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time for one request, from sending to the last byte of the reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Transport settings shared by every HTTP store.
#[derive(Clone, Debug)]
pub struct Transport {
    /// PEM bundle trusted in addition to the system roots.
    pub ca_cert: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for Transport {
    fn default() -> Self {
        Self {
            ca_cert: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl Transport {
    /// Builds a rustls-backed client. Proxies come from `HTTPS_PROXY`, `HTTP_PROXY`
    /// and `NO_PROXY`, as reqwest reads them.
    pub fn client(&self, store: &str) -> Result<reqwest::Client, BackendError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portainer-key-agent/", env!("CARGO_PKG_VERSION")));

        if let Some(path) = &self.ca_cert {
            builder = builder.tls_certs_merge(read_ca_bundle(store, path)?);
        }

        builder
            .build()
            .map_err(|error| BackendError::Configuration {
                store: store.to_owned(),
                detail: format!("failed to build the HTTP client: {error}"),
                hint: "check ca_cert and the proxy environment variables".to_owned(),
            })
    }
}

fn read_ca_bundle(store: &str, path: &PathBuf) -> Result<Vec<reqwest::Certificate>, BackendError> {
    let invalid = |detail: String| BackendError::Configuration {
        store: store.to_owned(),
        detail,
        hint: "set ca_cert to a readable PEM file of CA certificates".to_owned(),
    };

    let pem = std::fs::read(path)
        .map_err(|error| invalid(format!("failed to read ca_cert {path:?}: {error}")))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|error| invalid(format!("invalid PEM in ca_cert {path:?}: {error}")))?;
    if certificates.is_empty() {
        return Err(invalid(format!("ca_cert {path:?} contains no certificate")));
    }
    Ok(certificates)
}

/// Classifies a failed request: connection and timeout failures are transient.
pub fn send_error(store: &str, error: &reqwest::Error) -> BackendError {
    let detail = if error.is_timeout() {
        "the request timed out".to_owned()
    } else if error.is_connect() {
        format!("failed to connect: {}", error_chain(error))
    } else {
        format!("request failed: {}", error_chain(error))
    };
    BackendError::Unavailable {
        store: store.to_owned(),
        detail,
    }
}

/// Joins an error and its sources into one line, without the request URL's query.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_bundle_names_the_path() {
        let transport = Transport {
            ca_cert: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..Transport::default()
        };

        let error = transport.client("vault").expect_err("missing bundle");

        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn empty_ca_bundle_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let transport = Transport {
            ca_cert: Some(path),
            ..Transport::default()
        };

        let error = transport.client("vault").expect_err("empty bundle");

        assert!(error.to_string().contains("no certificate"), "{error}");
    }
}
