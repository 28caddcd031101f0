//! `watch` (the sidecar mode) against a real OpenBao dev server with Kubernetes auth,
//! real bbolt databases, and small HTTP receivers run by the tests themselves.
//!
//! Every agent checks its secrets each second (`interval_seconds = 1`), and every
//! wait polls with a deadline.

mod db_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use db_support::{make_database, reference_program, write_key};
use integration_tests::config::{aws_store, secret, vault_kubernetes_store};
use integration_tests::doubles::write_atomically;
use integration_tests::http::{self, Response};
use integration_tests::process::{free_port, wait_until};
use integration_tests::{
    Agent, AgentOutput, Moto, OpenBao, ServiceAccount, Tmpfs, TokenReview, assert_log_free_of,
    write_config,
};
use serde_json::{Value, json};
use tempfile::TempDir;

/// Jitter is 0.1 by default, so a check starts at most 1.1 s after the previous one.
/// The delivery bound adds one second for the version call, the read and the write.
const DELIVERY_BOUND: Duration = Duration::from_millis(2100);

const OLD_KEY: &str = "old-key-3c9e1a7f5b2d4e6a8c0f";
const NEW_KEY: &str = "new-key-8d2f6b0a4c9e1d3f5a7b";

// --- The store -----------------------------------------------------------------

/// OpenBao with Kubernetes auth (role `portainer`, backed by the TokenReview
/// double), a policy that reads `secret/*`, and a tmpfs for the targets.
struct Store {
    bao: OpenBao,
    tokenreview: TokenReview,
    account: ServiceAccount,
    jwt: Mutex<String>,
    jwt_file: PathBuf,
    tmpfs: Tmpfs,
    dir: TempDir,
}

impl Store {
    /// Starts the store with a role whose tokens live one hour.
    fn start() -> Self {
        Self::start_with_role(json!({ "token_ttl": "1h" }))
    }

    /// Starts the store; `role` adds settings (such as TTLs) to the role.
    fn start_with_role(role: Value) -> Self {
        let bao = OpenBao::start();
        let tokenreview = TokenReview::start();
        let account = ServiceAccount::new("portainer", "portainer", "uid-portainer-watch");
        bao.enable_kubernetes_auth("kubernetes", &tokenreview);
        bao.write_policy(
            "agent",
            "path \"secret/data/*\" {\n  capabilities = [\"read\"]\n}\n\
             path \"secret/metadata/*\" {\n  capabilities = [\"read\"]\n}\n",
        );
        let mut body = json!({
            "bound_service_account_names": [account.name],
            "bound_service_account_namespaces": [account.namespace],
            "token_policies": ["agent"],
        });
        for (name, value) in role.as_object().expect("role settings are an object") {
            body[name] = value.clone();
        }
        bao.write("auth/kubernetes/role/portainer", &body);

        let dir = TempDir::new().expect("configuration directory");
        // The projected token sits in a directory of its own, as in a pod.
        std::fs::create_dir(dir.path().join("serviceaccount")).expect("token directory");
        let jwt_file = dir.path().join("serviceaccount/token");
        let jwt = tokenreview.issue(&account);
        std::fs::write(&jwt_file, &jwt).expect("write JWT");
        Self {
            bao,
            tokenreview,
            account,
            jwt: Mutex::new(jwt),
            jwt_file,
            tmpfs: Tmpfs::mount(),
            dir,
        }
    }

    fn put(&self, path: &str, data: &Value) -> u64 {
        self.bao.kv2_put("secret", path, data)
    }

    /// Builds a configuration: this store, `[watch]` with a 1 s interval plus
    /// `watch`, then `secrets`.
    fn config(&self, address: &str, watch: &str, secrets: &str) -> String {
        format!(
            "{}\n[watch]\ninterval_seconds = 1\n{watch}\n{secrets}",
            vault_kubernetes_store("bao", address, "portainer", &self.jwt_file)
        )
    }

    fn write_config(&self, watch: &str, secrets: &str) -> PathBuf {
        let toml = self.config(self.bao.address(), watch, secrets);
        write_config(self.dir.path(), &toml)
    }

    fn target(&self, name: &str) -> PathBuf {
        self.tmpfs.join(name)
    }

    fn jwt(&self) -> String {
        self.jwt.lock().expect("JWT lock").clone()
    }

    /// Publishes a new projected token, as the kubelet does, and makes the
    /// TokenReview double accept only the new one. Returns the new token.
    fn replace_jwt(&self) -> String {
        let old = self.jwt();
        let new = self.tokenreview.issue(&self.account);
        write_atomically(&self.jwt_file, new.as_bytes());
        self.tokenreview.revoke(&old);
        *self.jwt.lock().expect("JWT lock") = new.clone();
        new
    }

    /// Successful Kubernetes logins so far, each as the JWT sent and the token received.
    fn logins(&self) -> Vec<(String, String)> {
        self.bao
            .audit_entries()
            .iter()
            .filter(|entry| entry["type"] == "response")
            .filter(|entry| entry.pointer("/request/path") == Some(&json!("auth/kubernetes/login")))
            .filter_map(|entry| {
                let jwt = entry.pointer("/request/data/jwt")?.as_str()?;
                let token = entry.pointer("/response/auth/client_token")?.as_str()?;
                Some((jwt.to_owned(), token.to_owned()))
            })
            .collect()
    }

    /// Login attempts so far, successful or not.
    fn login_attempts(&self) -> usize {
        self.requests_to("auth/kubernetes/login")
    }

    /// Requests to `path` (or to any path when empty) in the audit log so far.
    fn requests_to(&self, path: &str) -> usize {
        self.bao
            .audit_entries()
            .iter()
            .filter(|entry| entry["type"] == "request")
            .filter(|entry| path.is_empty() || entry.pointer("/request/path") == Some(&json!(path)))
            .count()
    }

