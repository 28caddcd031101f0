//! Store settings and their validation.

use std::path::PathBuf;
use std::time::Duration;

use backends::aws::AwsSettings;
use backends::http::Transport;
use backends::vault::{
    DEFAULT_KUBERNETES_MOUNT, DEFAULT_KUBERNETES_TOKEN_PATH, KvVersion, VaultAuth, VaultSettings,
};
use serde::Deserialize;

/// A validated store.
#[derive(Clone, Debug)]
pub struct StoreSpec {
    pub name: String,
    pub kind: StoreKind,
}

/// Settings by store type.
#[derive(Clone, Debug)]
pub enum StoreKind {
    Vault(VaultSettings),
    Aws(AwsSettings),
    File,
}

impl StoreKind {
    /// Returns the store type as written in the configuration.
    pub fn type_name(&self) -> &'static str {
        match self {
            StoreKind::Vault(_) => "vault",
            StoreKind::Aws(_) => "aws",
            StoreKind::File => "file",
        }
    }
}

/// A `[stores.NAME]` table as written; which keys apply depends on `type`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct StoreToml {
    #[serde(rename = "type")]
    store_type: Option<String>,
    address: Option<String>,
    namespace: Option<String>,
    ca_cert: Option<PathBuf>,
    kv_version: Option<u8>,
    auth: Option<AuthToml>,
    region: Option<String>,
    endpoint_url: Option<String>,
    allow_instance_metadata: Option<bool>,
    connect_timeout_seconds: Option<u64>,
    request_timeout_seconds: Option<u64>,
}

/// A `[stores.NAME.auth]` table as written.
#[derive(Debug, Default, Deserialize)]
pub(super) struct AuthToml {
    method: Option<String>,
    role: Option<String>,
    mount: Option<String>,
    token_path: Option<PathBuf>,
    path: Option<PathBuf>,
}

const VAULT_KEYS: &[&str] = &["address", "namespace", "ca_cert", "kv_version", "auth"];
const AWS_KEYS: &[&str] = &["region", "endpoint_url", "allow_instance_metadata"];
const HTTP_KEYS: &[&str] = &["connect_timeout_seconds", "request_timeout_seconds"];

impl StoreToml {
    /// Validates the table, pushing every problem with the `stores.NAME` prefix.
    pub(super) fn validate(self, name: &str, problems: &mut Vec<String>) -> Option<StoreSpec> {
        let at = format!("stores.{name}");
        let before = problems.len();
        let kind = match self.store_type.as_deref() {
            Some("vault") => {
                self.reject_keys(&at, "vault", &[AWS_KEYS].concat(), problems);
                self.vault(&at, problems).map(StoreKind::Vault)
            }
            Some("aws") => {
                self.reject_keys(&at, "aws", VAULT_KEYS, problems);
                self.aws(&at, problems).map(StoreKind::Aws)
            }
            Some("file") => {
                self.reject_keys(
                    &at,
                    "file",
                    &[VAULT_KEYS, AWS_KEYS, HTTP_KEYS].concat(),
                    problems,
                );
                Some(StoreKind::File)
            }
            Some(other) => {
                problems.push(format!(
                    "{at}.type: expected \"vault\", \"aws\" or \"file\", found {other:?}"
                ));
                None
            }
            None => {
                problems.push(format!(
                    "{at}.type: missing; set it to \"vault\", \"aws\" or \"file\""
                ));
                None
            }
        };
        let kind = kind.filter(|_| problems.len() == before)?;
        Some(StoreSpec {
            name: name.to_owned(),
            kind,
        })
    }

