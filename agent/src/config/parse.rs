//! Walks a TOML table into a [`Config`], collecting every problem.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::secret::SecretToml;
use super::store::StoreToml;
use super::watch::{WatchSpec, WatchToml};
use super::{Config, DEFAULT_DEADLINE, SecretSpec, StoreSpec};

const TOP_LEVEL_KEYS: &[&str] = &["deadline_seconds", "stores", "secrets", "watch"];

pub(super) fn config(mut table: toml::Table, problems: &mut Vec<String>) -> Option<Config> {
    for key in table.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            problems.push(format!(
                "{key}: unknown key; expected one of {}",
                TOP_LEVEL_KEYS.join(", ")
            ));
        }
    }

    let deadline = deadline(table.remove("deadline_seconds"), problems);
    let stores = stores(table.remove("stores"), problems);
    let secrets = secrets(table.remove("secrets"), &stores, problems);
    check_unique_targets(&secrets, problems);
    let names: Vec<String> = secrets.iter().map(|secret| secret.name.clone()).collect();
    let watch = match table.remove("watch") {
        None => WatchSpec::default(),
        Some(value) => typed::<WatchToml>("watch", value, problems)
            .map(|raw| raw.validate(&names, problems))
            .unwrap_or_default(),
    };
    Some(Config {
        deadline,
        stores,
        secrets,
        watch,
    })
}

fn deadline(value: Option<toml::Value>, problems: &mut Vec<String>) -> Duration {
    match value {
        None => DEFAULT_DEADLINE,
        Some(toml::Value::Integer(seconds)) if (1..=86_400).contains(&seconds) => {
            Duration::from_secs(seconds.unsigned_abs())
        }
        Some(other) => {
            problems.push(format!(
                "deadline_seconds: expected 1 to 86400 seconds, found {other}"
            ));
            DEFAULT_DEADLINE
        }
    }
}

fn stores(value: Option<toml::Value>, problems: &mut Vec<String>) -> BTreeMap<String, StoreSpec> {
    let mut stores = BTreeMap::new();
    let Some(value) = value else {
        problems.push(
            "stores: missing; add a [stores.NAME] table with type = \"vault\", \"aws\", \"azure\", \"gcp\" or \"file\""
                .to_owned(),
        );
        return stores;
    };
    let toml::Value::Table(table) = value else {
        problems.push("stores: expected tables such as [stores.vault]".to_owned());
        return stores;
    };

    for (name, value) in table {
        let at = format!("stores.{name}");
        let Some(raw) = typed::<StoreToml>(&at, value, problems) else {
            continue;
        };
        if let Some(store) = raw.validate(&name, problems) {
            stores.insert(name, store);
        }
    }
    stores
}

fn secrets(
    value: Option<toml::Value>,
    stores: &BTreeMap<String, StoreSpec>,
    problems: &mut Vec<String>,
) -> Vec<SecretSpec> {
    let items = match value {
        Some(toml::Value::Array(items)) if !items.is_empty() => items,
        Some(toml::Value::Array(_)) | None => {
            problems.push("secrets: missing; add at least one [[secrets]] table".to_owned());
            return Vec::new();
        }
        Some(_) => {
            problems.push("secrets: expected an array of tables, written [[secrets]]".to_owned());
            return Vec::new();
        }
    };

    let mut secrets = Vec::new();
    let mut names = BTreeSet::new();
    for (index, value) in items.into_iter().enumerate() {
        let Some(raw) = typed::<SecretToml>(&format!("secrets[{index}]"), value, problems) else {
            continue;
        };
        let Some(secret) = raw.validate(index, stores, problems) else {
            continue;
        };
        if !names.insert(secret.name.clone()) {
            problems.push(format!(
                "secrets[{index}].name: {:?} is used by an earlier secret; names must be unique",
                secret.name
            ));
        }
        secrets.push(secret);
    }
    secrets
}

fn check_unique_targets(secrets: &[SecretSpec], problems: &mut Vec<String>) {
    let mut seen = BTreeMap::new();
    for secret in secrets {
        if let Some(first) = seen.insert(secret.target.clone(), secret.name.clone()) {
            problems.push(format!(
                "secrets ({}): target {:?} is also the target of {first:?}; give each secret its own file",
                secret.name, secret.target
            ));
        }
    }
}

