//! Portainer key agent: configuration, value rules, safe file placement and the
//! run modes behind the `portainer-key-agent` binary.

pub mod check;
pub mod cli;
pub mod config;
pub mod db;
pub mod exit;
pub mod fetch;
pub mod hardening;
pub mod logging;
pub mod retry;
pub mod value;
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

    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "failed to start the async runtime");
            return ExitStatus::Internal;
        }
    };

    let result = runtime.block_on(async {
        match command {
            Command::Fetch(source) => fetch::run(&source.load()?).await,
            Command::Check { source, connect } => check::run(&source.load()?, connect).await,
            Command::Db(_) => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(()) => ExitStatus::Success,
        Err(error) => {
            let status = error.exit_status();
            tracing::error!(exit_status = status.code(), "{error}");
            status
        }
    }
}

fn run_db(args: db::cli::DbArgs) -> ExitStatus {
    match db::cli::run(args) {
        Ok(()) => ExitStatus::Success,
        Err(error) => {
            let code = error.exit_code();
            tracing::error!(exit_status = code, "{error}");
            ExitStatus::from_code(code)
        }
    }
}