    /// Revokes a Vault token as an operator would.
    fn revoke_token(&self, token: &str) {
        self.bao
            .write("auth/token/revoke", &json!({ "token": token }));
    }
}

/// Builds a `[[secrets]]` entry of kind `generic` that reads field `value` of `secret/PATH`.
fn generic(name: &str, path: &str, target: &Path) -> String {
    secret(
        name,
        "generic",
        "bao",
        &format!("secret/{path}"),
        target,
        "field = \"value\"",
    )
}

/// Builds the `database-key` entry, which reads field `key` of `secret/portainer`.
fn database_key(target: &Path) -> String {
    secret(
        "database-key",
        "encryption-key",
        "bao",
        "secret/portainer",
        target,
        "field = \"key\"",
    )
}

// --- The running agent ---------------------------------------------------------

/// A running `watch` agent whose output is collected while it runs. Dropping it
/// kills the process.
struct Watch {
    child: Child,
    log: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    status_port: u16,
}

impl Watch {
    /// Starts `watch --config CONFIG --log-level trace` with `extra` arguments; the
    /// configuration must listen on `status_port` for `/healthz` to work.
    fn start(config: &Path, status_port: u16, extra: &[&str]) -> Self {
        let mut agent = Agent::new(["watch", "--config"]).arg(config).trace();
        for arg in extra {
            agent = agent.arg(arg);
        }
        let mut child = agent.spawn();
        let log = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout is piped"), log.clone()),
            collect(child.stderr.take().expect("stderr is piped"), log.clone()),
        ];
        Self {
            child,
            log,
            readers,
            status_port,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().expect("log lock")).into_owned()
    }

    fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            self.assert_running();
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the agent did not log {needle:?} within {timeout:?}; log:\n{}",
            self.log()
        );
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            thread::sleep(Duration::from_millis(100));
            panic!("the agent exited with {status}; log:\n{}", self.log());
        }
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("agent pid");
        rustix::process::kill_process(pid, signal).expect("signal the agent");
    }

    /// Waits up to `timeout` for the agent to exit and returns its status and the
    /// time it took, or None when it is still running.
    fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().expect("wait for agent") {
                return Some((status, started.elapsed()));
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Sends SIGTERM, expects exit status 0 within 5 s, and returns the whole output.
    fn stop(mut self) -> AgentOutput {
        self.signal(rustix::process::Signal::TERM);
        let (status, elapsed) = self
            .wait_exit(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("the agent ignored SIGTERM; log:\n{}", self.log()));
        let output = self.output(status, elapsed);
        output.assert_exit(0);
        output
    }

    fn output(&mut self, status: ExitStatus, elapsed: Duration) -> AgentOutput {
        for reader in self.readers.drain(..) {
            reader.join().expect("output reader");
        }
        AgentOutput {
            status,
            stdout: self.log.lock().expect("log lock").clone(),
            stderr: Vec::new(),
            elapsed,
        }
    }

    fn get(&self, path: &str) -> Response {
        let url = format!("http://127.0.0.1:{}{path}", self.status_port);
        http::send("GET", &url, &[], None)
            .unwrap_or_else(|error| panic!("GET {url} failed: {error}"))
    }

    /// Waits until `path` of the status endpoint returns a body containing `needle`.
    fn wait_for_status(&mut self, path: &str, needle: &str, timeout: Duration) -> Response {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.assert_running();
            let url = format!("http://127.0.0.1:{}{path}", self.status_port);
            if let Ok(response) = http::send("GET", &url, &[], None) {
                if response.text().contains(needle) {
                    return response;
                }
                last = response.text();
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{path} did not contain {needle:?} within {timeout:?}; last body:\n{last}\nlog:\n{}",
            self.log()
        );
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(mut stream: impl Read + Send + 'static, log: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(read) => log
                    .lock()
                    .expect("log lock")
                    .extend_from_slice(&buffer[..read]),
            }
        }
    })
}

/// `status_listen` for a free port on 127.0.0.1, and that port.
fn status_listen() -> (String, u16) {
    let port = free_port();
    (format!("status_listen = \"127.0.0.1:{port}\""), port)
}

/// Polls `path` every 10 ms until it contains `expected`, and returns the time it took.
fn wait_for_content(path: &Path, expected: &[u8], timeout: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if std::fs::read(path).is_ok_and(|bytes| bytes == expected) {
            return started.elapsed();
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "{} did not contain {:?} within {timeout:?}; it contains {:?}",
        path.display(),
        String::from_utf8_lossy(expected),
        std::fs::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    );
}

