//! Store settings and their validation.

use std::path::PathBuf;
use std::time::Duration;

use backends::aws::AwsSettings;
use backends::azure::{AzureCloud, AzureSettings};
use backends::gcp::{DEFAULT_ENDPOINT, DEFAULT_METADATA_HOST, GcpCredentials, GcpSettings};
use backends::http::{EnvVars as ProcessEnv, Environment, Transport};
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
    Azure(AzureSettings),
    Gcp(GcpSettings),
    File,
}

impl StoreKind {
    /// Returns the store type as written in the configuration.
    pub fn type_name(&self) -> &'static str {
        match self {
            StoreKind::Vault(_) => "vault",
            StoreKind::Aws(_) => "aws",
            StoreKind::Azure(_) => "azure",
            StoreKind::Gcp(_) => "gcp",
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
    proxy_url: Option<String>,
    no_proxy: Option<String>,
    vault_url: Option<String>,
    tenant_id: Option<String>,
    client_id: Option<String>,
    authority_host: Option<String>,
    token_file: Option<PathBuf>,
    cloud: Option<String>,
    project: Option<String>,
    credentials_file: Option<PathBuf>,
    sts_url: Option<String>,
    allow_metadata_server: Option<bool>,
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

const VAULT_KEYS: &[&str] = &["address", "namespace", "kv_version", "auth"];
const AWS_KEYS: &[&str] = &["region", "endpoint_url", "allow_instance_metadata"];
const AZURE_KEYS: &[&str] = &[
    "vault_url",
    "tenant_id",
    "client_id",
    "authority_host",
    "token_file",
    "cloud",
];
const GCP_KEYS: &[&str] = &[
    "project",
    "credentials_file",
    "endpoint_url",
    "sts_url",
    "allow_metadata_server",
];
/// Transport keys, shared by every HTTP store.
const HTTP_KEYS: &[&str] = &[
    "ca_cert",
    "connect_timeout_seconds",
    "request_timeout_seconds",
    "proxy_url",
    "no_proxy",
];

/// The accepted values of `type`, for messages.
const STORE_TYPES: &str = "\"vault\", \"aws\", \"azure\", \"gcp\" or \"file\"";

/// Returns the store keys that do not apply to a store whose keys are `allowed`.
fn keys_except(allowed: &[&[&str]]) -> Vec<&'static str> {
    [VAULT_KEYS, AWS_KEYS, AZURE_KEYS, GCP_KEYS, HTTP_KEYS]
        .concat()
        .into_iter()
        .filter(|key| !allowed.iter().any(|keys| keys.contains(key)))
        .collect()
}

impl StoreToml {
    /// Validates the table, pushing every problem with the `stores.NAME` prefix.
    pub(super) fn validate(self, name: &str, problems: &mut Vec<String>) -> Option<StoreSpec> {
        let at = format!("stores.{name}");
        let before = problems.len();
        let kind = match self.store_type.as_deref() {
            Some("vault") => {
                self.reject_keys(
                    &at,
                    "vault",
                    &keys_except(&[VAULT_KEYS, HTTP_KEYS]),
                    problems,
                );
                self.vault(&at, problems).map(StoreKind::Vault)
            }
            Some("aws") => {
                self.reject_keys(&at, "aws", &keys_except(&[AWS_KEYS, HTTP_KEYS]), problems);
                self.aws(&at, problems).map(StoreKind::Aws)
            }
            Some("azure") => {
                self.reject_keys(
                    &at,
                    "azure",
                    &keys_except(&[AZURE_KEYS, HTTP_KEYS]),
                    problems,
                );
                self.azure(&at, &ProcessEnv, problems).map(StoreKind::Azure)
            }
            Some("gcp") => {
                self.reject_keys(&at, "gcp", &keys_except(&[GCP_KEYS, HTTP_KEYS]), problems);
                self.gcp(&at, &ProcessEnv, problems).map(StoreKind::Gcp)
            }
            Some("file") => {
                self.reject_keys(&at, "file", &keys_except(&[]), problems);
                Some(StoreKind::File)
            }
            Some(other) => {
                problems.push(format!(
                    "{at}.type: expected {STORE_TYPES}, found {other:?}"
                ));
                None
            }
            None => {
                problems.push(format!("{at}.type: missing; set it to {STORE_TYPES}"));
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
            ("proxy_url", self.proxy_url.is_some()),
            ("no_proxy", self.no_proxy.is_some()),
            ("vault_url", self.vault_url.is_some()),
            ("tenant_id", self.tenant_id.is_some()),
            ("client_id", self.client_id.is_some()),
            ("authority_host", self.authority_host.is_some()),
            ("token_file", self.token_file.is_some()),
            ("cloud", self.cloud.is_some()),
            ("project", self.project.is_some()),
            ("credentials_file", self.credentials_file.is_some()),
            ("sts_url", self.sts_url.is_some()),
            (
                "allow_metadata_server",
                self.allow_metadata_server.is_some(),
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
        if let Some(proxy) = &self.proxy_url {
            transport.proxy_url = check_http_url(at, "proxy_url", proxy, problems);
        }
        if let Some(no_proxy) = &self.no_proxy {
            transport.no_proxy = Some(no_proxy.clone());
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

impl StoreToml {
    /// Validates an Azure Key Vault store. `tenant_id`, `client_id`, `token_file`
    /// and `authority_host` fall back to the `AZURE_*` variables that the Azure
    /// workload identity webhook sets.
    fn azure(
        &self,
        at: &str,
        env: &dyn Environment,
        problems: &mut Vec<String>,
    ) -> Option<AzureSettings> {
        let transport = self.transport(at, problems);
        let vault_url = match &self.vault_url {
            Some(text) => https_url(at, "vault_url", text, problems),
            None => {
                problems.push(format!("{at}.vault_url: missing; set the vault URL, such as \"https://my-vault.vault.azure.net\""));
                None
            }
        };
        let host_cloud = vault_url
            .as_ref()
            .and_then(|url| url.host_str())
            .and_then(AzureCloud::of_vault_host);
        let cloud = match self.cloud.as_deref() {
            None => host_cloud.unwrap_or(AzureCloud::Public),
            Some(name) => match AzureCloud::from_name(name) {
                Some(cloud) => cloud,
                None => {
                    problems.push(format!("{at}.cloud: expected \"public\", \"us-government\" or \"china\", found {name:?}"));
                    AzureCloud::Public
                }
            },
        };
        if let Some(host_cloud) = host_cloud.filter(|host_cloud| *host_cloud != cloud) {
            problems.push(format!(
                "{at}.vault_url: the host is a vault of the {:?} cloud ({}), but cloud is {:?}; set cloud = {:?}",
                host_cloud.name(),
                host_cloud.vault_suffix(),
                cloud.name(),
                host_cloud.name()
            ));
        }

        let tenant_id = setting_or_env(
            at,
            "tenant_id",
            self.tenant_id.as_ref(),
            env,
            "AZURE_TENANT_ID",
            problems,
        );
        if let Some(tenant) = &tenant_id
            && !tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            problems.push(format!(
                "{at}.tenant_id: {tenant:?} is not a tenant ID or domain"
            ));
        }
        let client_id = setting_or_env(
            at,
            "client_id",
            self.client_id.as_ref(),
            env,
            "AZURE_CLIENT_ID",
            problems,
        );
        let token_file = setting_or_env(
            at,
            "token_file",
            self.token_file
                .as_ref()
                .map(|path| path.to_string_lossy().into_owned())
                .as_ref(),
            env,
            "AZURE_FEDERATED_TOKEN_FILE",
            problems,
        );
        let authority_text = self
            .authority_host
            .clone()
            .or_else(|| {
                env.var("AZURE_AUTHORITY_HOST")
                    .filter(|host| !host.is_empty())
            })
            .unwrap_or_else(|| cloud.authority_host().to_owned());
        let authority_host = https_url(at, "authority_host", &authority_text, problems);

        Some(AzureSettings {
            vault_url: vault_url?,
            tenant_id: tenant_id?,
            client_id: client_id?,
            authority_host: authority_host?,
            token_file: PathBuf::from(token_file?),
            cloud,
            transport,
        })
    }

    /// Validates a GCP Secret Manager store. `credentials_file` falls back to
    /// `GOOGLE_APPLICATION_CREDENTIALS`; the metadata server is used only with
    /// `allow_metadata_server = true` and no credential configuration.
    fn gcp(
        &self,
        at: &str,
        env: &dyn Environment,
        problems: &mut Vec<String>,
    ) -> Option<GcpSettings> {
        let transport = self.transport(at, problems);
        let project = self
            .project
            .clone()
            .or_else(|| env.var("GOOGLE_CLOUD_PROJECT"))
            .filter(|project| !project.is_empty());
        let Some(project) = project else {
            problems.push(format!(
                "{at}.project: missing; set the project ID or number, or GOOGLE_CLOUD_PROJECT"
            ));
            return None;
        };
        if !project
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
        {
            problems.push(format!(
                "{at}.project: {project:?} is not a project ID or number"
            ));
        }

        let file = self.credentials_file.clone().or_else(|| {
            env.var("GOOGLE_APPLICATION_CREDENTIALS")
                .filter(|path| !path.is_empty())
                .map(PathBuf::from)
        });
        let credentials = match (file, self.allow_metadata_server.unwrap_or(false)) {
            (Some(file), _) => Some(GcpCredentials::ExternalAccount { file }),
            (None, true) => Some(GcpCredentials::MetadataServer {
                host: env
                    .var("GCE_METADATA_HOST")
                    .filter(|host| !host.is_empty())
                    .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_owned()),
            }),
            (None, false) => {
                problems.push(format!("{at}.credentials_file: missing; set the external_account credential configuration (or GOOGLE_APPLICATION_CREDENTIALS), or allow_metadata_server = true to use the node's service account"));
                None
            }
        };

        let endpoint_url = self.endpoint_url.as_deref().unwrap_or(DEFAULT_ENDPOINT);
        let endpoint_url = check_http_url(at, "endpoint_url", endpoint_url, problems);
        let sts_url = match &self.sts_url {
            Some(text) => Some(check_http_url(at, "sts_url", text, problems)?),
            None => None,
        };

        Some(GcpSettings {
            project,
            credentials: credentials?,
            endpoint_url: endpoint_url?,
            sts_url,
            transport,
        })
    }
}

/// Returns the configured value, else the environment variable `variable`, else
/// records a problem.
fn setting_or_env(
    at: &str,
    key: &str,
    configured: Option<&String>,
    env: &dyn Environment,
    variable: &str,
    problems: &mut Vec<String>,
) -> Option<String> {
    let value = configured
        .cloned()
        .or_else(|| env.var(variable))
        .filter(|value| !value.is_empty());
    if value.is_none() {
        problems.push(format!("{at}.{key}: missing; set it or {variable}"));
    }
    value
}

/// Parses an `https://` URL with a host.
fn https_url(at: &str, key: &str, text: &str, problems: &mut Vec<String>) -> Option<url::Url> {
    let url = check_http_url(at, key, text, problems)?;
    if url.scheme() != "https" {
        problems.push(format!("{at}.{key}: {text:?} must be an https:// URL"));
        return None;
    }
    Some(url)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Environment variables given as a map, so tests never change the process's.
    struct MapEnv(BTreeMap<&'static str, &'static str>);

    impl Environment for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|value| (*value).to_owned())
        }
    }

    fn table(text: &str) -> StoreToml {
        toml::from_str(text).expect("store table")
    }

    #[test]
    fn azure_keys_override_environment() {
        let env = MapEnv(BTreeMap::from([
            ("AZURE_TENANT_ID", "env-tenant"),
            ("AZURE_CLIENT_ID", "env-client"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/env/token"),
            ("AZURE_AUTHORITY_HOST", "https://env.authority.example"),
        ]));
        let store = table(
            "type = \"azure\"\nvault_url = \"https://pka.vault.azure.net\"\ntenant_id = \"config-tenant\"\n",
        );
        let mut problems = Vec::new();

        let settings = store
            .azure("stores.kv", &env, &mut problems)
            .expect("settings");

        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(settings.tenant_id, "config-tenant");
        assert_eq!(settings.client_id, "env-client");
        assert_eq!(settings.token_file, PathBuf::from("/env/token"));
        assert_eq!(
            settings.authority_host.as_str(),
            "https://env.authority.example/"
        );
    }

    #[test]
    fn azure_cloud_comes_from_vault_host() {
        let env = MapEnv(BTreeMap::new());
        let store = table(
            "vault_url = \"https://pka.vault.azure.cn\"\ntenant_id = \"t\"\nclient_id = \"c\"\ntoken_file = \"/t\"\n",
        );
        let mut problems = Vec::new();

        let settings = store
            .azure("stores.kv", &env, &mut problems)
            .expect("settings");

        assert_eq!(settings.cloud, AzureCloud::China);
        assert_eq!(
            settings.authority_host.as_str(),
            "https://login.chinacloudapi.cn/"
        );
    }

    #[test]
    fn azure_problems_are_all_reported() {
        let env = MapEnv(BTreeMap::new());
        let store = table(
            "vault_url = \"http://pka.vault.usgovcloudapi.net\"\ncloud = \"mars\"\nauthority_host = \"http://login.example\"\n",
        );
        let mut problems = Vec::new();

        let settings = store.azure("stores.kv", &env, &mut problems);

        let joined = problems.join("\n");
        assert!(settings.is_none());
        assert!(
            joined.contains("stores.kv.vault_url: \"http://"),
            "{joined}"
        );
        assert!(joined.contains("stores.kv.cloud: expected"), "{joined}");
        assert!(
            joined.contains("stores.kv.tenant_id: missing; set it or AZURE_TENANT_ID"),
            "{joined}"
        );
        assert!(joined.contains("stores.kv.client_id: missing"), "{joined}");
        assert!(joined.contains("stores.kv.token_file: missing"), "{joined}");
        assert!(joined.contains("stores.kv.authority_host"), "{joined}");
    }

    #[test]
    fn azure_cloud_mismatch_is_rejected() {
        let env = MapEnv(BTreeMap::new());
        let store = table(
            "vault_url = \"https://pka.vault.usgovcloudapi.net\"\ncloud = \"public\"\ntenant_id = \"t\"\nclient_id = \"c\"\ntoken_file = \"/t\"\n",
        );
        let mut problems = Vec::new();

        store.azure("stores.kv", &env, &mut problems);

        assert!(
            problems
                .join("\n")
                .contains("set cloud = \"us-government\""),
            "{problems:?}"
        );
    }

    #[test]
    fn gcp_needs_credentials_unless_metadata_allowed() {
        let env = MapEnv(BTreeMap::from([("GCE_METADATA_HOST", "127.0.0.1:9")]));
        let without = table("project = \"p\"\n");
        let with_metadata = table("project = \"p\"\nallow_metadata_server = true\n");
        let mut problems = Vec::new();

        let rejected = without.gcp("stores.sm", &env, &mut problems);
        let mut metadata_problems = Vec::new();
        let metadata = with_metadata
            .gcp("stores.sm", &env, &mut metadata_problems)
            .expect("settings");

        assert!(rejected.is_none());
        assert!(
            problems
                .join("\n")
                .contains("stores.sm.credentials_file: missing"),
            "{problems:?}"
        );
        assert!(metadata_problems.is_empty(), "{metadata_problems:?}");
        assert_eq!(
            metadata.credentials,
            GcpCredentials::MetadataServer {
                host: "127.0.0.1:9".to_owned()
            }
        );
    }

    #[test]
    fn gcp_file_wins_over_metadata() {
        let env = MapEnv(BTreeMap::from([(
            "GOOGLE_APPLICATION_CREDENTIALS",
            "/env/creds.json",
        )]));
        let store = table("project = \"p\"\nallow_metadata_server = true\n");
        let mut problems = Vec::new();

        let settings = store
            .gcp("stores.sm", &env, &mut problems)
            .expect("settings");

        assert_eq!(
            settings.credentials,
            GcpCredentials::ExternalAccount {
                file: PathBuf::from("/env/creds.json")
            }
        );
        assert_eq!(
            settings.endpoint_url.as_str(),
            "https://secretmanager.googleapis.com/"
        );
    }

    #[test]
    fn keys_of_other_types_are_rejected() {
        let text = "[stores.sm]\ntype = \"gcp\"\nproject = \"p\"\ncredentials_file = \"/c.json\"\nvault_url = \"https://x.vault.azure.net\"\nregion = \"eu-west-1\"\nproxy_url = \"http://127.0.0.1:3128\"\nca_cert = \"/ca.pem\"\n[[secrets]]\nname = \"k\"\nkind = \"generic\"\npath = \"s\"\ntarget = \"/run/secrets/k\"\n";

        let error = crate::config::Config::from_toml_str(text, "test.toml").expect_err("invalid");

        let joined = error.problems.join("\n");
        assert!(
            joined.contains("stores.sm.vault_url: does not apply"),
            "{joined}"
        );
        assert!(
            joined.contains("stores.sm.region: does not apply"),
            "{joined}"
        );
        assert!(!joined.contains("proxy_url"), "{joined}");
        assert!(!joined.contains("ca_cert"), "{joined}");
    }

    #[test]
    fn aws_accepts_ca_cert_and_proxy() {
        let text = "[stores.aws]\ntype = \"aws\"\nregion = \"eu-west-1\"\nca_cert = \"/ca.pem\"\nproxy_url = \"http://[::1]:3128\"\nno_proxy = \"127.0.0.1,::1\"\n[[secrets]]\nname = \"k\"\nkind = \"generic\"\npath = \"s\"\ntarget = \"/run/secrets/k\"\n";

        let config = crate::config::Config::from_toml_str(text, "test.toml").expect("valid");

        let StoreKind::Aws(settings) = &config.stores["aws"].kind else {
            panic!("not an aws store");
        };
        assert_eq!(settings.transport.ca_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(
            settings.transport.proxy_url.as_ref().map(url::Url::as_str),
            Some("http://[::1]:3128/")
        );
        assert_eq!(
            settings.transport.no_proxy.as_deref(),
            Some("127.0.0.1,::1")
        );
    }

    #[test]
    fn wrong_type_is_reported() {
        let text = "[stores.sm]\ntype = \"gcp\"\nproject = \"p\"\nallow_metadata_server = \"yes\"\n[[secrets]]\nname = \"k\"\nkind = \"generic\"\npath = \"s\"\ntarget = \"/run/secrets/k\"\n";

        let error = crate::config::Config::from_toml_str(text, "test.toml").expect_err("invalid");

        let joined = error.problems.join("\n");
        assert!(joined.contains("stores.sm"), "{joined}");
        assert!(joined.contains("invalid type"), "{joined}");
    }
}
