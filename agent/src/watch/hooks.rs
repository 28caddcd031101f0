//! Change hooks: signal a process, run a command, or POST to a URL, after a file's
//! content changed. Hooks never receive a secret value.

use std::path::Path;
use std::time::Duration;

use crate::config::{HookAction, HookSpec, ProcessTarget};

/// Description of a change passed to hooks.
#[derive(Clone, Debug)]
pub struct Change<'a> {
    pub secret: &'a str,
    pub version: &'a str,
    pub target: &'a Path,
}

/// Runs every hook that applies to `change.secret`, logging each outcome.
pub async fn run_hooks(hooks: &[HookSpec], client: &reqwest::Client, change: &Change<'_>) {
    for hook in hooks {
        if !hook.secrets.is_empty() && !hook.secrets.iter().any(|name| name == change.secret) {
            continue;
        }
        let outcome = match &hook.action {
            HookAction::Signal { signal, target } => send_signal(*signal, target),
            HookAction::Command { argv, timeout } => run_command(argv, *timeout).await,
            HookAction::Post { url } => post(client, url, change).await,
        };
        match outcome {
            Ok(done) => tracing::info!(
                secret = change.secret,
                version = change.version,
                "hook ran: {done}"
            ),
            Err(error) => tracing::warn!(
                secret = change.secret,
                version = change.version,
                "hook failed: {error}"
            ),
        }
    }
}

fn send_signal(signal: i32, target: &ProcessTarget) -> Result<String, String> {
    let pids = match target {
        ProcessTarget::PidFile(path) => vec![read_pid_file(path)?],
        ProcessTarget::Name(name) => find_processes(name),
    };
    if pids.is_empty() {
        return Err(format!(
            "no process matches {target:?}; share the process namespace with the main container (shareProcessNamespace: true)"
        ));
    }

    let signal = rustix::process::Signal::from_named_raw(signal)
        .ok_or_else(|| format!("unsupported signal {signal}"))?;
    for pid in &pids {
        let process =
            rustix::process::Pid::from_raw(*pid).ok_or_else(|| format!("invalid pid {pid}"))?;
        rustix::process::kill_process(process, signal)
            .map_err(|errno| format!("failed to signal pid {pid}: {errno}"))?;
    }
    Ok(format!("sent {signal:?} to pid {pids:?}"))
}

fn read_pid_file(path: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("failed to read pid file {}: {error}", path.display()))?;
    text.trim()
        .parse()
        .map_err(|_| format!("pid file {} does not contain a process id", path.display()))
}

/// Lists the processes whose command name (`/proc/PID/comm`) is `name`.
pub fn find_processes(name: &str) -> Vec<i32> {
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| u32::try_from(*pid).ok() != Some(own))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

async fn run_command(argv: &[String], timeout: Duration) -> Result<String, String> {
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|error| format!("failed to start {:?}: {error}", argv[0]))?;

    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(format!("{:?} exited with {status}", argv[0])),
        Ok(Ok(status)) => Err(format!("{:?} exited with {status}", argv[0])),
        Ok(Err(error)) => Err(format!("failed to wait for {:?}: {error}", argv[0])),
        Err(_) => {
            let _ = child.kill().await;
            Err(format!(
                "{:?} did not finish within {} s and was killed",
                argv[0],
                timeout.as_secs()
            ))
        }
    }
}

async fn post(
    client: &reqwest::Client,
    url: &url::Url,
    change: &Change<'_>,
) -> Result<String, String> {
    let body = serde_json::json!({
        "secret": change.secret,
        "version": change.version,
        "target": change.target,
    });
    let response = client
        .post(url.clone())
        .json(&body)
        .send()
        .await
        .map_err(|error| format!("POST {url} failed: {error}"))?;
    let status = response.status();
    if status.is_success() {
        Ok(format!("POST {url} returned {status}"))
    } else {
        Err(format!("POST {url} returned {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_never_a_target() {
        let own_name = std::fs::read_to_string("/proc/self/comm").expect("comm");

        let found = find_processes(own_name.trim_end());

        assert!(!found.contains(&i32::try_from(std::process::id()).expect("pid")));
    }

    #[tokio::test]
    async fn slow_command_is_killed() {
        let argv = vec!["/bin/sleep".to_owned(), "5".to_owned()];

        let outcome = run_command(&argv, Duration::from_millis(200)).await;

        let error = outcome.expect_err("timed out");
        assert!(error.contains("did not finish"), "{error}");
    }

    #[tokio::test]
    async fn command_gets_an_empty_environment() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("env");
        let script = format!("env > {}", out.display());
        let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), script];

        run_command(&argv, Duration::from_secs(5))
            .await
            .expect("command ran");

        let env = std::fs::read_to_string(out).expect("env output");
        assert!(
            env.lines().all(|line| line.starts_with("PATH=")
                || line.starts_with("PWD=")
                || line.starts_with("SHLVL=")
                || line.starts_with('_')),
            "{env}"
        );
    }
}
