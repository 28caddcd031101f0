//! Encrypting a plaintext database, checked with real bbolt.

mod db_support;

use portainer_key_agent::db::{DbError, EncryptOptions, encrypt, verify};

use db_support::{check_database, dump_database, make_database, write_key};

#[test]
fn encrypted_copy_passes_bbolt_check() {
    for extra in [
        &[][..],
        &["-no-freelist-sync"],
        &["-page-size", "16384"],
        &["-old-version"],
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = write_key(dir.path(), "key", b"abc\n");
        let plaintext = dir.path().join("portainer.db");
        make_database(&plaintext, None, extra);
        let original = std::fs::read(&plaintext).expect("read");
        let plaintext_dump = dump_database(&plaintext, None);

        let report = encrypt(dir.path(), b"abc\n", &EncryptOptions::default()).expect("encrypts");
        let encrypted = dir.path().join("portainer.edb");
        assert_eq!(report.target, encrypted);
        assert!(!report.plaintext_removed);

        let checked =
            check_database(&encrypted, Some(&key)).expect("bbolt checks the encrypted file");
        assert_eq!(db_support::checked_value_count(&checked), report.values);
        let decrypted_dump = dump_database(&encrypted, Some(&key));
        assert_eq!(
            decrypted_dump, plaintext_dump,
            "buckets, keys, sequences and values kept ({extra:?})"
        );
        assert_eq!(
            std::fs::read(&plaintext).expect("read"),
            original,
            "plaintext untouched"
        );
        verify(&encrypted, b"abc\n").expect("verify opens it");
    }
}

#[test]
fn encrypted_file_holds_no_plaintext_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_database(&dir.path().join("portainer.db"), None, &["-keys", "200"]);
    encrypt(dir.path(), b"key", &EncryptOptions::default()).expect("encrypts");
    let data = std::fs::read(dir.path().join("portainer.edb")).expect("read");
    let text = String::from_utf8_lossy(&data);
    assert!(!text.contains("\"Username\""));
    assert!(!text.contains("SchemaVersion"));
    assert!(!text.contains("{\"Data\":"));
}

#[test]
fn existing_encrypted_database_is_not_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_database(&dir.path().join("portainer.db"), None, &["-keys", "20"]);
    std::fs::write(dir.path().join("portainer.edb"), b"existing").expect("write");
    let error = encrypt(dir.path(), b"key", &EncryptOptions::default()).expect_err("refuses");
    assert!(matches!(error, DbError::AlreadyExists { .. }), "{error}");
    assert_eq!(
        std::fs::read(dir.path().join("portainer.edb")).expect("read"),
        b"existing"
    );
}

#[test]
fn plaintext_is_removed_only_when_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = write_key(dir.path(), "key", b"key");
    make_database(&dir.path().join("portainer.db"), None, &["-keys", "20"]);
    let options = EncryptOptions {
        remove_plaintext: true,
    };
    let report = encrypt(&dir.path().join("portainer.db"), b"key", &options).expect("encrypts");
    assert!(report.plaintext_removed);
    assert!(!dir.path().join("portainer.db").exists());
    check_database(&dir.path().join("portainer.edb"), Some(&key)).expect("bbolt checks it");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|entry| entry.expect("entry").file_name())
        .filter(|name| name.to_string_lossy().ends_with("-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn empty_key_is_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_database(&dir.path().join("portainer.db"), None, &["-keys", "5"]);
    let error = encrypt(dir.path(), b"", &EncryptOptions::default()).expect_err("refuses");
    assert!(matches!(error, DbError::InvalidInput { .. }), "{error}");
    assert!(!dir.path().join("portainer.edb").exists());
}

#[test]
fn locked_plaintext_is_not_encrypted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plaintext = dir.path().join("portainer.db");
    make_database(&plaintext, None, &["-keys", "5"]);
    let holder = std::fs::File::open(&plaintext).expect("open");
    rustix::fs::flock(
        &holder,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .expect("lock");
    let error = encrypt(dir.path(), b"key", &EncryptOptions::default()).expect_err("locked");
    assert!(matches!(error, DbError::Locked { .. }), "{error}");
    assert!(!dir.path().join("portainer.edb").exists());
}

#[test]
fn encrypted_source_is_not_encrypted_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = write_key(dir.path(), "first.key", b"first key");
    let source = dir.path().join("portainer.db");
    make_database(&source, Some(&key), &[]);
    let before = std::fs::read(&source).expect("read");

    let options = EncryptOptions {
        remove_plaintext: true,
    };
    let error = encrypt(dir.path(), b"second key", &options).expect_err("rejected");

    assert!(matches!(error, DbError::InvalidInput { .. }), "{error}");
    assert_eq!(std::fs::read(&source).expect("source kept"), before);
    assert!(!dir.path().join("portainer.edb").exists());
}
