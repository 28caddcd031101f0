//! The database reader and `verify` against files written by real bbolt.

mod db_support;

use std::path::Path;
use std::process::{Command, Stdio};

use portainer_key_agent::db::bolt::{self, FreelistForm};
use portainer_key_agent::db::{DbError, verify};
use proptest::prelude::*;

use db_support::{check_database, dump_database, dump_with_reader, make_database, write_key};

/// Every shape the reference program can write: page sizes, freelist forms,
/// plaintext and encrypted, old and new version records.
const SHAPES: [(&str, &[&str]); 5] = [
    ("default", &[]),
    ("no-freelist-sync", &["-no-freelist-sync"]),
    ("page-16k", &["-page-size", "16384"]),
    (
        "page-16k-no-freelist",
        &["-page-size", "16384", "-no-freelist-sync"],
    ),
    ("old-version", &["-old-version", "-page-size", "8192"]),
];

#[test]
fn reader_matches_bbolt_for_every_shape() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = write_key(dir.path(), "key", b"abc");
    for (name, extra) in SHAPES {
        for encrypted in [false, true] {
            let path = dir.path().join(format!("{name}-{encrypted}.db"));
            let key_path = encrypted.then_some(key.as_path());
            make_database(&path, key_path, extra);

            let expected = dump_database(&path, key_path);
            let actual = dump_with_reader(&path, encrypted.then_some(&b"abc"[..]));
            assert_eq!(actual, expected, "shape {name}, encrypted {encrypted}");
        }
    }
}

#[test]
fn reader_reports_freelist_form() {
    let dir = tempfile::tempdir().expect("temp dir");
    let persisted = dir.path().join("persisted.db");
    let not_persisted = dir.path().join("not-persisted.db");
    make_database(&persisted, None, &[]);
    make_database(&not_persisted, None, &["-no-freelist-sync"]);

    let data = std::fs::read(&persisted).expect("read");
    let layout = bolt::parse(&data).expect("parses");
    assert!(
        matches!(layout.freelist, FreelistForm::Persisted { free_pages, .. } if free_pages > 0)
    );

    let data = std::fs::read(&not_persisted).expect("read");
    let layout = bolt::parse(&data).expect("parses");
    assert_eq!(layout.freelist, FreelistForm::NotPersisted);
}

#[test]
fn verify_accepts_right_key_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = write_key(dir.path(), "key", b"abc\n");
    let path = dir.path().join("portainer.edb");
    make_database(&path, Some(&key), &[]);
    let expected = check_database(&path, Some(&key)).expect("bbolt checks the fixture");

    let report = verify(dir.path(), b"abc\n").expect("right key opens");
    assert_eq!(
        report.encrypted_values + report.pass_through_values,
        db_support::checked_value_count(&expected)
    );
    assert_eq!(report.pass_through_values, 2);
    let version = report.schema_version.expect("schema version found");
    assert_eq!(version.version, "2.21.0");
    assert_eq!(version.key, "VERSION");
    let users = report
        .buckets
        .iter()
        .find(|bucket| bucket.name == "users")
        .expect("users bucket");
    assert_eq!(users.values, 3);
    assert_eq!(users.sequence, 3);

    for wrong in [&b"abc"[..], b"abc\n\n", b"", b"ABC\n"] {
        let error = verify(&path, wrong).expect_err("wrong key fails");
        assert!(error.is_key_mismatch(), "{error}");
    }
}

#[test]
fn verify_reads_old_version_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = write_key(dir.path(), "key", b"abc");
    let path = dir.path().join("portainer.edb");
    make_database(&path, Some(&key), &["-old-version"]);
    let report = verify(&path, b"abc").expect("opens");
    let version = report.schema_version.expect("schema version found");
    assert_eq!(version.key, "DB_VERSION");
    assert_eq!(version.version, "35");
}