/// Asserts that `path` keeps containing `expected` for `period`.
fn assert_stays(path: &Path, expected: &[u8], period: Duration) {
    let started = Instant::now();
    while started.elapsed() < period {
        let bytes = std::fs::read(path).expect("read target");
        assert_eq!(
            bytes,
            expected,
            "{} changed to {:?}",
            path.display(),
            String::from_utf8_lossy(&bytes)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn temporaries_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list target directory")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(".pka-") && name.ends_with(".tmp"))
        .collect()
}

// --- Delivery ------------------------------------------------------------------

#[test]
fn new_version_delivered_within_interval() {
    let store = Store::start();
    store.put("app", &json!({ "value": "first value" }));
    let target = store.target("app");
    let (listen, port) = status_listen();
    let config = store.write_config(&listen, &generic("app", "app", &target));
    let mut agent = Watch::start(&config, port, &[]);
    wait_for_content(&target, b"first value", Duration::from_secs(15));

    let mut latencies = Vec::new();
    for round in 2..=4 {
        let value = format!("value number {round}");
        store.put("app", &json!({ "value": value }));
        latencies.push(wait_for_content(
            &target,
            value.as_bytes(),
            Duration::from_secs(10),
        ));
        agent.wait_for_status(
            "/metrics",
            &format!("version=\"{round}\""),
            Duration::from_secs(2),
        );
    }

    for latency in &latencies {
        assert!(
            *latency <= DELIVERY_BOUND,
            "a new version took {latency:?} (all: {latencies:?})"
        );
    }
    agent.assert_running();
    eprintln!("watch delivery latencies: {latencies:?}");
}

// --- Store outage --------------------------------------------------------------

/// A TCP proxy on 127.0.0.1 in front of a server. While down, it closes every
/// connection, the established ones included, as a dead server behind a load
/// balancer would.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let (up_flag, stop_flag, open) = (up.clone(), stop.clone(), connections.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop_flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if !up_flag.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                open.lock().expect("connections lock").extend(
                    [client.try_clone(), server.try_clone()]
                        .into_iter()
                        .flatten(),
                );
                pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                pipe(server, client);
            }
        });
        Self {
            port,
            up,
            stop,
            connections,
        }
    }

    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for stream in self.connections.lock().expect("connections lock").drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.set_up(false);
        // Wakes the accept loop so that it reads the stop flag.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[test]
fn outage_keeps_file_and_recovers() {
    let store = Store::start();
    store.put("app", &json!({ "value": "before the outage" }));
    let bao_address: SocketAddr = store
        .bao
        .address()
        .trim_start_matches("http://")
        .parse()
        .expect("OpenBao address");
    let proxy = Proxy::start(bao_address);
    let target = store.target("app");
    let (listen, port) = status_listen();
    let toml = store.config(&proxy.address(), &listen, &generic("app", "app", &target));
    let config = write_config(store.dir.path(), &toml);
    let mut agent = Watch::start(&config, port, &[]);
    wait_for_content(&target, b"before the outage", Duration::from_secs(15));
    let before = std::fs::read(&target).expect("read target");
    let inode_before =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&target).expect("stat target"));

    proxy.set_up(false);
    store.put("app", &json!({ "value": "written during the outage" }));
    agent.wait_for_status("/healthz", "degraded: app", Duration::from_secs(30));
    let health = agent.get("/healthz");
    assert_eq!(health.status, 200, "a store outage is no reason to restart");
    assert_stays(&target, &before, Duration::from_secs(3));
    let inode_during =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&target).expect("stat target"));
    assert_eq!(
        inode_before, inode_during,
        "the file was replaced during the outage"
    );
    let metrics = agent.get("/metrics").text();
    assert!(metrics.contains("pka_degraded 1"), "{metrics}");
    assert!(
        metrics.contains("pka_store_errors_total{store=\"bao\",kind=\"unavailable\"}"),
        "{metrics}"
    );

    proxy.set_up(true);
    let recovered = Instant::now();
    wait_for_content(
        &target,
        b"written during the outage",
        Duration::from_secs(10),
    );
    // The backoff is capped at the interval, so recovery takes about one interval.
    assert!(
        recovered.elapsed() <= DELIVERY_BOUND,
        "recovery took {:?}",
        recovered.elapsed()
    );
    agent.wait_for_status("/healthz", "ok", Duration::from_secs(5));
    let output = agent.stop();
    assert!(
        output
            .log()
            .contains("check failed; keeping the current file"),
        "{}",
        output.log()
    );
}

// --- Vault tokens and projected JWTs -------------------------------------------

#[test]
fn revoked_token_causes_one_login() {
    let store = Store::start();
    store.put("app", &json!({ "value": "value one" }));
    let target = store.target("app");
    let (listen, port) = status_listen();
    let config = store.write_config(&listen, &generic("app", "app", &target));
    let mut agent = Watch::start(&config, port, &[]);
    wait_for_content(&target, b"value one", Duration::from_secs(15));
    let logins = store.logins();
    assert_eq!(logins.len(), 1, "one login at start: {logins:?}");

    store.revoke_token(&logins[0].1);
    let attempts_before = store.login_attempts();
    let requests_before = store.requests_to("");
    let window = Instant::now();
    store.put("app", &json!({ "value": "value two" }));
    wait_for_content(&target, b"value two", Duration::from_secs(10));
    while window.elapsed() < Duration::from_secs(6) {
        thread::sleep(Duration::from_millis(100));
    }

    let new_logins = store.login_attempts() - attempts_before;
    // The root client's revoke and put are two of the requests counted here.
    let requests = store.requests_to("") - requests_before;
    assert_eq!(new_logins, 1, "logins after the revocation");
    assert!(
        requests <= 20,
        "{requests} requests in 6 s after the revocation: a request storm"
    );
    agent.wait_for_status("/healthz", "ok", Duration::from_secs(3));
}

