//! Portainer key agent: configuration, value rules, safe file placement and the
//! run modes behind the `portainer-key-agent` binary.

pub mod candidates;
pub mod check;
pub mod cli;
pub mod config;
pub mod db;
pub mod exit;
pub mod fetch;
pub mod hardening;
pub mod logging;
pub mod retry;
pub mod rotation;
pub mod swarm;
pub mod value;
pub mod watch;
pub mod writer;

use cli::{Cli, Command};
use exit::ExitStatus;

/// Runs a parsed command line and returns the exit status.
pub fn run(cli: Cli) -> ExitStatus {
    logging::init(cli.log_level, cli.log_format);
    hardening::disable_core_dumps();

    let command = match cli.command {
        Command::Db(args) => return run_db(args),
        command => command,
    };

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "failed to start the async runtime");
            return ExitStatus::Internal;
        }
    };

    runtime.block_on(async {
        match command {
            Command::Fetch {
                source,
                verify_db,
                exec,
            } => {
                let result = async { fetch::run(&source.load()?, verify_db.as_deref()).await };
                match finish(result.await, fetch::RunError::exit_status) {
                    ExitStatus::Success if !exec.is_empty() => exec_command(&exec),
                    status => status,
                }
            }
            Command::Check { source, connect } => {
                let result = async { check::run(&source.load()?, connect).await };
                finish(result.await, fetch::RunError::exit_status)
            }
            Command::Watch { source, exit_when } => {
                let options = watch::WatchOptions {
                    config_path: source.config.clone(),
                    exit_when,
                };
                let result = async { watch::run(source.load()?, options).await };
                finish(result.await, fetch::RunError::exit_status)
            }
            Command::RotateKey {
                source,
                secret,
                data_dir,
                dry_run,
                backup,
            } => {
                let options = rotation::RotateKeyOptions {
                    secret,
                    data_dir,
                    dry_run,
                    backup,
                };
                let result = async {
                    let config = source.load().map_err(rotation::RotateKeyError::from)?;
                    rotation::run(&config, &options).await
                };
                finish(result.await, rotation::RotateKeyError::exit_status)
            }
            Command::Swarm(args) => match args.command {
                swarm::SwarmCommand::Sync(sync) => {
                    finish(swarm::run(&sync).await, swarm::SwarmError::exit_status)
                }
            },
            Command::Db(_) => unreachable!("db runs before the async runtime starts"),
        }
    })
}

/// Replaces the agent with `command`; returns only when that fails. The command
/// gets the agent's environment without its own `PORTAINER_KEY_AGENT_*` settings.
fn exec_command(command: &[std::ffi::OsString]) -> ExitStatus {
    use std::os::unix::process::CommandExt;

    let mut process = std::process::Command::new(&command[0]);
    process.args(&command[1..]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PORTAINER_KEY_AGENT_") {
            process.env_remove(name);
        }
    }
    tracing::info!(program = %command[0].to_string_lossy(), "starting the command after fetch");
    let error = process.exec();
    tracing::error!(program = %command[0].to_string_lossy(), %error, "failed to start the command after fetch; check the path and that it is executable");
    if error.kind() == std::io::ErrorKind::NotFound {
        ExitStatus::NotFound
    } else {
        ExitStatus::Internal
    }
}

/// Logs a failure once, as the last line, and returns its exit status.
fn finish<E: std::fmt::Display>(
    result: Result<(), E>,
    status_of: fn(&E) -> ExitStatus,
) -> ExitStatus {
    match result {
        Ok(()) => ExitStatus::Success,
        Err(error) => {
            let status = status_of(&error);
            tracing::error!(exit_status = status.code(), "{error}");
            status
        }
    }
}

/// Formats an error followed by each underlying cause, such as the I/O error
/// behind a failed write. The `db` errors carry no secret at any level.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    message
}

fn run_db(args: db::cli::DbArgs) -> ExitStatus {
    match db::cli::run(args) {
        Ok(()) => ExitStatus::Success,
        Err(error) => {
            let code = error.exit_code();
            tracing::error!(exit_status = code, "{}", with_causes(&error));
            ExitStatus::from_code(code)
        }
    }
}
