//! Command line: subcommands, and flags for the common single-store case.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError};
use crate::exit::EXIT_STATUS_HELP;
use crate::logging::{LogFormat, LogLevel};

/// Delivers Portainer's database encryption key and admin password from a secret store
/// into files on a RAM filesystem.
#[derive(Debug, Parser)]
#[command(name = "portainer-key-agent", version, after_long_help = EXIT_STATUS_HELP)]
pub struct Cli {
    /// Log verbosity of the agent (libraries log warnings only).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "info",
        env = "PORTAINER_KEY_AGENT_LOG_LEVEL"
    )]
    pub log_level: LogLevel,

    /// Log line format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "PORTAINER_KEY_AGENT_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch every secret, validate it, and write it atomically (init container mode).
    #[command(after_long_help = EXIT_STATUS_HELP)]
    Fetch {
        #[command(flatten)]
        source: SourceArgs,

        /// Portainer's data directory: write an encryption key only in a version that
        /// opens its portainer.edb, trying the current, pending and previous versions.
        #[arg(long, value_name = "DATA_DIR", env = "PORTAINER_KEY_AGENT_VERIFY_DB")]
        verify_db: Option<PathBuf>,

        /// After every file is written, replace the agent with this command, such as
        /// `-- /portainer --admin-password-file /run/portainer/admin-password`, for an
        /// image that runs the agent in front of Portainer in the same container.
        #[arg(last = true, value_name = "COMMAND")]
        exec: Vec<std::ffi::OsString>,
    },

    /// Validate the configuration; with --connect, also read and validate every secret
    /// without writing anything.
    #[command(after_long_help = EXIT_STATUS_HELP)]
    Check {
        #[command(flatten)]
        source: SourceArgs,

        /// Authenticate, read and validate every secret; write nothing.
        #[arg(long)]
        connect: bool,
    },

    /// Sidecar mode: deliver every file like fetch, then keep each one current. A new
    /// encryption key is written only once the database opens with it.
    #[command(after_long_help = EXIT_STATUS_HELP)]
    Watch {
        #[command(flatten)]
        source: SourceArgs,

        /// Stop when the main container's process exits: pid-file:PATH or
        /// process:NAME (needs a shared process namespace). For Jobs.
        #[arg(long, value_name = "pid-file:PATH|process:NAME", value_parser = parse_exit_when, env = "PORTAINER_KEY_AGENT_EXIT_WHEN")]
        exit_when: Option<crate::watch::ExitWhen>,
    },

    /// Rotate Portainer's database key: obtain a new key (pending in the store, or
    /// generated and stored as pending), re-encrypt the database, then promote the new
    /// key. Portainer must be stopped. Safe to run again after an interruption.
    #[command(after_long_help = EXIT_STATUS_HELP)]
    RotateKey {
        #[command(flatten)]
        source: SourceArgs,

        /// Name of the encryption-key secret, when the configuration has several.
        #[arg(long)]
        secret: Option<String>,

        /// Portainer's data directory, holding portainer.edb.
        #[arg(long, value_name = "DATA_DIR", default_value = "/data")]
        data_dir: PathBuf,

        /// Show the plan; change nothing in the store or the database.
        #[arg(long)]
        dry_run: bool,

        /// Keep a copy of the database under the old key at this path.
        #[arg(long, value_name = "FILE")]
        backup: Option<PathBuf>,
    },

    /// Docker Swarm: deliver every secret as a Swarm secret of Portainer's service.
    Swarm(crate::swarm::SwarmArgs),

    /// Offline tools for Portainer's database: verify a key, rotate it, encrypt a
    /// plaintext database, reset the admin password. Portainer must be stopped.
    #[command(after_long_help = EXIT_STATUS_HELP)]
    Db(crate::db::cli::DbArgs),
}

