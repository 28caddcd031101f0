//! The container image: built by `tests/image/build` from the final stage of the
//! repository's `Dockerfile` around a host-built static binary, then run the way an
//! init container runs (non-root, read-only root filesystem, no capabilities)
//! against OpenBao on 127.0.0.1.
//!
//! These tests need a Docker engine and fail, never skip, without one. They pull
//! no image: the final stage starts `FROM scratch`.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use integration_tests::doubles::ServiceAccount;
use integration_tests::paths::repo_root;
use integration_tests::{Expected, OpenBao, Tmpfs, TokenReview, assert_file};
use serde_json::json;
use tempfile::TempDir;

/// The user and group the image runs as.
const AGENT_ID: u32 = 65532;

/// Upper bound for the image size, in bytes.
const MAX_IMAGE_BYTES: u64 = 15 * 1024 * 1024;

/// A test image, removed with `docker rmi` on drop.
struct Image {
    tag: String,
}

impl Image {
    /// Runs `tests/image/build` with a tag unique to this process.
    fn build() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let tag = format!("portainer-key-agent-test:{}-{nanos}", std::process::id());
        let script = repo_root().join("tests/image/build");
        let output = Command::new(&script)
            .arg(&tag)
            .output()
            .unwrap_or_else(|error| panic!("failed to run {}: {error}", script.display()));
        // Removes a partly built image too.
        let image = Self { tag };
        assert!(
            output.status.success(),
            "{} failed with {}:\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        image
    }

    fn inspect(&self, format: &str) -> String {
        let output = docker(&["image", "inspect", "--format", format, &self.tag]);
        assert_success("docker image inspect", &output);
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn size_bytes(&self) -> u64 {
        let size = self.inspect("{{.Size}}");
        size.parse()
            .unwrap_or_else(|error| panic!("image size {size:?} is not a number: {error}"))
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // The image may not exist when the build failed; that is not an error here.
        let _ = Command::new("docker")
            .args(["image", "rm", "--force", &self.tag])
            .output();
    }
}

/// Runs `docker ARGS`, panicking when docker cannot be started at all.
fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("failed to run docker {args:?}: {error}; install Docker and start the engine")
        })
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Returns the final stage of a Dockerfile: every line from the last `FROM` on.
fn final_stage(dockerfile: &str) -> Vec<&str> {
    let lines: Vec<&str> = dockerfile.lines().collect();
    let start = lines
        .iter()
        .rposition(|line| line.starts_with("FROM "))
        .expect("Dockerfile has a FROM line");
    lines[start..].to_vec()
}

/// Flags that every container in these tests runs with, as in the Kubernetes
/// manifests: read-only root filesystem, no capabilities, no privilege gain.
const HARDENING: [&str; 5] = [
    "--read-only",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
];

/// Makes `dir` look like a Kubernetes `emptyDir` in a pod with `fsGroup: 65532`:
/// owned by the agent, mode 0750, so a process in group 65532 can enter it.
fn prepare_shared_dir(dir: &Path) {
    chown(dir, Some(AGENT_ID), Some(AGENT_ID)).expect("chown shared directory");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
        .expect("chmod shared directory");
}

#[test]
fn dockerfile_differs_only_in_builder() {
    let release = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("read Dockerfile");
    let script = repo_root().join("tests/image/build");
    let output = Command::new(&script)
        .arg("--dockerfile")
        .output()
        .expect("run tests/image/build --dockerfile");
    assert_success("tests/image/build --dockerfile", &output);
    let generated = String::from_utf8(output.stdout).expect("generated Dockerfile is UTF-8");

    let release_stage = final_stage(&release);
    let test_stage: Vec<&str> = generated.lines().collect();
    assert_eq!(release_stage[0], "FROM scratch", "final stage base");
    assert_eq!(
        release_stage.len(),
        test_stage.len(),
        "line count of the final stages:\n{generated}"
    );

    let mut rewritten = 0;
    for (release_line, test_line) in release_stage.iter().zip(&test_stage) {
        if release_line == test_line {
            continue;
        }
        // `COPY --from=builder /dir/NAME DEST` may only become `COPY NAME DEST`.
        let source = release_line
            .strip_prefix("COPY --from=builder ")
            .unwrap_or_else(|| panic!("line changed beyond COPY --from=builder: {release_line:?}"));
        let (source_path, destination) = source.split_once(' ').expect("COPY has a destination");
        let name = source_path.rsplit('/').next().expect("source has a name");
        assert_eq!(
            *test_line,
            format!("COPY {name} {destination}"),
            "rewritten COPY"
        );
        rewritten += 1;
    }
    assert_eq!(
        rewritten, 2,
        "the binary and the CA bundle come from the builder"
    );
    assert!(
        !generated.contains("--from="),
        "the test Dockerfile has no builder stage:\n{generated}"
    );
}

