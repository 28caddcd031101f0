//! Log set-up: text or JSON on stderr, levels for the agent's own code only.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log verbosity of the agent's own code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Installs the global subscriber.
///
/// Libraries (HTTP, TLS, AWS SDK) log at `warn` at most whatever the level, because
/// their debug and trace output can include request bodies and headers. `RUST_LOG` is
/// ignored for the same reason.
pub fn init(level: LogLevel, format: LogFormat) {
    let level = level.directive();
    let filter = EnvFilter::new(format!("warn,portainer_key_agent={level},backends={level}"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // A log write that fails (stderr closed or full) is dropped rather than
        // reported with eprintln!, which would panic and abort the process.
        .log_internal_errors(false);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if installed.is_err() {
        tracing::debug!("a log subscriber was already installed");
    }
}