    fn present_keys(&self) -> Vec<&'static str> {
        let flags = [
            ("address", self.address.is_some()),
            ("namespace", self.namespace.is_some()),
            ("ca_cert", self.ca_cert.is_some()),
            ("kv_version", self.kv_version.is_some()),
            ("auth", self.auth.is_some()),
            ("region", self.region.is_some()),
            ("endpoint_url", self.endpoint_url.is_some()),
            (
                "allow_instance_metadata",
                self.allow_instance_metadata.is_some(),
            ),
            (
                "connect_timeout_seconds",
                self.connect_timeout_seconds.is_some(),
            ),
            (
                "request_timeout_seconds",
                self.request_timeout_seconds.is_some(),
            ),
        ];
        flags
            .iter()
            .filter(|(_, set)| *set)
            .map(|(key, _)| *key)
            .collect()
    }

    fn reject_keys(&self, at: &str, store_type: &str, keys: &[&str], problems: &mut Vec<String>) {
        for key in self.present_keys() {
            if keys.contains(&key) {
                problems.push(format!(
                    "{at}.{key}: does not apply to a store of type {store_type:?}; remove it"
                ));
            }
        }
    }

    fn transport(&self, at: &str, problems: &mut Vec<String>) -> Transport {
        let mut transport = Transport {
            ca_cert: self.ca_cert.clone(),
            ..Transport::default()
        };
        if let Some(seconds) = self.connect_timeout_seconds {
            transport.connect_timeout =
                positive_seconds(at, "connect_timeout_seconds", seconds, problems);
        }
        if let Some(seconds) = self.request_timeout_seconds {
            transport.request_timeout =
                positive_seconds(at, "request_timeout_seconds", seconds, problems);
        }
        transport
    }

    fn vault(&self, at: &str, problems: &mut Vec<String>) -> Option<VaultSettings> {
        let transport = self.transport(at, problems);
        let address = vault_address(at, self.address.as_deref(), problems);
        let auth = vault_auth(at, self.auth.as_ref(), problems);
        let kv_version = match self.kv_version {
            None => None,
            Some(1) => Some(KvVersion::V1),
            Some(2) => Some(KvVersion::V2),
            Some(other) => {
                problems.push(format!("{at}.kv_version: expected 1 or 2, found {other}; or remove it to detect the version"));
                None
            }
        };
        let namespace = self.namespace.clone().filter(|namespace| {
            let valid = !namespace.is_empty() && namespace.chars().all(|c| c.is_ascii_graphic());
            if !valid {
                problems.push(format!("{at}.namespace: {namespace:?} is not a namespace path; use printable ASCII without spaces"));
            }
            valid
        });

        Some(VaultSettings {
            address: address?,
            namespace,
            auth: auth?,
            kv_version,
            transport,
        })
    }

    fn aws(&self, at: &str, problems: &mut Vec<String>) -> Option<AwsSettings> {
        let transport = self.transport(at, problems);
        let region = self
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|region| !region.is_empty());
        let Some(region) = region else {
            problems.push(format!(
                "{at}.region: missing; set it or AWS_REGION, such as \"eu-west-1\""
            ));
            return None;
        };
        if let Some(endpoint) = &self.endpoint_url {
            check_http_url(at, "endpoint_url", endpoint, problems);
        }

        Some(AwsSettings {
            region,
            endpoint_url: self.endpoint_url.clone(),
            allow_instance_metadata: self.allow_instance_metadata.unwrap_or(false),
            transport,
        })
    }
}

fn positive_seconds(at: &str, key: &str, seconds: u64, problems: &mut Vec<String>) -> Duration {
    if seconds == 0 || seconds > 3600 {
        problems.push(format!(
            "{at}.{key}: expected 1 to 3600 seconds, found {seconds}"
        ));
    }
    Duration::from_secs(seconds)
}

fn check_http_url(at: &str, key: &str, text: &str, problems: &mut Vec<String>) -> Option<url::Url> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        Ok(_) | Err(_) => {
            problems.push(format!(
                "{at}.{key}: {text:?} is not an http:// or https:// URL"
            ));
            None
        }
    }
}

fn vault_address(at: &str, address: Option<&str>, problems: &mut Vec<String>) -> Option<url::Url> {
    let Some(address) = address else {
        problems.push(format!(
            "{at}.address: missing; set the Vault URL, such as \"https://vault.example:8200\""
        ));
        return None;
    };
    check_http_url(at, "address", address, problems)
}

fn vault_auth(at: &str, auth: Option<&AuthToml>, problems: &mut Vec<String>) -> Option<VaultAuth> {
    let Some(auth) = auth else {
        problems.push(format!(
            "{at}.auth: missing; add [{at}.auth] with method = \"kubernetes\" and a role"
        ));
        return None;
    };
    match auth.method.as_deref() {
        Some("kubernetes") => {
            if auth.path.is_some() {
                problems.push(format!("{at}.auth.path: applies to method \"token-file\"; use token_path for the service-account token"));
            }
            let Some(role) = auth.role.clone().filter(|role| !role.is_empty()) else {
                problems.push(format!(
                    "{at}.auth.role: missing; set the Vault role bound to this service account"
                ));
                return None;
            };
            Some(VaultAuth::Kubernetes {
                role,
                mount: auth
                    .mount
                    .clone()
                    .unwrap_or_else(|| DEFAULT_KUBERNETES_MOUNT.to_owned()),
                token_path: auth
                    .token_path
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBERNETES_TOKEN_PATH)),
            })
        }
        Some("token-file") => {
            for (key, set) in [
                ("role", auth.role.is_some()),
                ("mount", auth.mount.is_some()),
                ("token_path", auth.token_path.is_some()),
            ] {
                if set {
                    problems.push(format!(
                        "{at}.auth.{key}: applies to method \"kubernetes\"; remove it"
                    ));
                }
            }
            let Some(path) = auth.path.clone() else {
                problems.push(format!(
                    "{at}.auth.path: missing; set the file that holds a Vault token"
                ));
                return None;
            };
            Some(VaultAuth::TokenFile { path })
        }
        Some(other) => {
            problems.push(format!(
                "{at}.auth.method: expected \"kubernetes\" or \"token-file\", found {other:?}"
            ));
            None
        }
        None => {
            problems.push(format!(
                "{at}.auth.method: missing; set \"kubernetes\" or \"token-file\""
            ));
            None
        }
    }
}