#[test]
fn verify_report_has_no_plaintext() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = write_key(dir.path(), "key", b"abc");
    let path = dir.path().join("portainer.edb");
    make_database(&path, Some(&key), &[]);
    let report = verify(&path, b"abc").expect("opens");
    let text = format!("{report:?}");
    assert!(!text.contains("admin"), "user record leaked: {text}");
    assert!(!text.contains("$2a$"), "password hash leaked");
    assert!(!text.contains("InstanceID"));
}

#[test]
fn verify_flags_single_damaged_value() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = write_key(dir.path(), "key", b"abc");
    let path = dir.path().join("portainer.edb");
    make_database(&path, Some(&key), &[]);
    let mut data = std::fs::read(&path).expect("read");
    let layout = bolt::parse(&data).expect("parses");
    let (index, victim) = layout
        .values
        .iter()
        .enumerate()
        .find(|(_, entry)| entry.value.len() > 40)
        .expect("a value");
    let bucket = layout
        .buckets
        .iter()
        .find(|bucket| bucket.entries.contains(&index))
        .expect("the value's bucket");
    let bucket_name = String::from_utf8_lossy(&data[bucket.name.clone()]).into_owned();
    data[victim.value.start + 20] ^= 0x40;
    std::fs::write(&path, &data).expect("write");

    match verify(&path, b"abc") {
        Err(DbError::ValuesDoNotAuthenticate {
            failed,
            first_bucket,
            ..
        }) => {
            assert_eq!(failed, 1);
            assert_eq!(first_bucket, bucket_name);
        }
        other => panic!("expected one failed value, got {other:?}"),
    }
}

#[test]
fn verify_plaintext_database_is_key_mismatch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("portainer.db");
    make_database(&path, None, &[]);
    let error = verify(&path, b"abc").expect_err("plaintext does not authenticate");
    assert!(error.is_key_mismatch());
}

fn assert_no_panic_on(data: &[u8]) {
    // Both outcomes are fine; the reader must only not panic or read out of
    // bounds (which would panic in safe Rust).
    let _ = bolt::parse(data);
}

#[test]
fn every_meta_byte_flip_is_handled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("portainer.db");
    make_database(&path, None, &["-keys", "300"]);
    let original = std::fs::read(&path).expect("read");
    let layout = bolt::parse(&original).expect("parses");
    let page_size = layout.page_size;

    let active = layout.active_meta_page as usize;
    let inactive = 1 - active;
    for offset in 0..page_size {
        let mut data = original.clone();
        data[inactive * page_size + offset] ^= 0xff;
        let parsed = bolt::parse(&data).expect("a damaged inactive meta page is ignored");
        assert_eq!(parsed.meta, layout.meta, "offset {offset}");
    }
    for offset in 16..80 {
        let mut data = original.clone();
        data[active * page_size + offset] ^= 0xff;
        // bbolt falls back to the older meta page, whose tree may be gone.
        if let Ok(parsed) = bolt::parse(&data) {
            assert!(parsed.meta.txid < layout.meta.txid, "offset {offset}");
        }
    }
    for offset in 16..80 {
        let mut data = original.clone();
        data[offset] ^= 0x01;
        data[page_size + offset] ^= 0x01;
        assert!(bolt::parse(&data).is_err(), "offset {offset}");
    }
}

#[test]
fn truncated_files_are_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("portainer.db");
    make_database(&path, None, &["-keys", "500", "-large", "2"]);
    let original = std::fs::read(&path).expect("read");
    let layout = bolt::parse(&original).expect("parses");
    let needed = layout.meta.high_water as usize * layout.page_size;

    for len in (0..needed).step_by(509).chain([needed - 1, 1, 79, 80]) {
        assert!(
            bolt::parse(&original[..len]).is_err(),
            "length {len} parsed"
        );
    }
}