/// Source of the configuration: a file, or the flags below.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// TOML configuration file. Excludes the single-store flags.
    #[arg(long, short = 'c', env = "PORTAINER_KEY_AGENT_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub quick: QuickArgs,
}

/// Store type for the single-store flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreType {
    Vault,
    Aws,
    File,
}

/// Vault login method for the single-store flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VaultMethod {
    Kubernetes,
    TokenFile,
}

/// Single-store configuration without a file: one store, the key and optionally the
/// admin password. Every flag has a `PORTAINER_KEY_AGENT_*` environment variable.
#[derive(Debug, Args)]
#[command(next_help_heading = "Single-store flags (instead of --config)")]
pub struct QuickArgs {
    /// Store type.
    #[arg(long, value_enum, env = "PORTAINER_KEY_AGENT_STORE")]
    pub store: Option<StoreType>,

    /// Vault or OpenBao URL, such as https://vault.example:8200.
    #[arg(long, env = "PORTAINER_KEY_AGENT_VAULT_ADDRESS")]
    pub vault_address: Option<String>,

    /// Vault namespace, sent on every request.
    #[arg(long, env = "PORTAINER_KEY_AGENT_VAULT_NAMESPACE")]
    pub vault_namespace: Option<String>,

    /// Vault login method.
    #[arg(
        long,
        value_enum,
        default_value = "kubernetes",
        env = "PORTAINER_KEY_AGENT_VAULT_AUTH"
    )]
    pub vault_auth: VaultMethod,

    /// Vault role for Kubernetes auth.
    #[arg(long, env = "PORTAINER_KEY_AGENT_VAULT_ROLE")]
    pub vault_role: Option<String>,

    /// Mount path of the Kubernetes auth method [default: kubernetes].
    #[arg(long, env = "PORTAINER_KEY_AGENT_VAULT_AUTH_MOUNT")]
    pub vault_auth_mount: Option<String>,

    /// Service-account token file, re-read at every login
    /// [default: /var/run/secrets/kubernetes.io/serviceaccount/token].
    #[arg(long, env = "PORTAINER_KEY_AGENT_VAULT_JWT_FILE")]
    pub vault_jwt_file: Option<PathBuf>,

    /// File holding a Vault token, for --vault-auth token-file.
    #[arg(long, env = "PORTAINER_KEY_AGENT_VAULT_TOKEN_FILE")]
    pub vault_token_file: Option<PathBuf>,

    /// PEM bundle of CA certificates trusted in addition to the system's.
    #[arg(long, env = "PORTAINER_KEY_AGENT_VAULT_CA_CERT")]
    pub vault_ca_cert: Option<PathBuf>,

    /// KV engine version (1 or 2); detected from the mount when absent.
    #[arg(long, env = "PORTAINER_KEY_AGENT_VAULT_KV_VERSION")]
    pub vault_kv_version: Option<u8>,

    /// AWS region [default: AWS_REGION].
    #[arg(long, env = "PORTAINER_KEY_AGENT_AWS_REGION")]
    pub aws_region: Option<String>,

    /// Secrets Manager endpoint URL, for VPC endpoints.
    #[arg(long, env = "PORTAINER_KEY_AGENT_AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,

    /// Key location: Vault mount/path, AWS secret name or ARN, or a file path.
    #[arg(long, env = "PORTAINER_KEY_AGENT_KEY_PATH")]
    pub key_path: Option<String>,

    /// JSON field holding the key.
    #[arg(long, env = "PORTAINER_KEY_AGENT_KEY_FIELD")]
    pub key_field: Option<String>,

    /// Key version pin (Vault KV v2 version or AWS VersionId).
    #[arg(long, env = "PORTAINER_KEY_AGENT_KEY_VERSION")]
    pub key_version: Option<String>,

    /// Key file to write [default: /run/secrets/portainer; Business Edition chart:
    /// /run/portainer/portainer].
    #[arg(long, env = "PORTAINER_KEY_AGENT_KEY_TARGET")]
    pub key_target: Option<PathBuf>,

    /// Newline policy of the key: exact, strip-one or ensure-one [default: exact].
    #[arg(long, env = "PORTAINER_KEY_AGENT_KEY_NEWLINE")]
    pub key_newline: Option<String>,

    /// Encoding of the stored key: raw or base64 [default: raw].
    #[arg(long, env = "PORTAINER_KEY_AGENT_KEY_ENCODING")]
    pub key_encoding: Option<String>,

    /// Admin password location; omit to deliver the key only.
    #[arg(long, env = "PORTAINER_KEY_AGENT_PASSWORD_PATH")]
    pub password_path: Option<String>,

    /// JSON field holding the admin password.
    #[arg(long, env = "PORTAINER_KEY_AGENT_PASSWORD_FIELD")]
    pub password_field: Option<String>,

    /// Admin password file to write [default: /run/portainer/admin-password].
    #[arg(long, env = "PORTAINER_KEY_AGENT_PASSWORD_TARGET")]
    pub password_target: Option<PathBuf>,

    /// Owner of the written files as numeric uid:gid [default: the agent's own].
    #[arg(long, env = "PORTAINER_KEY_AGENT_OWNER")]
    pub owner: Option<String>,

    /// Permission bits of the written files, in octal [default: 0400].
    #[arg(long, env = "PORTAINER_KEY_AGENT_MODE")]
    pub mode: Option<String>,

    /// Accept target directories that are not tmpfs or ramfs (logs a warning).
    #[arg(long, env = "PORTAINER_KEY_AGENT_ALLOW_DISK")]
    pub allow_disk: bool,

    /// Total time for fetching and writing, in seconds [default: 60].
    #[arg(long, env = "PORTAINER_KEY_AGENT_DEADLINE_SECONDS")]
    pub deadline_seconds: Option<i64>,

    /// watch: seconds between version checks of each secret [default: 60].
    #[arg(long, env = "PORTAINER_KEY_AGENT_WATCH_INTERVAL_SECONDS")]
    pub watch_interval_seconds: Option<i64>,

    /// watch: Portainer's data directory, which enables the rotation guard.
    #[arg(long, env = "PORTAINER_KEY_AGENT_DATA_DIR")]
    pub watch_data_dir: Option<PathBuf>,

    /// watch: status endpoint address, IP:PORT or unix:/path (/healthz, /readyz,
    /// /metrics).
    #[arg(long, env = "PORTAINER_KEY_AGENT_STATUS_LISTEN")]
    pub status_listen: Option<String>,
}

