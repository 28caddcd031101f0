//! Shared helpers of the database tests: builds the Go reference program (real
//! bbolt) and runs it to create, check and dump database files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use portainer_key_agent::db::PortainerKey;
use portainer_key_agent::db::bolt;

const INSTALL_HINT: &str = "the database tests need Go and bbolt: apt-get install golang-go golang-github-coreos-bbolt-dev golang-golang-x-crypto-dev";

/// Returns the path of the reference program, building it on first use.
///
/// Fails the test (never skips it) when Go or the bbolt sources are missing.
pub fn reference_program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(build_reference_program)
}

fn build_reference_program() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("bbolt-reference/main.go");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let program = out_dir.join("bbolt-reference");
    // Each test binary builds to its own name, then renames, so parallel
    // builds never see a half-written program.
    let partial = out_dir.join(format!("bbolt-reference.{}", std::process::id()));
    let output = Command::new("go")
        .args(["build", "-o"])
        .arg(&partial)
        .arg(&source)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", out_dir.join("go-build-cache"))
        .env("GOFLAGS", "")
        .output()
        .unwrap_or_else(|error| panic!("failed to run `go` ({error}); {INSTALL_HINT}"));
    assert!(
        output.status.success(),
        "go build failed: {}\n{INSTALL_HINT}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&partial, &program).expect("rename reference program");
    program
}

/// Runs the reference program and returns its output.
pub fn run_reference(args: &[&str]) -> Output {
    Command::new(reference_program())
        .args(args)
        .output()
        .expect("run reference program")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Writes a key file with these exact bytes.
pub fn write_key(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write key file");
    path
}

/// Creates a Portainer-shaped database with bbolt; `key` None writes plaintext.
pub fn make_database(path: &Path, key: Option<&Path>, extra: &[&str]) {
    let mut args = vec!["make", "-out", path_str(path)];
    if let Some(key) = key {
        args.extend(["-key", path_str(key)]);
    }
    args.extend(extra);
    let output = run_reference(&args);
    assert!(
        output.status.success(),
        "reference make failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs bbolt's `tx.Check()` and decrypts every value; returns stdout (JSON
/// counts) or stderr.
pub fn check_database(path: &Path, key: Option<&Path>) -> Result<String, String> {
    let mut args = vec!["check", "-db", path_str(path)];
    if let Some(key) = key {
        args.extend(["-key", path_str(key)]);
    }
    let output = run_reference(&args);
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Dumps every bucket and value with bbolt, decrypted when `key` is given.
pub fn dump_database(path: &Path, key: Option<&Path>) -> String {
    let mut args = vec!["dump", "-db", path_str(path)];
    if let Some(key) = key {
        args.extend(["-key", path_str(key)]);
    }
    let output = run_reference(&args);
    assert!(
        output.status.success(),
        "reference dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("dump is text")
}

/// Dumps a file with this crate's reader, in the reference program's format.
pub fn dump_with_reader(path: &Path, key_bytes: Option<&[u8]>) -> String {
    let data = std::fs::read(path).expect("read database");
    let layout = bolt::parse(&data).expect("reader parses the file");
    let key = key_bytes.map(PortainerKey::from_key_file_bytes);
    let mut out = String::new();
    for bucket in &layout.buckets {
        let name = hex::encode(&data[bucket.name.clone()]);
        out.push_str(&format!("bucket {name} {}\n", bucket.sequence));
        for entry in layout.entries(bucket) {
            let stored = &data[entry.value.clone()];
            let value = match &key {
                Some(key) => key.decrypt(stored).expect("value authenticates").to_vec(),
                None => stored.to_vec(),
            };
            let key_hex = hex::encode(&data[entry.key.clone()]);
            out.push_str(&format!("value {name} {key_hex} {}\n", hex::encode(value)));
        }
    }
    out
}

/// Returns the value of `"values"` in the reference checker's JSON output.
pub fn checked_value_count(check_output: &str) -> u64 {
    let report: serde_json::Value = serde_json::from_str(check_output).expect("check prints JSON");
    report["values"].as_u64().expect("values count")
}

/// Reads the nonces the reference program used, one hex string a line.
pub fn read_nonces(path: &Path) -> Vec<[u8; 12]> {
    std::fs::read_to_string(path)
        .expect("read nonces")
        .lines()
        .map(|line| {
            let bytes = hex::decode(line).expect("nonce is hex");
            bytes.try_into().expect("nonce is 12 bytes")
        })
        .collect()
}

/// Returns how many of `nonces` occur anywhere in `data`.
pub fn count_nonces_in(data: &[u8], nonces: &[[u8; 12]]) -> usize {
    let expected: std::collections::HashSet<&[u8]> =
        nonces.iter().map(|nonce| &nonce[..]).collect();
    data.windows(12)
        .filter(|window| expected.contains(window))
        .count()
}
