//! Configuration: one typed structure, validated as a whole before any network call.
//!
//! A TOML file and the single-secret command-line flags both become a TOML table
//! that goes through the same parser, so both report every problem at once.

mod parse;
mod secret;
mod store;
mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

pub use secret::{Encoding, NewlinePolicy, Owner, SecretKind, SecretSpec};
pub use store::{StoreKind, StoreSpec};
pub use watch::{
    AuditSink, HookAction, HookSpec, PortainerApiSpec, ProcessTarget, StatusListen, WatchSpec,
};

/// Default total time allowed for `fetch`.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Total time for fetching and writing every secret.
    pub deadline: Duration,
    pub stores: BTreeMap<String, StoreSpec>,
    pub secrets: Vec<SecretSpec>,
    /// Sidecar settings; defaults when the file has no `[watch]` table.
    pub watch: WatchSpec,
}

/// Every problem found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Origin of the configuration: a file path or "command-line flags".
    pub source: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        let noun = if count == 1 { "problem" } else { "problems" };
        write!(
            formatter,
            "invalid configuration in {} ({count} {noun}):",
            self.source
        )?;
        for problem in &self.problems {
            write!(formatter, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            source: source.clone(),
            problems: vec![format!(
                "failed to read the file: {error}; pass --config with a readable TOML file"
            )],
        })?;
        let table: toml::Table = text.parse().map_err(|error: toml::de::Error| ConfigError {
            source: source.clone(),
            problems: vec![format!("invalid TOML: {}", error.to_string().trim_end())],
        })?;
        let mut config = Self::from_table(table, &source)?;
        config.resolve_relative_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    /// Makes relative file-store paths relative to the configuration file's directory.
    fn resolve_relative_paths(&mut self, base: &Path) {
        for secret in &mut self.secrets {
            let is_file_store = matches!(self.stores[&secret.store].kind, StoreKind::File);
            if is_file_store && !secret.path.starts_with('/') {
                secret.path = base.join(&secret.path).to_string_lossy().into_owned();
            }
        }
    }

    /// Parses and validates TOML text; `source` names it in errors.
    pub fn from_toml_str(text: &str, source: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text.parse().map_err(|error: toml::de::Error| ConfigError {
            source: source.to_owned(),
            problems: vec![format!("invalid TOML: {}", error.to_string().trim_end())],
        })?;
        Self::from_table(table, source)
    }

    /// Validates a configuration given as a TOML table.
    pub fn from_table(table: toml::Table, source: &str) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let config = parse::config(table, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError {
                source: source.to_owned(),
                problems,
            }),
        }
    }

    /// Returns the store a secret reads from.
    pub fn store_of(&self, secret: &SecretSpec) -> &StoreSpec {
        &self.stores[&secret.store]
    }
}
