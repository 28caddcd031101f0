//! One transport policy for the HTTP stores: CA bundle, timeouts, proxies.
//!
//! Every store (Vault, AWS through [`crate::aws_http`], Azure, GCP) sends every
//! request (login, token exchange, read) through a client built by
//! [`Transport::client`], so proxies, extra CAs and timeouts apply the same way.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::BackendError;

/// Default time to establish a TCP and TLS connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time for one request, from sending to the last byte of the reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Transport settings shared by every HTTP store.
#[derive(Clone)]
pub struct Transport {
    /// PEM bundle trusted in addition to the system roots.
    pub ca_cert: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Proxy for every request, replacing `HTTPS_PROXY` and `HTTP_PROXY`.
    pub proxy_url: Option<Url>,
    /// Hosts reached without the proxy, in `NO_PROXY` syntax, replacing `NO_PROXY`.
    pub no_proxy: Option<String>,
}

impl Default for Transport {
    fn default() -> Self {
        Self {
            ca_cert: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            proxy_url: None,
            no_proxy: None,
        }
    }
}

/// Prints the proxy without its user name and password.
impl fmt::Debug for Transport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Transport")
            .field("ca_cert", &self.ca_cert)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("proxy_url", &self.proxy_url.as_ref().map(redact_url))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// The proxies that apply to one client, after the settings and the environment
/// are combined.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyPolicy {
    /// Proxy for `https://` URLs.
    pub https: Option<String>,
    /// Proxy for `http://` URLs.
    pub http: Option<String>,
    /// Bypass list in `NO_PROXY` syntax.
    pub no_proxy: Option<String>,
}

impl fmt::Debug for ProxyPolicy {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |proxy: &Option<String>| {
            proxy.as_deref().map(|text| {
                Url::parse(text).map_or_else(|_| "<invalid>".to_owned(), |url| redact_url(&url))
            })
        };
        formatter
            .debug_struct("ProxyPolicy")
            .field("https", &redact(&self.https))
            .field("http", &redact(&self.http))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl Transport {
    /// Builds a rustls-backed client that applies the CA bundle, the timeouts and
    /// the proxy policy of [`Transport::proxy_policy`].
    pub fn client(&self, store: &str) -> Result<reqwest::Client, BackendError> {
        self.build_client(store, true)
    }

    /// Builds a client for a store reached only over plain HTTP: the system CA
    /// bundle is not loaded unless a proxy is set, which saves its parsing time and
    /// memory at every start. `ca_cert`, when set, is still loaded.
    pub fn plain_http_client(&self, store: &str) -> Result<reqwest::Client, BackendError> {
        let policy = self.proxy_policy(&EnvVars);
        let proxied = policy.https.is_some() || policy.http.is_some();
        self.build_client(store, proxied)
    }

    fn build_client(
        &self,
        store: &str,
        system_roots_needed: bool,
    ) -> Result<reqwest::Client, BackendError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portainer-key-agent/", env!("CARGO_PKG_VERSION")))
            // The policy below replaces reqwest's own reading of the environment,
            // so a configured no_proxy also applies to proxies from the environment.
            .no_proxy();

        let mut roots = if system_roots_needed {
            system_roots()
        } else {
            Vec::new()
        };
        if let Some(path) = &self.ca_cert {
            roots.extend(read_ca_bundle(store, path)?);
        }
        if !roots.is_empty() || !system_roots_needed {
            builder = builder.tls_certs_only(roots);
        }
        let policy = self.proxy_policy(&EnvVars);
        for proxy in proxies(store, &policy)? {
            builder = builder.proxy(proxy);
        }

        builder
            .build()
            .map_err(|error| BackendError::Configuration {
                store: store.to_owned(),
                detail: format!("failed to build the HTTP client: {}", error_chain(&error)),
                hint: "check ca_cert and the proxy settings".to_owned(),
            })
    }

    /// Combines the settings with the environment: `proxy_url` replaces
    /// `HTTPS_PROXY` and `HTTP_PROXY` (upper or lower case, upper case first), and
    /// `no_proxy` replaces `NO_PROXY`.
    pub fn proxy_policy(&self, env: &dyn Environment) -> ProxyPolicy {
        let read = |names: &[&str]| {
            names
                .iter()
                .find_map(|name| env.var(name))
                .filter(|value| !value.trim().is_empty())
        };
        let configured = self.proxy_url.as_ref().map(Url::to_string);
        ProxyPolicy {
            https: configured
                .clone()
                .or_else(|| read(&["HTTPS_PROXY", "https_proxy"])),
            http: configured.or_else(|| read(&["HTTP_PROXY", "http_proxy"])),
            no_proxy: self
                .no_proxy
                .clone()
                .or_else(|| read(&["NO_PROXY", "no_proxy"])),
        }
    }
}

/// Where [`Transport::proxy_policy`] reads environment variables.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug)]
pub struct EnvVars;