const DEFAULT_KEY_TARGET: &str = "/run/secrets/portainer";
const DEFAULT_PASSWORD_TARGET: &str = "/run/portainer/admin-password";

impl SourceArgs {
    /// Loads the configuration file, or builds one from the single-store flags.
    pub fn load(&self) -> Result<Config, ConfigError> {
        match (&self.config, self.quick.store) {
            (Some(path), None) => Config::from_file(path),
            (Some(path), Some(_)) => Err(ConfigError {
                source: path.display().to_string(),
                problems: vec![
                    "--config and --store are both set; use one or the other".to_owned(),
                ],
            }),
            (None, Some(store)) => {
                Config::from_table(self.quick.table(store), "command-line flags")
            }
            (None, None) => Err(ConfigError {
                source: "command-line flags".to_owned(),
                problems: vec![
                    "no configuration: pass --config FILE, or --store with --key-path (see --help)"
                        .to_owned(),
                ],
            }),
        }
    }
}

impl QuickArgs {
    /// Builds the TOML table that the flags stand for, so one parser validates both.
    fn table(&self, store: StoreType) -> toml::Table {
        let mut table = toml::Table::new();
        if let Some(seconds) = self.deadline_seconds {
            table.insert("deadline_seconds".into(), seconds.into());
        }
        let mut stores = toml::Table::new();
        stores.insert("main".into(), self.store_table(store).into());
        table.insert("stores".into(), stores.into());

        let mut secrets = vec![
            self.secret_table(
                "database-key",
                "encryption-key",
                self.key_path.as_deref(),
                self.key_field.as_deref(),
                self.key_target
                    .as_deref()
                    .unwrap_or(DEFAULT_KEY_TARGET.as_ref()),
            ),
        ];
        if let Some(version) = &self.key_version {
            secrets[0].insert("version".into(), version.clone().into());
        }
        insert_some(&mut secrets[0], "newline", self.key_newline.as_deref());
        insert_some(&mut secrets[0], "encoding", self.key_encoding.as_deref());
        if self.password_path.is_some() {
            secrets.push(
                self.secret_table(
                    "admin-password",
                    "admin-password",
                    self.password_path.as_deref(),
                    self.password_field.as_deref(),
                    self.password_target
                        .as_deref()
                        .unwrap_or(DEFAULT_PASSWORD_TARGET.as_ref()),
                ),
            );
        }
        let secrets: Vec<toml::Value> = secrets.into_iter().map(toml::Value::Table).collect();
        table.insert("secrets".into(), secrets.into());
        let watch = self.watch_table();
        if !watch.is_empty() {
            table.insert("watch".into(), watch.into());
        }
        table
    }

