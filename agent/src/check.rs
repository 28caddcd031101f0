//! `check`: validate the configuration and, with `--connect`, every secret's value.

use tokio::time::Instant;

use crate::config::Config;
use crate::fetch::{RunError, build_stores, fetch_all, log_start, placement};
use crate::writer::{Medium, warn_disk};

/// Validates `config`; with `connect`, authenticates, reads and validates every secret
/// without writing anything, and prints one line per secret to stdout.
pub async fn run(config: &Config, connect: bool) -> Result<(), RunError> {
    log_start(config, "check");
    for secret in &config.secrets {
        let placement = placement(secret);
        match placement.check() {
            Ok(Medium::Memory) => {}
            Ok(Medium::Disk) => warn_disk(placement.directory()),
            Err(error) => {
                tracing::warn!(secret = %secret.name, %error, "the target cannot be written on this machine");
            }
        }
    }
    if !connect {
        print_line(&format!(
            "configuration valid: {} store(s), {} secret(s); add --connect to read them",
            config.stores.len(),
            config.secrets.len()
        ));
        return Ok(());
    }

    let stores = build_stores(config)?;
    let deadline = Instant::now() + config.deadline;
    let values = tokio::time::timeout_at(
        deadline + crate::fetch::DEADLINE_GRACE,
        fetch_all(config, &stores, None, deadline),
    )
    .await
    .map_err(|_| RunError::Timeout {
        deadline_seconds: config.deadline.as_secs(),
    })??;

    for (secret, prepared) in config.secrets.iter().zip(&values) {
        print_line(&format!(
            "ok {} ({}) from store {} path {:?}: version {}, {} bytes, target {}",
            secret.name,
            secret.kind.name(),
            secret.store,
            secret.path,
            prepared.version,
            prepared.bytes.len(),
            secret.target.display()
        ));
    }
    Ok(())
}

#[allow(
    clippy::print_stdout,
    reason = "check reports its result on stdout for scripts"
)]
fn print_line(line: &str) {
    println!("{line}");
}
