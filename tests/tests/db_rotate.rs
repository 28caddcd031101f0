//! Key rotation, checked with real bbolt, including processes killed mid-way.

mod db_support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use portainer_key_agent::db::bolt;
use portainer_key_agent::db::{
    BackupFileOutcome, DbError, FileOutcome, RotateOptions, RotateStep, rotate, verify,
};

use db_support::{
    check_database, count_nonces_in, dump_database, make_database, read_nonces, write_key,
};

const OLD_KEY: &[u8] = b"old key from a swarm secret\n";
const NEW_KEY: &[u8] = b"new key from a secret store";

struct Fixture {
    dir: tempfile::TempDir,
    old_key: PathBuf,
    new_key: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let old_key = write_key(dir.path(), "old.key", OLD_KEY);
        let new_key = write_key(dir.path(), "new.key", NEW_KEY);
        std::fs::create_dir(dir.path().join("data")).expect("data dir");
        Fixture {
            dir,
            old_key,
            new_key,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn database(&self) -> PathBuf {
        self.data_dir().join("portainer.edb")
    }

    fn backup_file(&self) -> PathBuf {
        self.data_dir().join("backups/portainer.edb.bak")
    }

    /// Writes the database under the old key; returns the nonces used.
    fn make(&self, extra: &[&str]) -> Vec<[u8; 12]> {
        let nonces = self.dir.path().join("nonces.txt");
        let mut args = vec!["-nonces-out", nonces.to_str().expect("utf-8")];
        args.extend(extra);
        make_database(&self.database(), Some(&self.old_key), &args);
        read_nonces(&nonces)
    }

    fn make_backup_file(&self, key: &Path) {
        std::fs::create_dir_all(self.backup_file().parent().expect("parent")).expect("backups dir");
        make_database(
            &self.backup_file(),
            Some(key),
            &["-keys", "50", "-seed", "7"],
        );
    }

    /// Returns which key opens `path`, asserting that exactly one does, and
    /// that bbolt's checker agrees.
    fn key_that_opens(&self, path: &Path) -> &'static str {
        let old = verify(path, OLD_KEY);
        let new = verify(path, NEW_KEY);
        let (name, key_file) = match (&old, &new) {
            (Ok(_), Err(error)) if error.is_key_mismatch() => ("old", &self.old_key),
            (Err(error), Ok(_)) if error.is_key_mismatch() => ("new", &self.new_key),
            _ => panic!("expected exactly one key to open {path:?}: old {old:?}, new {new:?}"),
        };
        check_database(path, Some(key_file))
            .expect("bbolt checks the file with the key that opens it");
        name
    }

    fn leftover_temp_files(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for dir in [self.data_dir(), self.data_dir().join("backups")] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("dir entry").path();
                if path.to_string_lossy().ends_with("-tmp") {
                    found.push(path);
                }
            }
        }
        found
    }
}

fn rotate_default(path: &Path) -> Result<portainer_key_agent::db::RotateReport, DbError> {
    rotate(path, OLD_KEY, NEW_KEY, &RotateOptions::default())
}

/// Options that make a database of several MiB whose overflow values cross
/// MiB boundaries, where the rotation cuts its work into chunks.
const MULTI_MIB: [&str; 4] = ["-size-mib", "6", "-large", "120"];

#[test]
fn rotated_database_passes_bbolt_check() {
    for extra in [
        &[][..],
        &["-no-freelist-sync"],
        &["-page-size", "16384"],
        &["-old-version"],
        &MULTI_MIB[..],
        &[&MULTI_MIB[..], &["-page-size", "1024"]].concat()[..],
        &[
            &MULTI_MIB[..],
            &["-page-size", "16384", "-no-freelist-sync"],
        ]
        .concat()[..],
    ] {
        let fixture = Fixture::new();
        let nonces = fixture.make(extra);
        let before = dump_database(&fixture.database(), Some(&fixture.old_key));
        assert!(count_nonces_in(&std::fs::read(fixture.database()).expect("read"), &nonces) > 0);

        let report = rotate_default(&fixture.data_dir()).expect("rotates");
        assert!(
            matches!(report.outcome, FileOutcome::Rotated { .. }),
            "{report:?}"
        );
        assert_eq!(report.backup_file_outcome, BackupFileOutcome::Absent);

        check_database(&fixture.database(), Some(&fixture.new_key))
            .expect("bbolt checks the rotated file");
        assert!(check_database(&fixture.database(), Some(&fixture.old_key)).is_err());
        let after = dump_database(&fixture.database(), Some(&fixture.new_key));
        assert_eq!(
            after, before,
            "plaintext, keys and sequences are unchanged ({extra:?})"
        );
    }
}

