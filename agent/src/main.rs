//! `portainer-key-agent`: parses the command line and exits with the run's status.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = match portainer_key_agent::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let status = if error.use_stderr() {
                portainer_key_agent::exit::ExitStatus::Usage.code()
            } else {
                0
            };
            let _ = error.print();
            return std::process::ExitCode::from(status);
        }
    };
    std::process::ExitCode::from(portainer_key_agent::run(cli).code())
}
