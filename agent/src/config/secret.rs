//! Secret settings and their validation.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::store::{StoreKind, StoreSpec};

/// What a secret is for, which decides its validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// Portainer's database key: AES-256 key = SHA-256 of the file's exact bytes.
    EncryptionKey,
    /// The plaintext first admin password for `--admin-password-file`.
    AdminPassword,
    /// Any other file; only emptiness is checked.
    Generic,
}

impl SecretKind {
    pub fn name(self) -> &'static str {
        match self {
            SecretKind::EncryptionKey => "encryption-key",
            SecretKind::AdminPassword => "admin-password",
            SecretKind::Generic => "generic",
        }
    }
}

/// Encoding of the stored value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Raw,
    Base64,
}

/// Handling of a trailing newline before the value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewlinePolicy {
    /// Write the bytes as stored.
    Exact,
    /// Remove one trailing `\n` if present.
    StripOne,
    /// Append `\n` unless the value already ends with one.
    EnsureOne,
}

/// Numeric owner of a written file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// A validated secret.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretSpec {
    pub name: String,
    pub kind: SecretKind,
    pub store: String,
    pub path: String,
    pub field: Option<String>,
    pub version: Option<String>,
    pub stage: Option<String>,
    pub target: PathBuf,
    /// Permission bits of the written file.
    pub mode: u32,
    /// Owner of the written file; the agent's own when `None`.
    pub owner: Option<Owner>,
    pub encoding: Encoding,
    pub newline: NewlinePolicy,
    /// Allows a target directory that is not tmpfs or ramfs.
    pub allow_disk: bool,
    /// Time between version checks in watch mode; `watch.interval_seconds` when `None`.
    pub interval: Option<std::time::Duration>,
}

impl SecretSpec {
    pub fn request(&self) -> backends::SecretRequest {
        backends::SecretRequest {
            path: self.path.clone(),
            version: self.version.clone(),
            stage: self.stage.clone(),
        }
    }
}

/// A `[[secrets]]` table as written.
#[derive(Debug, Default, Deserialize)]
pub(super) struct SecretToml {
    name: Option<String>,
    kind: Option<String>,
    store: Option<String>,
    path: Option<String>,
    field: Option<String>,
    version: Option<toml::Value>,
    stage: Option<String>,
    target: Option<PathBuf>,
    mode: Option<toml::Value>,
    owner: Option<String>,
    encoding: Option<String>,
    newline: Option<String>,
    allow_disk: Option<bool>,
    interval_seconds: Option<u64>,
}

/// Default mode: readable by the owner only.
const DEFAULT_MODE: u32 = 0o400;

impl SecretToml {
    pub(super) fn validate(
        self,
        index: usize,
        stores: &BTreeMap<String, StoreSpec>,
        problems: &mut Vec<String>,
    ) -> Option<SecretSpec> {
        let label = match &self.name {
            Some(name) => format!("secrets[{index}] ({name})"),
            None => format!("secrets[{index}]"),
        };
        let before = problems.len();

        let name = self.checked_name(&label, problems);
        let kind = parse_kind(&label, self.kind.as_deref(), problems);
        let store = choose_store(&label, self.store.as_deref(), stores, problems);
        let path = self.checked_path(&label, store.map(|store| &store.kind), problems);
        let version = self.checked_version(&label, store.map(|store| &store.kind), problems);
        let target = checked_target(&label, self.target.as_deref(), problems);
        let mode = parse_mode(&label, self.mode.as_ref(), kind, problems);
        let owner = self
            .owner
            .as_deref()
            .and_then(|owner| parse_owner(&label, owner, problems));
        let encoding = parse_encoding(&label, self.encoding.as_deref(), problems);
        let newline = parse_newline(&label, self.newline.as_deref(), problems);
        if let Some(seconds) = self.interval_seconds
            && !(1..=86_400).contains(&seconds)
        {
            problems.push(format!(
                "{label}.interval_seconds: expected 1 to 86400, found {seconds}"
            ));
        }
        if let Some(field) = &self.field
            && field.is_empty()
        {
            problems.push(format!(
                "{label}.field: empty; remove it or name a JSON field"
            ));
        }

        if problems.len() != before {
            return None;
        }
        Some(SecretSpec {
            name: name?,
            kind: kind?,
            store: store?.name.clone(),
            path: path?,
            field: self.field,
            version,
            stage: self.stage,
            target: target?,
            mode: mode?,
            owner,
            encoding: encoding?,
            newline: newline?,
            allow_disk: self.allow_disk.unwrap_or(false),
            interval: self.interval_seconds.map(std::time::Duration::from_secs),
        })
    }