#[test]
fn image_is_small_static_and_non_root() {
    let image = Image::build();

    let size = image.size_bytes();
    eprintln!(
        "image {} size: {size} bytes ({:.1} MiB)",
        image.tag,
        size as f64 / 1048576.0
    );
    assert!(
        size < MAX_IMAGE_BYTES,
        "image is {size} bytes, over {MAX_IMAGE_BYTES}"
    );

    assert_eq!(
        image.inspect("{{.Config.User}}"),
        "65532:65532",
        "image user"
    );
    assert_eq!(
        image.inspect("{{json .Config.Entrypoint}}"),
        r#"["/usr/local/bin/portainer-key-agent"]"#,
        "entrypoint"
    );
    assert_eq!(
        image.inspect("{{json .Config.Cmd}}"),
        r#"["fetch"]"#,
        "default command"
    );
    assert_eq!(
        image.inspect(r#"{{index .Config.Labels "org.opencontainers.image.title"}}"#),
        "portainer-key-agent",
        "OCI title label"
    );
    assert_eq!(
        image.inspect("{{json .Config.Healthcheck}}"),
        "null",
        "health check"
    );

    // The binary runs with no libc in the image.
    let version = docker(&[
        "run",
        "--pull",
        "never",
        "--rm",
        "--network",
        "none",
        &image.tag,
        "--version",
    ]);
    assert_success("portainer-key-agent --version in the image", &version);
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("portainer-key-agent"),
        "version output: {}",
        String::from_utf8_lossy(&version.stdout)
    );

    // No shell to exec into.
    let shell = docker(&[
        "run",
        "--pull",
        "never",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        &image.tag,
    ]);
    assert!(!shell.status.success(), "the image has a /bin/sh");
}