impl Environment for EnvVars {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

fn proxies(store: &str, policy: &ProxyPolicy) -> Result<Vec<reqwest::Proxy>, BackendError> {
    let no_proxy = policy
        .no_proxy
        .as_deref()
        .and_then(reqwest::NoProxy::from_string);
    let invalid = |text: &str, error: reqwest::Error| BackendError::Configuration {
        store: store.to_owned(),
        detail: format!(
            "invalid proxy URL {}: {}",
            Url::parse(text).map_or_else(|_| "<unparseable>".to_owned(), |url| redact_url(&url)),
            error_chain(&error)
        ),
        hint: "set proxy_url, HTTPS_PROXY or HTTP_PROXY to a URL such as http://proxy.example:3128"
            .to_owned(),
    };

    let mut list = Vec::new();
    if let Some(text) = &policy.https {
        let proxy = reqwest::Proxy::https(text.as_str()).map_err(|error| invalid(text, error))?;
        list.push(proxy.no_proxy(no_proxy.clone()));
    }
    if let Some(text) = &policy.http {
        let proxy = reqwest::Proxy::http(text.as_str()).map_err(|error| invalid(text, error))?;
        list.push(proxy.no_proxy(no_proxy));
    }
    Ok(list)
}

/// Returns the URL without user name, password, path or query, for logs.
pub fn redact_url(url: &Url) -> String {
    let host = match url.host() {
        Some(host) => host.to_string(),
        None => String::new(),
    };
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// System CA bundles, in the order Linux distributions place them.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Reads the system's CA bundle file (`SSL_CERT_FILE`, else the distribution's).
///
/// One bundle file is parsed instead of letting the platform verifier scan every
/// file of `/etc/ssl/certs`, which took about half of a fetch's run time on Debian
/// (about 146 files; measured with strace and hyperfine on the benchmark machine).
/// Returns nothing when no bundle is found, and reqwest's platform verifier applies.
fn system_roots() -> Vec<reqwest::Certificate> {
    let configured = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let candidates = configured
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from));
    for path in candidates {
        let Ok(pem) = std::fs::read(&path) else {
            continue;
        };
        match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(certificates) if !certificates.is_empty() => return certificates,
            Ok(_) | Err(_) => {
                tracing::debug!(path = %path.display(), "no usable certificate in the CA bundle");
            }
        }
    }
    Vec::new()
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

/// Reads a reply body of at most `max_bytes` into a zeroising buffer.
pub(crate) async fn read_body_limited(
    store: &str,
    mut response: reqwest::Response,
    max_bytes: usize,
) -> Result<crate::SecretBytes, BackendError> {
    let mut body = crate::SecretBytes::default();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| send_error(store, &error))?
    {
        if body.len() + chunk.len() > max_bytes {
            return Err(BackendError::InvalidResponse {
                store: store.to_owned(),
                path: response.url().path().to_owned(),
                detail: format!("the reply is larger than {max_bytes} bytes"),
                hint: "check that the endpoint URL points at the store".to_owned(),
            });
        }
        body.expose_mut().extend_from_slice(&chunk);
    }
    Ok(body)
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

    struct MapEnv(Vec<(&'static str, &'static str)>);

    impl Environment for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn environment_proxies_apply_by_scheme() {
        let env = MapEnv(vec![
            ("HTTPS_PROXY", "http://127.0.0.1:3128"),
            ("http_proxy", "http://127.0.0.1:3129"),
            ("NO_PROXY", "127.0.0.1,::1"),
        ]);

        let policy = Transport::default().proxy_policy(&env);

        assert_eq!(policy.https.as_deref(), Some("http://127.0.0.1:3128"));
        assert_eq!(policy.http.as_deref(), Some("http://127.0.0.1:3129"));
        assert_eq!(policy.no_proxy.as_deref(), Some("127.0.0.1,::1"));
    }

    #[test]
    fn configured_proxy_replaces_environment() {
        let env = MapEnv(vec![
            ("HTTPS_PROXY", "http://127.0.0.1:3128"),
            ("NO_PROXY", "*"),
        ]);
        let transport = Transport {
            proxy_url: Some(Url::parse("http://user:password@[::1]:8080").expect("url")),
            no_proxy: Some("localhost".to_owned()),
            ..Transport::default()
        };

        let policy = transport.proxy_policy(&env);

        assert_eq!(
            policy.https.as_deref(),
            Some("http://user:password@[::1]:8080/")
        );
        assert_eq!(policy.http, policy.https);
        assert_eq!(policy.no_proxy.as_deref(), Some("localhost"));
        assert!(transport.client("vault").is_ok());
    }

    #[test]
    fn debug_hides_proxy_credentials() {
        let transport = Transport {
            proxy_url: Some(Url::parse("http://user:password@[::1]:8080").expect("url")),
            ..Transport::default()
        };

        let printed = format!("{transport:?}");

        assert!(!printed.contains("password"), "{printed}");
        assert!(printed.contains("http://[::1]:8080"), "{printed}");
    }

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