#[test]
fn multi_mib_fixture_has_values_across_mib_boundaries() {
    let fixture = Fixture::new();
    fixture.make(&MULTI_MIB);
    let data = std::fs::read(fixture.database()).expect("read");
    let layout = bolt::parse(&data).expect("parses");
    let crossing = layout
        .values
        .iter()
        .filter(|entry| entry.value.start >> 20 != (entry.value.end - 1) >> 20)
        .count();
    assert!(
        crossing > 0,
        "no value crosses a MiB boundary in {} bytes",
        data.len()
    );
}

#[test]
fn rotation_leaves_no_old_ciphertext() {
    for extra in [
        &[][..],
        &["-no-freelist-sync"],
        &["-page-size", "16384"],
        &MULTI_MIB[..],
    ] {
        let fixture = Fixture::new();
        let nonces = fixture.make(extra);
        rotate_default(&fixture.database()).expect("rotates");
        let data = std::fs::read(fixture.database()).expect("read");
        assert_eq!(
            count_nonces_in(&data, &nonces),
            0,
            "old nonces remain ({extra:?})"
        );
    }
}

#[test]
fn both_meta_pages_point_at_rotated_tree() {
    let fixture = Fixture::new();
    fixture.make(&[]);
    rotate_default(&fixture.database()).expect("rotates");
    let data = std::fs::read(fixture.database()).expect("read");
    let layout = bolt::parse(&data).expect("parses");

    // Damage each meta page in turn; the other must carry the same tree.
    for page in 0..2 {
        let mut damaged = data.clone();
        damaged[page * layout.page_size + 16] ^= 0xff;
        let other = bolt::parse(&damaged).expect("the other meta page is valid");
        assert_eq!(other.meta.root, layout.meta.root);
        assert_eq!(other.meta.freelist, layout.meta.freelist);
        assert_eq!(other.meta.high_water, layout.meta.high_water);
        let mut path = fixture.dir.path().join(format!("meta-{page}.db"));
        path.set_extension("db");
        std::fs::write(&path, &damaged).expect("write");
        check_database(&path, Some(&fixture.new_key)).expect("bbolt opens the other meta page");
    }
}

#[test]
fn wrong_old_key_changes_nothing() {
    let fixture = Fixture::new();
    fixture.make(&["-keys", "100"]);
    let before = std::fs::read(fixture.database()).expect("read");
    let error = rotate(
        &fixture.database(),
        b"not the key",
        NEW_KEY,
        &RotateOptions::default(),
    )
    .expect_err("wrong key fails");
    assert!(error.is_key_mismatch(), "{error}");
    assert_eq!(std::fs::read(fixture.database()).expect("read"), before);
    assert!(fixture.leftover_temp_files().is_empty());
}

#[test]
fn second_run_reports_already_rotated() {
    let fixture = Fixture::new();
    fixture.make(&["-keys", "100"]);
    rotate_default(&fixture.database()).expect("rotates");
    let report = rotate_default(&fixture.database()).expect("second run succeeds");
    assert_eq!(report.outcome, FileOutcome::AlreadyNewKey);
    assert_eq!(fixture.key_that_opens(&fixture.database()), "new");
}