#[test]
fn image_fetches_from_openbao_as_init_container() {
    let image = Image::build();

    // OpenBao with Kubernetes auth, as the vault overlay configures it.
    let bao = OpenBao::start();
    let tokenreview = TokenReview::start();
    let account = ServiceAccount::new("portainer", "portainer", "portainer-uid");
    bao.enable_kubernetes_auth("kubernetes", &tokenreview);
    bao.write_read_policy("portainer-key-agent", &["secret/data/portainer"]);
    bao.write_kubernetes_role(
        "kubernetes",
        "portainer",
        &account,
        &["portainer-key-agent"],
    );
    // A key with a tab, spaces and a trailing newline, which must all arrive.
    let key = "k3y with\tspaces and a newline\n";
    let password = "pässwörd with spaces";
    bao.kv2_put(
        "secret",
        "portainer",
        &json!({ "key": key, "password": password }),
    );

    let token_dir = TempDir::new().expect("temporary directory");
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, tokenreview.issue(&account)).expect("write service account token");
    chown(&token_file, Some(AGENT_ID), Some(AGENT_ID)).expect("chown token");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o400))
        .expect("chmod token");

    let secrets_dir = Tmpfs::mount();
    let portainer_dir = Tmpfs::mount();
    prepare_shared_dir(secrets_dir.path());
    prepare_shared_dir(portainer_dir.path());

    let address = format!("--env=PORTAINER_KEY_AGENT_VAULT_ADDRESS={}", bao.address());
    let token_mount = format!(
        "--volume={}:/var/run/secrets/portainer-key-agent/token:ro",
        token_file.display()
    );
    let store_env = [
        "--env=PORTAINER_KEY_AGENT_STORE=vault",
        address.as_str(),
        "--env=PORTAINER_KEY_AGENT_VAULT_ROLE=portainer",
        "--env=PORTAINER_KEY_AGENT_VAULT_JWT_FILE=/var/run/secrets/portainer-key-agent/token",
        "--env=PORTAINER_KEY_AGENT_KEY_PATH=secret/portainer",
        "--env=PORTAINER_KEY_AGENT_KEY_FIELD=key",
        "--env=PORTAINER_KEY_AGENT_PASSWORD_PATH=secret/portainer",
        "--env=PORTAINER_KEY_AGENT_PASSWORD_FIELD=password",
        "--env=PORTAINER_KEY_AGENT_MODE=0440",
        token_mount.as_str(),
    ];

    // 1. Into directories shared with the host, so the host can check the files.
    let secrets_mount = format!("--volume={}:/run/secrets", secrets_dir.path().display());
    let portainer_mount = format!("--volume={}:/run/portainer", portainer_dir.path().display());
    let mut args = vec![
        "run",
        "--pull",
        "never",
        "--rm",
        "--network",
        "host",
        "--user",
        "65532:65532",
    ];
    args.extend(HARDENING);
    args.extend(store_env);
    args.extend([
        secrets_mount.as_str(),
        portainer_mount.as_str(),
        &image.tag,
        "fetch",
    ]);
    let fetch = docker(&args);
    assert_success("fetch in the image", &fetch);

    let expected = |bytes| Expected {
        bytes,
        mode: 0o440,
        uid: AGENT_ID,
        gid: AGENT_ID,
    };
    assert_file(&secrets_dir.join("portainer"), expected(key.as_bytes()));
    assert_file(
        &portainer_dir.join("admin-password"),
        expected(password.as_bytes()),
    );
    let log = String::from_utf8_lossy(&fetch.stderr);
    assert!(
        !log.contains(key.trim_end()),
        "the key appears in the log:\n{log}"
    );
    assert!(
        !log.contains(password),
        "the password appears in the log:\n{log}"
    );

    // 2. A second container reads the files as Portainer does in the manifests:
    // root with every capability dropped, in group 65532 through fsGroup.
    let secrets_read_only = format!("{secrets_mount}:ro");
    let portainer_read_only = format!("{portainer_mount}:ro");
    let mut args = vec![
        "run",
        "--pull",
        "never",
        "--rm",
        "--network",
        "none",
        "--user",
        "0:0",
        "--group-add",
        "65532",
    ];
    args.extend(HARDENING);
    args.extend([
        secrets_read_only.as_str(),
        portainer_read_only.as_str(),
        &image.tag,
        "check",
        "--connect",
        "--store",
        "file",
        "--key-path",
        "/run/secrets/portainer",
        "--key-target",
        "/run/check/portainer",
        "--password-path",
        "/run/portainer/admin-password",
        "--password-target",
        "/run/check/admin-password",
    ]);
    let read_back = docker(&args);
    assert_success(
        "check --connect of the written files as capability-less root",
        &read_back,
    );

    // 3. Into Docker's own tmpfs mounts, owned by the agent's user.
    let mut args = vec![
        "run",
        "--pull",
        "never",
        "--rm",
        "--network",
        "host",
        "--user",
        "65532:65532",
    ];
    args.extend(HARDENING);
    args.extend(store_env);
    args.extend([
        "--tmpfs",
        "/run/secrets:uid=65532,gid=65532,mode=0700",
        "--tmpfs",
        "/run/portainer:uid=65532,gid=65532,mode=0700",
        &image.tag,
        "fetch",
    ]);
    let tmpfs_fetch = docker(&args);
    assert_success("fetch into docker --tmpfs mounts", &tmpfs_fetch);
}