#[test]
fn max_ttl_logins_read_fresh_jwt() {
    // Tokens end after 6 s at the latest, so the agent must log in again and
    // again, each time with the JWT that is in the file at that moment.
    let store = Store::start_with_role(json!({ "token_ttl": "3s", "token_max_ttl": "6s" }));
    store.put("app", &json!({ "value": "value 1" }));
    let target = store.target("app");
    let (listen, port) = status_listen();
    let config = store.write_config(&listen, &generic("app", "app", &target));
    let mut agent = Watch::start(&config, port, &[]);
    wait_for_content(&target, b"value 1", Duration::from_secs(15));
    let started = Instant::now();

    let mut issued = vec![store.jwt()];
    for round in 2..=4 {
        let jwt = store.replace_jwt();
        issued.push(jwt.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.logins().iter().any(|(sent, _)| *sent == jwt) {
            assert!(
                Instant::now() < deadline,
                "no login with the replaced JWT within 10 s; log:\n{}",
                agent.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        let value = format!("value {round}");
        store.put("app", &json!({ "value": value }));
        wait_for_content(&target, value.as_bytes(), Duration::from_secs(10));
    }

    assert!(
        started.elapsed() > Duration::from_secs(6),
        "the run ended before max_ttl"
    );
    let logins = store.logins();
    assert!(logins.len() >= 4, "only {} logins", logins.len());
    for (sent, _) in &logins {
        assert!(
            issued.contains(sent),
            "a login sent a JWT that was never issued"
        );
    }
    let tokens: std::collections::BTreeSet<&String> =
        logins.iter().map(|(_, token)| token).collect();
    assert_eq!(tokens.len(), logins.len(), "a login returned a token twice");
    agent.wait_for_status("/healthz", "ok", Duration::from_secs(5));
    let output = agent.stop();
    let mut secrets: Vec<(&str, &[u8])> =
        issued.iter().map(|jwt| ("JWT", jwt.as_bytes())).collect();
    for (_, token) in &logins {
        secrets.push(("Vault token", token.as_bytes()));
    }
    assert_log_free_of(&output, &secrets);
}

#[test]
fn replaced_jwt_used_by_next_login() {
    let store = Store::start();
    store.put("app", &json!({ "value": "value one" }));
    let target = store.target("app");
    let (listen, port) = status_listen();
    let config = store.write_config(&listen, &generic("app", "app", &target));
    let mut agent = Watch::start(&config, port, &[]);
    wait_for_content(&target, b"value one", Duration::from_secs(15));
    let first = store.logins();
    assert_eq!(first.len(), 1, "{first:?}");

    let new_jwt = store.replace_jwt();
    store.revoke_token(&first[0].1);
    store.put("app", &json!({ "value": "value two" }));
    wait_for_content(&target, b"value two", Duration::from_secs(10));

    let logins = store.logins();
    assert_eq!(logins.len(), 2, "{logins:?}");
    assert_eq!(
        logins[1].0, new_jwt,
        "the second login did not use the new JWT"
    );
    agent.wait_for_status("/healthz", "ok", Duration::from_secs(3));
}

// --- Rotation guard ------------------------------------------------------------

/// Creates a data directory with `portainer.edb` encrypted under `key`.
fn data_dir(key: &[u8]) -> TempDir {
    let dir = TempDir::new().expect("data directory");
    let key_file = write_key(dir.path(), "key", key);
    make_database(
        &dir.path().join("portainer.edb"),
        Some(&key_file),
        &["-keys", "300"],
    );
    std::fs::remove_file(key_file).expect("remove key file");
    dir
}

/// Holds bbolt's exclusive lock on a database, as a running Portainer does.
struct LockHolder(Child);

impl LockHolder {
    fn start(database: &Path) -> Self {
        let mut child = Command::new(reference_program())
            .args(["hold", "-db"])
            .arg(database)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start lock holder");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("holder stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("holder ready line");
        Self(child)
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn rotated_key_waits_for_database() {
    let store = Store::start();
    store.put("portainer", &json!({ "key": OLD_KEY }));
    let data = data_dir(OLD_KEY.as_bytes());
    let target = store.target("portainer");
    let (listen, port) = status_listen();
    let watch = format!("{listen}\ndata_dir = \"{}\"", data.path().display());
    let config = store.write_config(&watch, &database_key(&target));
    let mut agent = Watch::start(&config, port, &[]);
    wait_for_content(&target, OLD_KEY.as_bytes(), Duration::from_secs(15));

    store.put("portainer", &json!({ "key": NEW_KEY }));
    let ready = agent.wait_for_status(
        "/readyz",
        "rotation pending to version 2",
        Duration::from_secs(10),
    );
    assert_eq!(ready.status, 200, "a pending rotation keeps the pod ready");
    let metrics = agent.get("/metrics").text();
    assert!(
        metrics.contains("pka_secret_rotation_pending{secret=\"database-key\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "pka_secret_version_info{secret=\"database-key\",store=\"bao\",version=\"1\"} 1"
        ),
        "{metrics}"
    );
    assert_stays(&target, OLD_KEY.as_bytes(), Duration::from_secs(3));
    assert_eq!(agent.get("/healthz").text(), "ok\n");

    // While Portainer runs, it holds the database lock: the key still waits, and
    // the agent is not degraded by it.
    {
        let _portainer = LockHolder::start(&data.path().join("portainer.edb"));
        thread::sleep(Duration::from_secs(3));
        assert_eq!(std::fs::read(&target).expect("read"), OLD_KEY.as_bytes());
        let health = agent.get("/healthz").text();
        assert_eq!(health, "ok\n", "log:\n{}", agent.log());
    }

    let keys = TempDir::new().expect("key directory");
    let old_key_file = write_key(keys.path(), "old", OLD_KEY.as_bytes());
    let new_key_file = write_key(keys.path(), "new", NEW_KEY.as_bytes());
    let rotate = Agent::new(["db", "rotate", "--db"])
        .arg(data.path())
        .arg("--old-key-file")
        .arg(&old_key_file)
        .arg("--new-key-file")
        .arg(&new_key_file)
        .run();
    rotate.assert_exit(0);
    let rotated = Instant::now();
    wait_for_content(&target, NEW_KEY.as_bytes(), Duration::from_secs(10));
    assert!(
        rotated.elapsed() <= DELIVERY_BOUND,
        "the new key took {:?} after the database rotation",
        rotated.elapsed()
    );

    let ready = agent.wait_for_status("/readyz", "database-key: written\n", Duration::from_secs(3));
    assert_eq!(ready.status, 200);
    let metrics = agent.get("/metrics").text();
    assert!(
        metrics.contains("pka_secret_rotation_pending{secret=\"database-key\"} 0"),
        "{metrics}"
    );
    let output = agent.stop();
    let pending_lines = output
        .log()
        .matches("rotation pending: the key file is kept")
        .count();
    assert_eq!(
        pending_lines,
        1,
        "the pending rotation was logged more than once:\n{}",
        output.log()
    );
    assert_log_free_of(
        &output,
        &[
            ("old key", OLD_KEY.as_bytes()),
            ("new key", NEW_KEY.as_bytes()),
        ],
    );
}

#[test]
fn changed_key_without_database_setting() {
    for replace in [false, true] {
        let store = Store::start();
        store.put("portainer", &json!({ "key": OLD_KEY }));
        let target = store.target("portainer");
        let (listen, port) = status_listen();
        let watch = format!("{listen}\nreplace_key_without_database = {replace}");
        let config = store.write_config(&watch, &database_key(&target));
        let mut agent = Watch::start(&config, port, &[]);
        wait_for_content(&target, OLD_KEY.as_bytes(), Duration::from_secs(15));

        store.put("portainer", &json!({ "key": NEW_KEY }));
        if replace {
            wait_for_content(
                &target,
                NEW_KEY.as_bytes(),
                DELIVERY_BOUND + Duration::from_secs(1),
            );
        } else {
            agent.wait_for_status(
                "/readyz",
                "rotation pending to version 2",
                Duration::from_secs(10),
            );
            assert_stays(&target, OLD_KEY.as_bytes(), Duration::from_secs(4));
            let output = agent.stop();
            assert!(output.log().contains("watch.data_dir"), "{}", output.log());
        }
    }
}

// --- Hooks ---------------------------------------------------------------------

/// An HTTP server on 127.0.0.1 that returns 204 to every request and records
/// each request body.
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let recorded = bodies.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(request) = read_request(&stream) {
                    recorded.lock().expect("bodies lock").push(request.body);
                    respond(&stream, 204, "");
                }
            }
        });
        Self { port, bodies }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().expect("bodies lock").clone()
    }
}

/// One HTTP/1.1 request, as far as the doubles here need it.
struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Reads one request with a `Content-Length` body; None for a malformed one.
fn read_request(stream: &TcpStream) -> Option<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let length: usize = headers
        .get("content-length")
        .map_or(Some(0), |value| value.parse().ok())?;
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

fn respond(mut stream: &TcpStream, status: u16, body: &str) {
    let reply = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
}

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

#[test]
fn hooks_fire_once_per_change() {
    let store = Store::start();
    store.put("app", &json!({ "value": "hook value one" }));
    let target = store.target("app");
    let receiver = Receiver::start();
    let hook_log = store.dir.path().join("hook.log");
    let (listen, port) = status_listen();
    let watch = format!(
        "{listen}\n\n[[watch.hooks]]\nsecrets = [\"app\"]\ncommand = [\"/bin/sh\", \"-c\", \"echo changed >> {}\"]\ntimeout_seconds = 5\n\n[[watch.hooks]]\nurl = \"{}\"\n",
        hook_log.display(),
        receiver.url()
    );
    let config = store.write_config(&watch, &generic("app", "app", &target));
    let agent = Watch::start(&config, port, &[]);
    wait_for_content(&target, b"hook value one", Duration::from_secs(15));
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(line_count(&hook_log), 0, "a hook ran on the first delivery");
    assert!(receiver.bodies().is_empty(), "{:?}", receiver.bodies());

    store.put("app", &json!({ "value": "hook value two" }));
    wait_for_content(&target, b"hook value two", Duration::from_secs(10));
    wait_until("the command hook", Duration::from_secs(5), || {
        line_count(&hook_log) == 1
    });
    wait_until("the URL hook", Duration::from_secs(5), || {
        receiver.bodies().len() == 1
    });

    // A new version with the same content is no change of the file.
    store.put("app", &json!({ "value": "hook value two" }));
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        line_count(&hook_log),
        1,
        "a hook ran without a content change"
    );
    assert_eq!(receiver.bodies().len(), 1, "{:?}", receiver.bodies());
    let output = agent.stop();

    // A restart finds the file as the store has it, so nothing changes.
    let agent = Watch::start(&config, port, &[]);
    thread::sleep(Duration::from_secs(3));
    let restarted = agent.stop();
    assert_eq!(
        line_count(&hook_log),
        1,
        "a hook ran on restart:\n{}",
        restarted.log()
    );
    assert_eq!(receiver.bodies().len(), 1, "{:?}", receiver.bodies());
    assert!(
        !restarted.log().contains("file written"),
        "{}",
        restarted.log()
    );

    let body: Value = serde_json::from_str(&receiver.bodies()[0]).expect("hook body is JSON");
    assert_eq!(body["secret"], "app");
    assert_eq!(body["version"], "2");
    assert_eq!(body["target"], target.display().to_string());
    assert!(
        !receiver.bodies()[0].contains("hook value"),
        "{}",
        receiver.bodies()[0]
    );
    assert_log_free_of(
        &output,
        &[
            ("first value", b"hook value one"),
            ("second value", b"hook value two"),
        ],
    );
}

