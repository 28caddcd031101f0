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