    fn watch_table(&self) -> toml::Table {
        let mut watch = toml::Table::new();
        if let Some(seconds) = self.watch_interval_seconds {
            watch.insert("interval_seconds".into(), seconds.into());
        }
        insert_path(&mut watch, "data_dir", self.watch_data_dir.as_deref());
        insert_some(&mut watch, "status_listen", self.status_listen.as_deref());
        watch
    }

    fn store_table(&self, store: StoreType) -> toml::Table {
        let mut table = toml::Table::new();
        match store {
            StoreType::Vault => {
                table.insert("type".into(), "vault".into());
                insert_some(&mut table, "address", self.vault_address.as_deref());
                insert_some(&mut table, "namespace", self.vault_namespace.as_deref());
                insert_path(&mut table, "ca_cert", self.vault_ca_cert.as_deref());
                if let Some(version) = self.vault_kv_version {
                    table.insert("kv_version".into(), i64::from(version).into());
                }
                table.insert("auth".into(), self.vault_auth_table().into());
            }
            StoreType::Aws => {
                table.insert("type".into(), "aws".into());
                insert_some(&mut table, "region", self.aws_region.as_deref());
                insert_some(&mut table, "endpoint_url", self.aws_endpoint_url.as_deref());
            }
            StoreType::File => {
                table.insert("type".into(), "file".into());
            }
        }
        table
    }

    fn vault_auth_table(&self) -> toml::Table {
        let mut auth = toml::Table::new();
        match self.vault_auth {
            VaultMethod::Kubernetes => {
                auth.insert("method".into(), "kubernetes".into());
                insert_some(&mut auth, "role", self.vault_role.as_deref());
                insert_some(&mut auth, "mount", self.vault_auth_mount.as_deref());
                insert_path(&mut auth, "token_path", self.vault_jwt_file.as_deref());
            }
            VaultMethod::TokenFile => {
                auth.insert("method".into(), "token-file".into());
                insert_path(&mut auth, "path", self.vault_token_file.as_deref());
            }
        }
        auth
    }

    fn secret_table(
        &self,
        name: &str,
        kind: &str,
        path: Option<&str>,
        field: Option<&str>,
        target: &std::path::Path,
    ) -> toml::Table {
        let mut table = toml::Table::new();
        table.insert("name".into(), name.into());
        table.insert("kind".into(), kind.into());
        insert_some(&mut table, "path", path);
        insert_some(&mut table, "field", field);
        insert_path(&mut table, "target", Some(target));
        insert_some(&mut table, "owner", self.owner.as_deref());
        insert_some(&mut table, "mode", self.mode.as_deref());
        if self.allow_disk {
            table.insert("allow_disk".into(), true.into());
        }
        table
    }
}