// --- Admin password through Portainer's API ------------------------------------

/// A Portainer API double with one administrator (user 1, `admin`).
///
/// `POST /api/auth` returns a JWT for the right password and 422 otherwise.
/// `PUT /api/users/1/passwd` needs that JWT and the current password, and returns
/// 403 for a wrong current password, as Portainer's user handler does
/// ("Specified password do not match actual password"). Passwords are kept in
/// plain text because the test compares them.
struct PortainerApi {
    port: u16,
    password: Arc<Mutex<String>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl PortainerApi {
    fn start(password: &str) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind Portainer API");
        let port = listener.local_addr().expect("Portainer API address").port();
        let password = Arc::new(Mutex::new(password.to_owned()));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (current, log) = (password.clone(), calls.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let Some(request) = read_request(&stream) else {
                    continue;
                };
                let (status, body) = handle_portainer(&request, &current);
                log.lock()
                    .expect("calls lock")
                    .push(format!("{} {} {status}", request.method, request.path));
                respond(&stream, status, &body);
            }
        });
        Self {
            port,
            password,
            calls,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn password(&self) -> String {
        self.password.lock().expect("password lock").clone()
    }

    fn set_password(&self, password: &str) {
        *self.password.lock().expect("password lock") = password.to_owned();
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls lock").clone()
    }

    /// Logs in through the API, as a user would; returns the HTTP status.
    fn login(&self, password: &str) -> u16 {
        let url = format!("{}/api/auth", self.url());
        let body = json!({ "Username": "admin", "Password": password }).to_string();
        http::send(
            "POST",
            &url,
            &[("Content-Type", "application/json")],
            Some(body.into_bytes()),
        )
        .expect("POST /api/auth")
        .status
    }
}