#[test]
fn backup_is_kept_only_when_asked() {
    let fixture = Fixture::new();
    fixture.make(&["-keys", "100"]);
    let entries_before = std::fs::read_dir(fixture.data_dir()).expect("list").count();
    rotate_default(&fixture.database()).expect("rotates");
    let entries_after = std::fs::read_dir(fixture.data_dir()).expect("list").count();
    assert_eq!(
        entries_after, entries_before,
        "no extra files without a backup option"
    );

    let backup = fixture.dir.path().join("before-rotation.edb");
    let options = RotateOptions {
        backup: Some(backup.clone()),
        on_step: None,
    };
    let report = rotate(&fixture.database(), NEW_KEY, OLD_KEY, &options).expect("rotates back");
    assert_eq!(report.backup, Some(backup.clone()));
    check_database(&backup, Some(&fixture.new_key)).expect("backup keeps the previous key");
    check_database(&fixture.database(), Some(&fixture.old_key)).expect("rotated back");
}

#[test]
fn portainer_backup_file_is_rotated() {
    let fixture = Fixture::new();
    fixture.make(&["-keys", "100"]);
    fixture.make_backup_file(&fixture.old_key);
    let report = rotate_default(&fixture.data_dir()).expect("rotates");
    assert!(matches!(
        report.backup_file_outcome,
        BackupFileOutcome::Done(FileOutcome::Rotated { .. })
    ));
    check_database(&fixture.backup_file(), Some(&fixture.new_key)).expect("backup file rotated");
}

#[test]
fn foreign_backup_file_is_reported() {
    let fixture = Fixture::new();
    fixture.make(&["-keys", "100"]);
    let other_key = write_key(fixture.dir.path(), "other.key", b"another key");
    fixture.make_backup_file(&other_key);
    let before = std::fs::read(fixture.backup_file()).expect("read");

    let report = rotate_default(&fixture.data_dir()).expect("rotates the database");
    let BackupFileOutcome::Skipped { reason } = &report.backup_file_outcome else {
        panic!("expected the backup file to be skipped: {report:?}");
    };
    assert!(reason.contains("does not open"), "{reason}");
    assert_eq!(std::fs::read(fixture.backup_file()).expect("read"), before);
}

#[test]
fn locked_database_is_not_rotated() {
    let fixture = Fixture::new();
    fixture.make(&["-keys", "20"]);
    let before = std::fs::read(fixture.database()).expect("read");
    let holder = std::fs::File::open(fixture.database()).expect("open");
    rustix::fs::flock(&holder, rustix::fs::FlockOperation::NonBlockingLockShared).expect("lock");

    let error = rotate_default(&fixture.database()).expect_err("locked");
    assert!(matches!(error, DbError::Locked { .. }), "{error}");
    drop(holder);
    assert_eq!(std::fs::read(fixture.database()).expect("read"), before);
}

// Killing the process: a child runs `rotate_worker` and is killed with
// SIGKILL, either by its own step hook or by the parent after a delay.

const WORKER_DIR: &str = "DB_ROTATE_WORKER_DIR";
const WORKER_KILL_AT: &str = "DB_ROTATE_WORKER_KILL_AT";