#[test]
fn locked_database_is_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("portainer.edb");
    let key = write_key(dir.path(), "key", b"abc");
    make_database(&path, Some(&key), &["-keys", "10"]);

    // bbolt itself holds the lock, as a running Portainer does.
    let mut holder = Command::new(db_support::reference_program())
        .args(["hold", "-db", path.to_str().expect("utf-8")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start lock holder");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("holder reports the lock");
    assert_eq!(line.trim(), "locked");

    let error = verify(&path, b"abc").expect_err("locked file is rejected");
    assert!(matches!(error, DbError::Locked { .. }), "{error}");
    assert!(error.to_string().contains(path.to_str().expect("utf-8")));

    drop(holder.stdin.take());
    holder.wait().expect("holder exits");
    verify(&path, b"abc").expect("opens once the lock is released");
}

#[test]
fn flock_held_by_test_is_respected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("portainer.edb");
    let key = write_key(dir.path(), "key", b"abc");
    make_database(&path, Some(&key), &["-keys", "10"]);

    let holder = std::fs::File::open(&path).expect("open");
    rustix::fs::flock(
        &holder,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .expect("lock");
    let error = verify(&path, b"abc").expect_err("locked file is rejected");
    assert!(matches!(error, DbError::Locked { .. }), "{error}");
    drop(holder);
}

fn fixture_bytes() -> &'static [u8] {
    static FIXTURE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fuzz.db");
        make_database(
            &path,
            None,
            &["-keys", "400", "-large", "2", "-page-size", "4096"],
        );
        std::fs::read(Path::new(&path)).expect("read fixture")
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut data = fixture_bytes().to_vec();
        for (index, byte) in flips {
            let position = index.index(data.len());
            data[position] ^= byte | 1;
        }
        if truncate {
            data.truncate(cut.index(data.len()));
        }
        assert_no_panic_on(&data);
    }

    #[test]
    fn mutated_page_headers_never_panic(
        page in 0usize..40,
        offset in 0usize..64,
        value in any::<u64>(),
    ) {
        let mut data = fixture_bytes().to_vec();
        let position = (page * 4096 + offset).min(data.len() - 8);
        data[position..position + 8].copy_from_slice(&value.to_le_bytes());
        assert_no_panic_on(&data);
    }
}

fn cli_verify(db: &Path, key_file: &Path) -> std::process::Output {
    Command::new(integration_tests::paths::agent_binary())
        .args(["db", "verify", "--db"])
        .arg(db)
        .arg("--key-file")
        .arg(key_file)
        .output()
        .expect("run the agent")
}

#[test]
fn verify_names_the_newline_that_opens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let with_newline = write_key(dir.path(), "with.key", b"pka-newline-key\n");
    let without_newline = write_key(dir.path(), "without.key", b"pka-newline-key");
    let database = dir.path().join("portainer.edb");
    make_database(&database, Some(&with_newline), &["-keys", "20"]);

    let output = cli_verify(&database, &without_newline);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("followed by one newline"), "{stderr}");
    assert!(!stderr.contains("pka-newline-key"), "{stderr}");

    let reverse = dir.path().join("reverse.edb");
    make_database(&reverse, Some(&without_newline), &["-keys", "20"]);
    let output = cli_verify(&reverse, &with_newline);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without its trailing newline"), "{stderr}");
}

#[test]
fn verify_without_newline_cause_gives_plain_mismatch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = write_key(dir.path(), "right.key", b"right key");
    let wrong = write_key(dir.path(), "wrong.key", b"wrong key");
    let database = dir.path().join("portainer.edb");
    make_database(&database, Some(&key), &["-keys", "20"]);

    let output = cli_verify(&database, &wrong);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the key does not open"), "{stderr}");
    assert!(!stderr.contains("newline"), "{stderr}");
}

#[test]
fn verify_of_plaintext_database_suggests_encrypt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = write_key(dir.path(), "some.key", b"some key");
    make_database(&dir.path().join("portainer.db"), None, &["-keys", "20"]);

    let by_directory = cli_verify(dir.path(), &key);
    let by_file = cli_verify(&dir.path().join("portainer.db"), &key);

    for output in [by_directory, by_file] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("plaintext database"), "{stderr}");
        assert!(stderr.contains("db encrypt"), "{stderr}");
    }
}
