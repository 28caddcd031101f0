//! Runs the agent binary with a clean environment and captures its output.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::paths;

/// Maximum time a single agent run may take before the test kills it and fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// An agent command line and its environment.
///
/// The child starts from an empty environment. The harness always adds
/// `AWS_EC2_METADATA_DISABLED=true`, so no credential chain probes the instance
/// metadata address. It sends AWS calls without an endpoint, Entra ID calls and GCE
/// metadata calls to a closed loopback port. Every request to a host other than
/// 127.0.0.1, ::1 or localhost goes through a proxy on a closed loopback port, so it
/// fails. `AWS_CONFIG_FILE` and `AWS_SHARED_CREDENTIALS_FILE` point at a missing
/// file, so a developer's profile never leaks in. A test may override any of them
/// with [`Agent::env`].
#[derive(Debug)]
pub struct Agent {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

/// Exit code, output and duration of one agent run.
#[derive(Debug, Clone)]
pub struct AgentOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Agent {
    /// `portainer-key-agent fetch --config CONFIG`.
    pub fn fetch(config: &Path) -> Self {
        Self::new(["fetch", "--config"]).arg(config)
    }

    /// `portainer-key-agent check --config CONFIG`.
    pub fn check(config: &Path) -> Self {
        Self::new(["check", "--config"]).arg(config)
    }

    /// Any command line.
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let envs = vec![
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            // Any AWS call without an explicit endpoint goes to a closed loopback
            // port instead of a public AWS host; tests point the ones they mean at moto.
            ("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:9".into()),
            ("AWS_CONFIG_FILE".into(), "/nonexistent/aws-config".into()),
            (
                "AWS_SHARED_CREDENTIALS_FILE".into(),
                "/nonexistent/aws-credentials".into(),
            ),
            // Entra ID and the GCE metadata server default to cloud addresses; both
            // point at a closed loopback port unless a test names a double.
            ("AZURE_AUTHORITY_HOST".into(), "https://127.0.0.1:9".into()),
            ("GCE_METADATA_HOST".into(), "127.0.0.1:9".into()),
            // Every other request that would leave the loopback address (a default
            // endpoint such as secretmanager.googleapis.com) goes to a proxy on a
            // closed loopback port and fails, without a DNS lookup.
            ("HTTPS_PROXY".into(), "http://127.0.0.1:9".into()),
            ("HTTP_PROXY".into(), "http://127.0.0.1:9".into()),
            ("NO_PROXY".into(), "127.0.0.1,::1,localhost".into()),
        ];
        Self {
            args: args
                .into_iter()
                .map(|arg| arg.as_ref().to_owned())
                .collect(),
            envs,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds `--log-level trace`.
    pub fn trace(self) -> Self {
        self.arg("--log-level").arg("trace")
    }

    /// Sets an environment variable, replacing an earlier value of the same name.
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        let name = name.as_ref().to_owned();
        self.envs.retain(|(existing, _)| *existing != name);
        self.envs.push((name, value.as_ref().to_owned()));
        self
    }

    /// Removes an environment variable that the harness sets by default.
    pub fn env_remove(mut self, name: impl AsRef<OsStr>) -> Self {
        let name = name.as_ref();
        self.envs.retain(|(existing, _)| existing != name);
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new(paths::agent_binary());
        command.env_clear().args(&self.args).stdin(Stdio::null());
        for (name, value) in &self.envs {
            command.env(name, value);
        }
        command
    }

    /// Runs the agent to completion.
    ///
    /// # Panics
    /// When it does not finish within [`RUN_TIMEOUT`]; it is killed first.
    pub fn run(&self) -> AgentOutput {
        let started = Instant::now();
        let mut child = self.spawn();
        let stdout = collect(child.stdout.take().expect("stdout is piped"));
        let stderr = collect(child.stderr.take().expect("stderr is piped"));
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for agent") {
                break status;
            }
            if started.elapsed() > RUN_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "agent {:?} did not finish within {RUN_TIMEOUT:?}",
                    self.args
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        let elapsed = started.elapsed();
        AgentOutput {
            status,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
            elapsed,
        }
    }

    /// Starts the agent with piped stdout and stderr. The caller waits for it or kills it.
    pub fn spawn(&self) -> Child {
        self.command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start the agent: {error}"))
    }
}

fn collect(mut stream: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buffer = Vec::new();
        // A read error ends the capture; whatever arrived before it is kept.
        let _ = stream.read_to_end(&mut buffer);
        buffer
    })
}

impl AgentOutput {
    /// Exit code, or None when a signal ended the process.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout followed by stderr, as text.
    pub fn log(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }

    /// stdout followed by stderr, as bytes, for searching binary secrets.
    pub fn log_bytes(&self) -> Vec<u8> {
        [self.stdout.as_slice(), self.stderr.as_slice()].concat()
    }

    /// Panics with the agent's output unless it exited with `expected`.
    pub fn assert_exit(&self, expected: i32) {
        assert_eq!(
            self.code(),
            Some(expected),
            "agent exited with {} instead of {expected}; output:\n{}",
            self.status,
            self.log()
        );
    }
}

/// Writes `toml` to `dir/agent.toml` and returns the path.
pub fn write_config(dir: &Path, toml: &str) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(&path, toml).expect("write agent configuration");
    path
}
