//! Child server processes that are killed and reaped on drop.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to become ready before the test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Output lines of a child, shared with the threads that drain its pipes.
#[derive(Debug, Default)]
struct OutputLog {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// A running server. Dropping it sends SIGKILL and waits for the process.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Child,
    log: Arc<OutputLog>,
}

impl ServerProcess {
    /// Spawns `command` with piped stdout and stderr, which threads drain so the
    /// child never blocks on a full pipe.
    ///
    /// # Panics
    /// When the program cannot be started.
    pub fn spawn(name: &str, mut command: Command) -> Self {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {name} ({command:?}): {error}"));
        let log = Arc::new(OutputLog::default());
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        drain(stdout, Arc::clone(&log));
        drain(stderr, Arc::clone(&log));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// Waits for an output line that `parse` maps to a value, and returns that value.
    ///
    /// # Panics
    /// When the process exits first or no such line appears within `timeout`.
    pub fn wait_for_line<T>(&mut self, timeout: Duration, parse: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let lines = self.log.lines.lock().expect("output log lock");
                if let Some(value) = lines[seen..].iter().find_map(|line| parse(line)) {
                    return value;
                }
                seen = lines.len();
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                let wait = remaining.min(Duration::from_millis(100));
                drop(
                    self.log
                        .changed
                        .wait_timeout(lines, wait)
                        .expect("output log lock"),
                );
            }
            self.assert_running();
        }
        panic!(
            "{} printed no ready line within {timeout:?}; output:\n{}",
            self.name,
            self.output()
        );
    }

    /// Panics with the captured output when the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            // Give the drain threads a moment to collect the last lines.
            thread::sleep(Duration::from_millis(100));
            panic!(
                "{} exited with {status}; output:\n{}",
                self.name,
                self.output()
            );
        }
    }

    /// Returns whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the process printed so far, stdout and stderr interleaved by line.
    pub fn output(&self) -> String {
        self.log.lines.lock().expect("output log lock").join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // The process may already be gone; both errors only mean that.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drain(stream: impl Read + Send + 'static, log: Arc<OutputLog>) {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer).trim_end().to_owned();
                    log.lines.lock().expect("output log lock").push(line);
                    log.changed.notify_all();
                }
            }
        }
    });
}

/// Polls `ready` every 50 ms until it returns true.
///
/// # Panics
/// When `ready` stays false for `timeout`; the message names `what`.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// Another process can take it before the caller binds it; callers that cannot
/// pass port 0 to their server retry on a bind failure.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Returns a port P on 127.0.0.1 such that P and P + 1 were both free a moment ago.
///
/// OpenBao's dev server listens on P for the API and on P + 1 for cluster traffic.
pub fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = first.local_addr().expect("local address").port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
    panic!("found no two adjacent free ports on 127.0.0.1 in 100 tries");
}