const PORTAINER_JWT: &str = "portainer-session-jwt";

fn handle_portainer(request: &Request, current: &Mutex<String>) -> (u16, String) {
    let body: Value = serde_json::from_str(&request.body).unwrap_or(Value::Null);
    let mut current = current.lock().expect("password lock");
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/api/auth") => {
            if body["Username"] == "admin" && body["Password"] == json!(*current) {
                (200, json!({ "jwt": PORTAINER_JWT }).to_string())
            } else {
                (422, json!({ "message": "Invalid credentials" }).to_string())
            }
        }
        ("PUT", "/api/users/1/passwd") => {
            let bearer = request.headers.get("authorization").map(String::as_str);
            if bearer != Some(&format!("Bearer {PORTAINER_JWT}")) {
                return (401, json!({ "message": "Unauthorized" }).to_string());
            }
            if body["Password"] != json!(*current) {
                let message = "Specified password do not match actual password";
                return (403, json!({ "message": message }).to_string());
            }
            match body["NewPassword"].as_str() {
                Some(new) if !new.is_empty() => {
                    *current = new.to_owned();
                    (204, String::new())
                }
                _ => (
                    400,
                    json!({ "message": "Invalid request payload" }).to_string(),
                ),
            }
        }
        _ => (404, json!({ "message": "not found" }).to_string()),
    }
}

#[test]
fn password_change_applied_through_api() {
    let store = Store::start();
    store.put("portainer", &json!({ "password": "first-Password-1\n" }));
    let api = PortainerApi::start("first-Password-1");
    let target = store.target("admin-password");
    let (listen, port) = status_listen();
    let watch = format!(
        "{listen}\n\n[watch.portainer_api]\nurl = \"{}\"\n",
        api.url()
    );
    let password_secret = secret(
        "admin-password",
        "admin-password",
        "bao",
        "secret/portainer",
        &target,
        "field = \"password\"",
    );
    let config = store.write_config(&watch, &password_secret);
    let mut agent = Watch::start(&config, port, &[]);
    wait_for_content(&target, b"first-Password-1\n", Duration::from_secs(15));
    assert!(
        api.calls().is_empty(),
        "the first delivery called the API: {:?}",
        api.calls()
    );

    store.put("portainer", &json!({ "password": "second-Password-2" }));
    wait_for_content(&target, b"second-Password-2", Duration::from_secs(10));
    agent.wait_for_log(
        "admin password changed in the running Portainer",
        Duration::from_secs(5),
    );
    assert_eq!(api.password(), "second-Password-2");
    assert_eq!(
        api.login("second-Password-2"),
        200,
        "the new password does not log in"
    );
    assert_eq!(
        api.login("first-Password-1"),
        422,
        "the old password still logs in"
    );

    // Someone changed the password in Portainer by hand: the agent still writes
    // the file, reports the failed change, and keeps running.
    api.set_password("changed-by-hand-3");
    store.put("portainer", &json!({ "password": "third-Password-3" }));
    wait_for_content(&target, b"third-Password-3", Duration::from_secs(10));
    agent.wait_for_log(
        "failed to change the admin password",
        Duration::from_secs(5),
    );
    assert_eq!(api.password(), "changed-by-hand-3");
    let calls = api.calls();
    assert_eq!(
        calls,
        [
            "POST /api/auth 200",
            "PUT /api/users/1/passwd 204",
            "POST /api/auth 200",
            "POST /api/auth 422",
            "POST /api/auth 422",
        ],
        "the API calls"
    );

    let output = agent.stop();
    assert_log_free_of(
        &output,
        &[
            ("first password", b"first-Password-1"),
            ("second password", b"second-Password-2"),
            ("third password", b"third-Password-3"),
            ("Portainer JWT", PORTAINER_JWT.as_bytes()),
        ],
    );
}

// --- Signals -------------------------------------------------------------------

#[test]
fn sighup_reloads_valid_config_only() {
    let store = Store::start();
    store.put("app", &json!({ "value": "app value 1" }));
    store.put("other", &json!({ "value": "other value" }));
    let app = store.target("app");
    let other = store.target("other");
    let (listen, port) = status_listen();
    let config = store.write_config(&listen, &generic("app", "app", &app));
    let mut agent = Watch::start(&config, port, &[]);
    wait_for_content(&app, b"app value 1", Duration::from_secs(15));

    std::fs::write(&config, "[watch\ninterval_seconds = \"soon\"\n").expect("break config");
    agent.signal(rustix::process::Signal::HUP);
    agent.wait_for_log("keeping the running configuration", Duration::from_secs(5));
    store.put("app", &json!({ "value": "app value 2" }));
    wait_for_content(
        &app,
        b"app value 2",
        DELIVERY_BOUND + Duration::from_secs(1),
    );
    assert!(!other.exists());

    let secrets = format!(
        "{}\n{}",
        generic("app", "app", &app),
        generic("other", "other", &other)
    );
    store.write_config(&listen, &secrets);
    agent.signal(rustix::process::Signal::HUP);
    agent.wait_for_log("SIGHUP: configuration reloaded", Duration::from_secs(5));
    wait_for_content(&other, b"other value", Duration::from_secs(5));
    let ready = agent.wait_for_status("/readyz", "other: written", Duration::from_secs(3));
    assert!(ready.text().contains("app: written"), "{}", ready.text());
    agent.assert_running();
}