fn parse_exit_when(text: &str) -> Result<crate::watch::ExitWhen, String> {
    match text.split_once(':') {
        Some(("pid-file", path)) if !path.is_empty() => {
            Ok(crate::watch::ExitWhen::PidFile(PathBuf::from(path)))
        }
        Some(("process", name)) if !name.is_empty() => {
            Ok(crate::watch::ExitWhen::ProcessName(name.to_owned()))
        }
        _ => Err(format!(
            "expected pid-file:PATH or process:NAME, found {text:?}"
        )),
    }
}

fn insert_some(table: &mut toml::Table, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        table.insert(key.into(), value.into());
    }
}

fn insert_path(table: &mut toml::Table, key: &str, value: Option<&std::path::Path>) {
    if let Some(value) = value {
        table.insert(key.into(), value.to_string_lossy().into_owned().into());
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::config::SecretKind;

    fn parse(arguments: &[&str]) -> Result<Config, ConfigError> {
        let cli = Cli::try_parse_from(arguments).expect("arguments parse");
        match cli.command {
            Command::Fetch { source, .. } => source.load(),
            Command::Check { source, .. } => source.load(),
            Command::RotateKey { source, .. } | Command::Watch { source, .. } => source.load(),
            Command::Swarm(crate::swarm::SwarmArgs {
                command: crate::swarm::SwarmCommand::Sync(sync),
            }) => sync.source.load(),
            Command::Db(_) => panic!("db takes no store configuration"),
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_build_key_and_password() {
        let config = parse(&[
            "portainer-key-agent",
            "fetch",
            "--store",
            "vault",
            "--vault-address",
            "http://127.0.0.1:8200",
            "--vault-role",
            "portainer",
            "--key-path",
            "secret/portainer",
            "--key-field",
            "key",
            "--password-path",
            "secret/portainer",
            "--password-field",
            "password",
        ])
        .expect("valid flags");

        assert_eq!(config.secrets.len(), 2);
        assert_eq!(config.secrets[0].kind, SecretKind::EncryptionKey);
        assert_eq!(config.secrets[0].target, PathBuf::from(DEFAULT_KEY_TARGET));
        assert_eq!(
            config.secrets[1].target,
            PathBuf::from(DEFAULT_PASSWORD_TARGET)
        );
    }

    #[test]
    fn flags_report_missing_values_together() {
        let error =
            parse(&["portainer-key-agent", "fetch", "--store", "vault"]).expect_err("incomplete");

        let joined = error.problems.join("\n");
        assert!(joined.contains("address: missing"), "{joined}");
        assert!(joined.contains("role: missing"), "{joined}");
        assert!(joined.contains("path: missing"), "{joined}");
    }

    #[test]
    fn watch_flags_build_watch_settings() {
        let config = parse(&[
            "portainer-key-agent",
            "watch",
            "--store",
            "file",
            "--key-path",
            "/run/in/key",
            "--watch-data-dir",
            "/data",
            "--status-listen",
            "0.0.0.0:8099",
            "--watch-interval-seconds",
            "30",
        ])
        .expect("valid flags");

        assert_eq!(config.watch.data_dir, Some(PathBuf::from("/data")));
        assert_eq!(config.watch.interval.as_secs(), 30);
        assert!(config.watch.status.is_some());
    }

    #[test]
    fn config_and_store_flags_conflict() {
        let error = parse(&[
            "portainer-key-agent",
            "fetch",
            "--config",
            "x.toml",
            "--store",
            "file",
        ])
        .expect_err("conflict");

        assert!(error.problems[0].contains("use one or the other"));
    }

    #[test]
    fn help_lists_exit_statuses() {
        let help = Cli::command().render_long_help().to_string();

        assert!(help.contains("77  authentication failed"), "{help}");
    }
}