    fn checked_name(&self, label: &str, problems: &mut Vec<String>) -> Option<String> {
        let Some(name) = &self.name else {
            problems.push(format!(
                "{label}.name: missing; name the secret, such as \"database-key\""
            ));
            return None;
        };
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            problems.push(format!(
                "{label}.name: {name:?} is invalid; use 1 to 64 letters, digits, '-' or '_'"
            ));
            return None;
        }
        Some(name.clone())
    }

    fn checked_path(
        &self,
        label: &str,
        store: Option<&StoreKind>,
        problems: &mut Vec<String>,
    ) -> Option<String> {
        let Some(path) = self.path.clone().filter(|path| !path.is_empty()) else {
            problems.push(format!(
                "{label}.path: missing; set the secret's location in its store"
            ));
            return None;
        };
        match store {
            Some(StoreKind::Vault(_))
                if path.starts_with('/')
                    || path.split('/').any(|part| part == ".." || part == ".") =>
            {
                problems.push(format!("{label}.path: {path:?} must be mount/secret, such as \"secret/portainer\", without a leading '/' or '..'"));
            }
            Some(StoreKind::Azure(_))
                if backends::azure::check_secret_name(label, &path).is_err() =>
            {
                problems.push(format!("{label}.path: {path:?} is not a Key Vault secret name; use 1 to 127 letters, digits and hyphens"));
            }
            Some(StoreKind::Gcp(_)) if backends::gcp::check_secret_path(label, &path).is_err() => {
                problems.push(format!("{label}.path: {path:?} is not a Secret Manager secret; write the secret ID, such as \"portainer-db-key\", or \"projects/PROJECT/secrets/ID\""));
            }
            _ => {}
        }
        if self.stage.is_some() && !matches!(store, Some(StoreKind::Aws(_))) {
            problems.push(format!(
                "{label}.stage: applies to aws stores only; remove it"
            ));
        }
        Some(path)
    }

    fn checked_version(
        &self,
        label: &str,
        store: Option<&StoreKind>,
        problems: &mut Vec<String>,
    ) -> Option<String> {
        let version = match &self.version {
            None => return None,
            Some(toml::Value::Integer(number)) => number.to_string(),
            Some(toml::Value::String(text)) => text.clone(),
            Some(other) => {
                problems.push(format!(
                    "{label}.version: expected a string or integer, found {}",
                    other.type_str()
                ));
                return None;
            }
        };
        match store {
            Some(StoreKind::Vault(_))
                if version.parse::<u64>().map_or(true, |number| number == 0) =>
            {
                problems.push(format!(
                    "{label}.version: {version:?} is not a KV v2 version number (1, 2, ...)"
                ));
            }
            Some(StoreKind::Aws(_)) if self.stage.is_some() => {
                problems.push(format!(
                    "{label}.version: set either version or stage, not both"
                ));
            }
            Some(StoreKind::File) => {
                problems.push(format!(
                    "{label}.version: file stores have no versions; remove it"
                ));
            }
            Some(StoreKind::Azure(_))
                if backends::azure::check_version(label, "", &version).is_err() =>
            {
                problems.push(format!("{label}.version: {version:?} is not a Key Vault version id; use the 32-character id that Key Vault lists"));
            }
            Some(StoreKind::Gcp(_))
                if backends::gcp::check_version(label, "", &version).is_err() =>
            {
                problems.push(format!("{label}.version: {version:?} is not a Secret Manager version; use a version number (1, 2, ...) or an alias"));
            }
            _ => {}
        }
        Some(version)
    }
}

fn parse_kind(label: &str, kind: Option<&str>, problems: &mut Vec<String>) -> Option<SecretKind> {
    match kind {
        Some("encryption-key") => Some(SecretKind::EncryptionKey),
        Some("admin-password") => Some(SecretKind::AdminPassword),
        Some("generic") => Some(SecretKind::Generic),
        Some(other) => {
            problems.push(format!("{label}.kind: expected \"encryption-key\", \"admin-password\" or \"generic\", found {other:?}"));
            None
        }
        None => {
            problems.push(format!(
                "{label}.kind: missing; set \"encryption-key\", \"admin-password\" or \"generic\""
            ));
            None
        }
    }
}