#[test]
fn sigterm_during_activity_exits_cleanly() {
    let store = Store::start();
    store.put("app", &json!({ "value": "busy 0" }));
    let target = store.target("app");
    let (listen, port) = status_listen();
    let config = store.write_config(&listen, &generic("app", "app", &target));
    let mut agent = Watch::start(&config, port, &[]);
    wait_for_content(&target, b"busy 0", Duration::from_secs(15));

    let mut written = vec!["busy 0".to_owned()];
    for round in 1..=3 {
        let value = format!("busy {round}");
        store.put("app", &json!({ "value": value }));
        written.push(value);
        thread::sleep(Duration::from_millis(700));
    }
    agent.signal(rustix::process::Signal::TERM);
    let (status, elapsed) = agent
        .wait_exit(Duration::from_secs(2))
        .unwrap_or_else(|| panic!("the agent did not exit within 2 s of SIGTERM"));

    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    assert!(elapsed <= Duration::from_secs(2), "{elapsed:?}");
    let content = String::from_utf8(std::fs::read(&target).expect("read target")).expect("UTF-8");
    assert!(
        written.contains(&content),
        "the target contains {content:?}"
    );
    assert_eq!(temporaries_in(store.tmpfs.path()), Vec::<String>::new());
}

#[test]
fn exit_when_pid_file_process_exits() {
    let store = Store::start();
    store.put("app", &json!({ "value": "job value" }));
    let target = store.target("app");
    let (listen, port) = status_listen();
    let config = store.write_config(&listen, &generic("app", "app", &target));
    let mut main = Command::new("/bin/sleep")
        .arg("60")
        .spawn()
        .expect("start main process");
    let pid_file = store.dir.path().join("main.pid");
    std::fs::write(&pid_file, main.id().to_string()).expect("write pid file");
    let exit_when = format!("pid-file:{}", pid_file.display());
    let mut agent = Watch::start(&config, port, &["--exit-when", &exit_when]);
    wait_for_content(&target, b"job value", Duration::from_secs(15));
    thread::sleep(Duration::from_millis(1500));
    agent.assert_running();

    main.kill().expect("stop the main process");
    main.wait().expect("reap the main process");
    let (status, elapsed) = agent
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("the agent kept running; log:\n{}", agent.log()));

    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    assert!(elapsed <= Duration::from_secs(3), "{elapsed:?}");
    assert!(
        agent.log().contains("the main container's process exited"),
        "{}",
        agent.log()
    );
    assert_eq!(std::fs::read(&target).expect("read"), b"job value");
}

// --- Status endpoint and logs --------------------------------------------------

#[test]
fn status_and_trace_log_reveal_no_values() {
    let store = Store::start();
    store.put(
        "portainer",
        &json!({ "key": OLD_KEY, "password": "status-Password-1" }),
    );
    let key = store.target("portainer");
    let password = store.target("admin-password");
    let (listen, port) = status_listen();
    let secrets = format!(
        "{}\n{}",
        database_key(&key),
        secret(
            "admin-password",
            "admin-password",
            "bao",
            "secret/portainer",
            &password,
            "field = \"password\"\ninterval_seconds = 2"
        )
    );
    let config = store.write_config(&listen, &secrets);
    let mut agent = Watch::start(&config, port, &[]);
    // The first response may come before or after the first delivery.
    let first = agent.wait_for_status("/readyz", "database-key: ", Duration::from_secs(10));
    if first.status == 503 {
        assert!(first.text().contains("not written yet"), "{}", first.text());
    }
    wait_for_content(&key, OLD_KEY.as_bytes(), Duration::from_secs(15));
    wait_for_content(&password, b"status-Password-1", Duration::from_secs(5));
    agent.wait_for_status("/metrics", "operation=\"version\"", Duration::from_secs(5));

    let health = agent.get("/healthz");
    let ready = agent.get("/readyz");
    let metrics = agent.get("/metrics");
    let missing = agent.get("/secret");
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.text(),
        "admin-password: written\ndatabase-key: written\n"
    );
    assert_eq!(missing.status, 404);
    let text = metrics.text();
    for expected in [
        "pka_secret_version_info{secret=\"database-key\",store=\"bao\",version=\"1\"} 1",
        "pka_secret_version_info{secret=\"admin-password\",store=\"bao\",version=\"1\"} 1",
        "pka_secret_rotation_pending{secret=\"database-key\"} 0",
        "pka_secret_next_check_timestamp_seconds{secret=\"database-key\"}",
        "pka_secret_last_success_timestamp_seconds{secret=\"admin-password\"}",
        "pka_store_requests_total{store=\"bao\",operation=\"read\"}",
        "pka_store_requests_total{store=\"bao\",operation=\"version\"}",
        "pka_store_token_expiry_timestamp_seconds{store=\"bao\"}",
        "pka_ready 1",
        "pka_degraded 0",
    ] {
        assert!(
            text.contains(expected),
            "/metrics lacks {expected:?}:\n{text}"
        );
    }
    let next_check = metric_value(
        &text,
        "pka_secret_next_check_timestamp_seconds{secret=\"database-key\"}",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        (now - 1.0..=now + 2.0).contains(&next_check),
        "next check at {next_check}, now {now}"
    );

    let output = agent.stop();
    let mut secrets: Vec<(&str, Vec<u8>)> = vec![
        ("key", OLD_KEY.as_bytes().to_vec()),
        ("password", b"status-Password-1".to_vec()),
        ("JWT", store.jwt().into_bytes()),
    ];
    for token in store.bao.client_tokens_seen() {
        secrets.push(("Vault token", token.into_bytes()));
    }
    let borrowed: Vec<(&str, &[u8])> = secrets
        .iter()
        .map(|(what, bytes)| (*what, bytes.as_slice()))
        .collect();
    assert_log_free_of(&output, &borrowed);
    for body in [health.text(), ready.text(), text] {
        for (what, bytes) in &borrowed {
            assert!(
                !body.contains(std::str::from_utf8(bytes).expect("UTF-8")),
                "the status endpoint shows the {what}"
            );
        }
    }
    assert!(
        output.log().contains("TRACE") || output.log().contains("DEBUG"),
        "not a trace log"
    );
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample for {series} in:\n{text}"))
}