fn kill_at_step(path: &Path, step: RotateStep) {
    let Ok(target) = std::env::var(WORKER_KILL_AT) else {
        return;
    };
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    if target == format!("{file}:{step:?}") {
        let pid = rustix::process::getpid();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

#[test]
#[ignore = "child process started by the kill tests"]
fn rotate_worker() {
    let Ok(dir) = std::env::var(WORKER_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let options = RotateOptions {
        backup: Some(dir.with_file_name("worker-backup.edb")),
        on_step: Some(kill_at_step),
    };
    rotate(&dir, OLD_KEY, NEW_KEY, &options).expect("worker rotates");
}

fn spawn_worker(data_dir: &Path, kill_at: Option<&str>) -> std::process::Child {
    // /proc/self/exe still works if a concurrent build replaced this binary.
    let mut command = Command::new("/proc/self/exe");
    command
        .args([
            "--exact",
            "rotate_worker",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WORKER_DIR, data_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(kill_at) = kill_at {
        command.env(WORKER_KILL_AT, kill_at);
    }
    command.spawn().expect("start worker")
}

/// Checks the state after a kill, then finishes the rotation and checks again.
fn assert_recovers(fixture: &Fixture, nonces: &[[u8; 12]]) {
    let opened_by = fixture.key_that_opens(&fixture.database());
    if fixture.backup_file().exists() {
        fixture.key_that_opens(&fixture.backup_file());
    }

    let report = rotate_default(&fixture.data_dir()).expect("the next run finishes the rotation");
    match opened_by {
        "old" => assert!(matches!(report.outcome, FileOutcome::Rotated { .. })),
        _ => assert_eq!(report.outcome, FileOutcome::AlreadyNewKey),
    }
    assert_eq!(fixture.key_that_opens(&fixture.database()), "new");
    assert_eq!(fixture.key_that_opens(&fixture.backup_file()), "new");
    assert!(
        fixture.leftover_temp_files().is_empty(),
        "{:?}",
        fixture.leftover_temp_files()
    );
    let data = std::fs::read(fixture.database()).expect("read");
    assert_eq!(count_nonces_in(&data, nonces), 0);
}

#[test]
fn rotation_survives_kill_at_every_step() {
    let common = [
        RotateStep::Locked,
        RotateStep::Reencrypted,
        RotateStep::CopyWritten,
        RotateStep::CopyVerified,
        RotateStep::Replaced,
    ];
    // Only the database gets the requested backup copy, so only it has
    // the BackupWritten step.
    let database_steps = [&common[..], &[RotateStep::BackupWritten]].concat();
    for (file, steps) in [
        ("portainer.edb", database_steps),
        ("portainer.edb.bak", common.to_vec()),
    ] {
        for step in steps {
            let fixture = Fixture::new();
            let nonces = fixture.make(&["-keys", "300"]);
            fixture.make_backup_file(&fixture.old_key);

            let kill_at = format!("{file}:{step:?}");
            let status = spawn_worker(&fixture.data_dir(), Some(&kill_at))
                .wait()
                .expect("worker exits");
            assert_eq!(
                status.signal(),
                Some(9),
                "worker was killed at {kill_at}: {status:?}"
            );
            assert_recovers(&fixture, &nonces);
        }
    }
}

#[test]
fn rotation_survives_kill_at_random_times() {
    let fixture = Fixture::new();
    let nonces = fixture.make(&["-size-mib", "4"]);
    fixture.make_backup_file(&fixture.old_key);
    let pristine = fixture.dir.path().join("pristine.edb");
    let pristine_backup = fixture.dir.path().join("pristine.bak");
    std::fs::copy(fixture.database(), &pristine).expect("copy");
    std::fs::copy(fixture.backup_file(), &pristine_backup).expect("copy");

    let started = Instant::now();
    let status = spawn_worker(&fixture.data_dir(), None)
        .wait()
        .expect("worker exits");
    assert!(status.success(), "uninterrupted worker: {status:?}");
    let full_run = started.elapsed();

    let attempts = 12u32;
    for attempt in 0..attempts {
        std::fs::copy(&pristine, fixture.database()).expect("restore");
        std::fs::copy(&pristine_backup, fixture.backup_file()).expect("restore");
        let delay = full_run * attempt / attempts + Duration::from_millis(u64::from(attempt) * 3);
        let mut worker = spawn_worker(&fixture.data_dir(), None);
        std::thread::sleep(delay);
        let _ = worker.kill();
        worker.wait().expect("worker exits");
        assert_recovers(&fixture, &nonces);
    }
}

fn rotate_with_backup(fixture: &Fixture, backup: PathBuf) -> Result<(), DbError> {
    let options = RotateOptions {
        backup: Some(backup),
        on_step: None,
    };
    rotate(&fixture.data_dir(), OLD_KEY, NEW_KEY, &options).map(|_| ())
}

#[test]
fn backup_path_of_a_rewritten_file_is_rejected() {
    let fixture = Fixture::new();
    fixture.make(&[]);
    let before = std::fs::read(fixture.database()).expect("read");
    std::fs::create_dir(fixture.data_dir().join("backups")).expect("backups dir");

    for backup in [
        fixture.database(),
        fixture.data_dir().join("../data/portainer.edb"),
        fixture.data_dir().join("portainer.edb.rotate-tmp"),
        fixture.backup_file(),
    ] {
        let error = rotate_with_backup(&fixture, backup.clone()).expect_err("rejected");
        assert!(
            matches!(error, DbError::InvalidInput { .. }),
            "{backup:?}: {error}"
        );
        assert_eq!(std::fs::read(fixture.database()).expect("read"), before);
    }
}

#[test]
fn stale_backup_copy_is_removed_on_rerun() {
    let fixture = Fixture::new();
    fixture.make(&[]);
    let backup = fixture.dir.path().join("old-copy.edb");
    std::fs::write(
        fixture.dir.path().join("old-copy.edb.backup-tmp"),
        b"left by a kill",
    )
    .expect("write stale copy");

    rotate_with_backup(&fixture, backup.clone()).expect("rotates");

    assert_eq!(fixture.key_that_opens(&backup), "old");
    assert_eq!(fixture.key_that_opens(&fixture.database()), "new");
    assert!(!fixture.dir.path().join("old-copy.edb.backup-tmp").exists());
}

#[test]
fn symlinked_database_is_rejected() {
    let fixture = Fixture::new();
    fixture.make(&[]);
    let real = fixture.dir.path().join("real.edb");
    std::fs::rename(fixture.database(), &real).expect("move");
    std::os::unix::fs::symlink(&real, fixture.database()).expect("link");

    let error = rotate_default(&fixture.data_dir()).expect_err("rejected");

    assert!(matches!(error, DbError::SymbolicLink { .. }), "{error}");
    let link = std::fs::symlink_metadata(fixture.database()).expect("link stays");
    assert!(link.file_type().is_symlink());
    assert_eq!(fixture.key_that_opens(&real), "old");
}

#[test]
fn cli_error_names_the_cause() {
    let fixture = Fixture::new();
    fixture.make(&[]);
    let backup = fixture.dir.path().join("missing-dir/copy.edb");

    let output = Command::new(integration_tests::paths::agent_binary())
        .args(["db", "rotate", "--db"])
        .arg(fixture.data_dir())
        .arg("--old-key-file")
        .arg(&fixture.old_key)
        .arg("--new-key-file")
        .arg(&fixture.new_key)
        .arg("--backup")
        .arg(&backup)
        .output()
        .expect("run the agent");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(73), "{stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
}

#[test]
fn cli_exit_status_survives_unwritable_stderr() {
    let fixture = Fixture::new();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full");

    let status = Command::new(integration_tests::paths::agent_binary())
        .args(["db", "verify", "--db"])
        .arg(fixture.data_dir())
        .arg("--key-file")
        .arg(fixture.dir.path().join("missing.key"))
        .stderr(full)
        .status()
        .expect("run the agent");

    assert_eq!(status.code(), Some(66), "{status}");
}

#[test]
fn truncated_newest_transaction_stops_rotation() {
    let fixture = Fixture::new();
    fixture.make(&[]);
    let data = std::fs::read(fixture.database()).expect("read");
    let layout = bolt::parse(&data).expect("parses");
    let last_page = (layout.meta.high_water - 1) as usize;
    std::fs::write(fixture.database(), &data[..last_page * layout.page_size]).expect("truncate");
    let before = std::fs::read(fixture.database()).expect("read");

    let report = verify(&fixture.database(), OLD_KEY).expect("the older transaction opens");
    let skipped = report
        .skipped_newer_meta
        .expect("the lost transaction is reported");
    assert_eq!(skipped.txid, layout.meta.txid);

    let error = rotate_default(&fixture.data_dir()).expect_err("stops");
    assert!(matches!(error, DbError::LostTransaction { .. }), "{error}");
    assert_eq!(std::fs::read(fixture.database()).expect("read"), before);
    assert!(fixture.leftover_temp_files().is_empty());
}