/// Deserializes one table, reporting unknown keys and type errors under `at`.
fn typed<T: DeserializeOwned>(
    at: &str,
    value: toml::Value,
    problems: &mut Vec<String>,
) -> Option<T> {
    let mut unknown = Vec::new();
    let result = serde_ignored::deserialize(value, |path| unknown.push(path.to_string()));
    for key in unknown {
        problems.push(format!(
            "{at}.{key}: unknown key; check the spelling against --help"
        ));
    }
    match result {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            let error: toml::de::Error = error;
            problems.push(format!("{at}: {}", error.message()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, NewlinePolicy, SecretKind, StoreKind};

    const VALID: &str = r#"
deadline_seconds = 30

[stores.bao]
type = "vault"
address = "http://127.0.0.1:8200"
[stores.bao.auth]
method = "kubernetes"
role = "portainer"

[[secrets]]
name = "database-key"
kind = "encryption-key"
path = "secret/portainer"
field = "key"
target = "/run/secrets/portainer"
newline = "strip-one"
"#;

    fn problems(text: &str) -> Vec<String> {
        Config::from_toml_str(text, "test.toml")
            .expect_err("invalid config")
            .problems
    }

    #[test]
    fn valid_config_parses() {
        let config = Config::from_toml_str(VALID, "test.toml").expect("valid");

        let secret = &config.secrets[0];
        assert_eq!(config.deadline.as_secs(), 30);
        assert_eq!(secret.kind, SecretKind::EncryptionKey);
        assert_eq!(secret.store, "bao");
        assert_eq!(secret.mode, 0o400);
        assert_eq!(secret.newline, NewlinePolicy::StripOne);
        assert!(matches!(config.stores["bao"].kind, StoreKind::Vault(_)));
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
colour = "blue"
[stores.bao]
type = "vault"
adress = "http://x"
[stores.bao.auth]
method = "kubernetes"
[[secrets]]
name = "k"
kind = "key"
path = "secret/x"
target = "relative/path"
mode = "0644"
"#;

        let found = problems(text);

        let joined = found.join("\n");
        assert!(joined.contains("colour: unknown key"), "{joined}");
        assert!(
            joined.contains("stores.bao.adress: unknown key"),
            "{joined}"
        );
        assert!(joined.contains("stores.bao.address: missing"), "{joined}");
        assert!(joined.contains("stores.bao.auth.role: missing"), "{joined}");
        assert!(joined.contains("secrets[0] (k).kind: expected"), "{joined}");
        assert!(joined.contains("secrets[0] (k).target"), "{joined}");
        assert!(found.len() >= 6, "{joined}");
    }

    #[test]
    fn world_readable_key_is_rejected() {
        let text = VALID.replace("newline = \"strip-one\"", "mode = \"0644\"");

        let joined = problems(&text).join("\n");

        assert!(joined.contains("gives access to every user"), "{joined}");
    }

    #[test]
    fn unknown_store_reference_names_defined_stores() {
        let text = VALID.replace("field = \"key\"", "field = \"key\"\nstore = \"vault\"");

        let joined = problems(&text).join("\n");

        assert!(
            joined.contains("no store named \"vault\"; defined stores: [bao]"),
            "{joined}"
        );
    }

    #[test]
    fn duplicate_targets_are_rejected() {
        let text = format!(
            "{VALID}\n[[secrets]]\nname = \"again\"\nkind = \"generic\"\npath = \"secret/y\"\ntarget = \"/run/secrets/portainer\"\n"
        );

        let joined = problems(&text).join("\n");

        assert!(joined.contains("is also the target of"), "{joined}");
    }

    #[test]
    fn syntax_error_is_one_problem() {
        let found = problems("[stores\n");

        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("invalid TOML"), "{found:?}");
    }

    #[test]
    fn stage_on_vault_is_rejected() {
        let text = VALID.replace("field = \"key\"", "stage = \"AWSCURRENT\"");

        let joined = problems(&text).join("\n");

        assert!(
            joined.contains("stage: applies to aws stores only"),
            "{joined}"
        );
    }
}