// --- Soak ----------------------------------------------------------------------

/// Resident set size of a process in KiB, from `/proc/PID/status`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list fds")
        .count()
}

#[test]
fn soak_keeps_memory_and_fds_flat() {
    const DURATION: Duration = Duration::from_secs(100);
    let store = Store::start_with_role(json!({ "token_ttl": "20s", "token_max_ttl": "1m" }));
    store.put("app", &json!({ "value": "soak 0" }));
    let target = store.target("app");
    let hook_log = store.dir.path().join("hook.log");
    let (listen, port) = status_listen();
    let watch = format!(
        "{listen}\n\n[[watch.hooks]]\ncommand = [\"/bin/sh\", \"-c\", \"echo changed >> {}\"]\n",
        hook_log.display()
    );
    let config = store.write_config(&watch, &generic("app", "app", &target));
    let mut agent = Watch::start(&config, port, &[]);
    wait_for_content(&target, b"soak 0", Duration::from_secs(15));

    let started = Instant::now();
    let mut samples: Vec<(u64, usize)> = Vec::new();
    let mut round = 0;
    while started.elapsed() < DURATION {
        if samples.len().is_multiple_of(3) {
            round += 1;
            store.put("app", &json!({ "value": format!("soak {round}") }));
        }
        let _ = agent.get("/metrics");
        samples.push((rss_kib(agent.pid()), open_fds(agent.pid())));
        thread::sleep(Duration::from_secs(1));
    }
    wait_for_content(
        &target,
        format!("soak {round}").as_bytes(),
        Duration::from_secs(5),
    );
    agent.assert_running();

    let third = samples.len() / 3;
    let first = &samples[..third];
    let last = &samples[samples.len() - third..];
    let max_rss = |part: &[(u64, usize)]| part.iter().map(|(rss, _)| *rss).max().unwrap_or(0);
    let max_fds = |part: &[(u64, usize)]| part.iter().map(|(_, fds)| *fds).max().unwrap_or(0);
    eprintln!(
        "soak: {round} changes, RSS max {} KiB then {} KiB, fds max {} then {}",
        max_rss(first),
        max_rss(last),
        max_fds(first),
        max_fds(last)
    );
    assert!(
        max_rss(last) <= max_rss(first) + 1024,
        "RSS grew from {} KiB to {} KiB",
        max_rss(first),
        max_rss(last)
    );
    assert!(
        max_fds(last) <= max_fds(first) + 2,
        "open file descriptors grew from {} to {}",
        max_fds(first),
        max_fds(last)
    );
    assert!(
        line_count(&hook_log) >= round as usize - 2,
        "hooks ran {} times for {round} changes",
        line_count(&hook_log)
    );
    // Tokens are renewed every ~13 s and end at the 1 min max_ttl, so the run
    // covers renewals and at least one new login.
    assert!(
        store.requests_to("auth/token/renew-self") >= 2,
        "too few renewals"
    );
    assert!(store.logins().len() >= 2, "no new login after max_ttl");
}

#[test]
fn aws_new_version_delivered_and_key_kept() {
    let moto = Moto::start();
    moto.create_secret_string("portainer/password", "password-one");
    moto.create_secret_string("portainer/key", "key-one-0123456789abcdef0123");
    let tmpfs = Tmpfs::mount();
    let dir = TempDir::new().expect("config directory");
    let password = tmpfs.join("admin-password");
    let key = tmpfs.join("portainer");
    let config = write_config(
        dir.path(),
        &format!(
            "{}\n{}{}[watch]\ninterval_seconds = 1\n",
            aws_store("aws", moto.url()),
            secret(
                "admin-password",
                "admin-password",
                "aws",
                "portainer/password",
                &password,
                ""
            ),
            secret(
                "database-key",
                "encryption-key",
                "aws",
                "portainer/key",
                &key,
                ""
            ),
        ),
    );
    let mut child = Agent::new(["watch", "--config"])
        .arg(&config)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .spawn();

    wait_for_content(&password, b"password-one", Duration::from_secs(20));
    wait_for_content(
        &key,
        b"key-one-0123456789abcdef0123",
        Duration::from_secs(5),
    );
    moto.put_secret_string("portainer/password", "password-two", &[]);
    let delay = wait_for_content(&password, b"password-two", Duration::from_secs(5));
    moto.put_secret_string("portainer/key", "key-two-0123456789abcdef0123", &[]);
    assert_stays(
        &key,
        b"key-one-0123456789abcdef0123",
        Duration::from_secs(3),
    );

    let _ = child.kill();
    let _ = child.wait();
    assert!(
        delay <= Duration::from_millis(2100),
        "a new AWSCURRENT version took {delay:?}, more than one interval plus a second"
    );
}