fn choose_store<'a>(
    label: &str,
    store: Option<&str>,
    stores: &'a BTreeMap<String, StoreSpec>,
    problems: &mut Vec<String>,
) -> Option<&'a StoreSpec> {
    let known = stores
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    match store {
        Some(name) => {
            let found = stores.get(name);
            if found.is_none() {
                problems.push(format!(
                    "{label}.store: no store named {name:?}; defined stores: [{known}]"
                ));
            }
            found
        }
        None if stores.len() == 1 => stores.values().next(),
        // Every store is invalid and already reported; naming none here adds nothing.
        None if stores.is_empty() => None,
        None => {
            problems.push(format!(
                "{label}.store: missing; with several stores, name one of [{known}]"
            ));
            None
        }
    }
}

fn checked_target(
    label: &str,
    target: Option<&Path>,
    problems: &mut Vec<String>,
) -> Option<PathBuf> {
    let Some(target) = target else {
        problems.push(format!(
            "{label}.target: missing; set the file to write, such as \"/run/secrets/portainer\""
        ));
        return None;
    };
    let has_parent_component = target.components().any(|part| part == Component::ParentDir);
    let ends_with_slash = target.as_os_str().as_encoded_bytes().ends_with(b"/");
    if !target.is_absolute()
        || has_parent_component
        || ends_with_slash
        || target.file_name().is_none()
    {
        problems.push(format!(
            "{label}.target: {target:?} must be an absolute file path without '..'"
        ));
        return None;
    }
    Some(target.to_path_buf())
}

fn parse_mode(
    label: &str,
    mode: Option<&toml::Value>,
    kind: Option<SecretKind>,
    problems: &mut Vec<String>,
) -> Option<u32> {
    let mode = match mode {
        None => return Some(DEFAULT_MODE),
        Some(toml::Value::String(text)) => u32::from_str_radix(text, 8)
            .ok()
            .filter(|_| !text.is_empty()),
        Some(toml::Value::Integer(number)) => u32::try_from(*number).ok(),
        Some(_) => None,
    };
    let Some(mode) = mode.filter(|mode| *mode <= 0o777) else {
        problems.push(format!(
            "{label}.mode: expected octal permission bits such as \"0400\" or \"0440\""
        ));
        return None;
    };
    if mode & 0o400 == 0 {
        problems.push(format!("{label}.mode: {mode:04o} does not let the owner read the file; Portainer could not read it"));
    }
    let secret = matches!(
        kind,
        Some(SecretKind::EncryptionKey | SecretKind::AdminPassword)
    );
    if secret && mode & 0o007 != 0 {
        problems.push(format!("{label}.mode: {mode:04o} gives access to every user; use \"0400\" or \"0440\" with owner"));
    }
    Some(mode)
}

fn parse_owner(label: &str, owner: &str, problems: &mut Vec<String>) -> Option<Owner> {
    let parsed = owner.split_once(':').and_then(|(uid, gid)| {
        Some(Owner {
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
        })
    });
    if parsed.is_none() {
        problems.push(format!(
            "{label}.owner: {owner:?} is not numeric uid:gid such as \"1000:1000\""
        ));
    }
    parsed
}

fn parse_encoding(
    label: &str,
    encoding: Option<&str>,
    problems: &mut Vec<String>,
) -> Option<Encoding> {
    match encoding {
        None | Some("raw") => Some(Encoding::Raw),
        Some("base64") => Some(Encoding::Base64),
        Some(other) => {
            problems.push(format!(
                "{label}.encoding: expected \"raw\" or \"base64\", found {other:?}"
            ));
            None
        }
    }
}

fn parse_newline(
    label: &str,
    newline: Option<&str>,
    problems: &mut Vec<String>,
) -> Option<NewlinePolicy> {
    match newline {
        None | Some("exact") => Some(NewlinePolicy::Exact),
        Some("strip-one") => Some(NewlinePolicy::StripOne),
        Some("ensure-one") => Some(NewlinePolicy::EnsureOne),
        Some(other) => {
            problems.push(format!("{label}.newline: expected \"exact\", \"strip-one\" or \"ensure-one\", found {other:?}"));
            None
        }
    }
}
