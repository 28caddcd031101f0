//! TOML fragments for agent configurations.

use std::path::Path;

/// Builds a `[stores.NAME]` table for OpenBao with Kubernetes auth at the default mount.
pub fn vault_kubernetes_store(name: &str, address: &str, role: &str, jwt_file: &Path) -> String {
    format!(
        "[stores.{name}]\ntype = \"vault\"\naddress = \"{address}\"\n\
         connect_timeout_seconds = 2\nrequest_timeout_seconds = 5\n\
         [stores.{name}.auth]\nmethod = \"kubernetes\"\nrole = \"{role}\"\ntoken_path = \"{}\"\n",
        jwt_file.display()
    )
}

/// Builds a `[stores.NAME]` table for OpenBao with a Vault token read from a file.
pub fn vault_token_file_store(name: &str, address: &str, token_file: &Path) -> String {
    format!(
        "[stores.{name}]\ntype = \"vault\"\naddress = \"{address}\"\n\
         connect_timeout_seconds = 2\nrequest_timeout_seconds = 5\n\
         [stores.{name}.auth]\nmethod = \"token-file\"\npath = \"{}\"\n",
        token_file.display()
    )
}

/// Builds a `[stores.NAME]` table for AWS Secrets Manager at `endpoint_url` in us-east-1.
pub fn aws_store(name: &str, endpoint_url: &str) -> String {
    format!(
        "[stores.{name}]\ntype = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint_url}\"\n"
    )
}

/// Builds a `[stores.NAME]` table for Azure Key Vault at `url` (the Entra ID and Key
/// Vault double), with the federated token read from `token_file`, with further
/// `key = value` lines from `extra`.
pub fn azure_store(name: &str, url: &str, token_file: &Path, extra: &str) -> String {
    format!(
        "[stores.{name}]\ntype = \"azure\"\nvault_url = \"{url}\"\nauthority_host = \"{url}\"\n\
         tenant_id = \"{}\"\nclient_id = \"{}\"\ntoken_file = \"{}\"\n\
         connect_timeout_seconds = 2\nrequest_timeout_seconds = 5\n{extra}\n",
        crate::EntraKeyVault::TENANT,
        crate::EntraKeyVault::CLIENT,
        token_file.display()
    )
}

/// Builds a `[stores.NAME]` table for GCP Secret Manager at `url`, with the
/// credential configuration `credentials_file` and further lines from `extra`.
pub fn gcp_store(name: &str, url: &str, credentials_file: &Path, extra: &str) -> String {
    format!(
        "[stores.{name}]\ntype = \"gcp\"\nproject = \"{}\"\nendpoint_url = \"{url}\"\n\
         credentials_file = \"{}\"\nconnect_timeout_seconds = 2\nrequest_timeout_seconds = 5\n{extra}\n",
        crate::GoogleSecretManager::PROJECT_ID,
        credentials_file.display()
    )
}

/// Builds a `[[secrets]]` entry, with further `key = value` lines from `extra`.
pub fn secret(
    name: &str,
    kind: &str,
    store: &str,
    path: &str,
    target: &Path,
    extra: &str,
) -> String {
    format!(
        "[[secrets]]\nname = \"{name}\"\nkind = \"{kind}\"\nstore = \"{store}\"\npath = \"{path}\"\n\
         target = \"{}\"\n{extra}\n",
        target.display()
    )
}
