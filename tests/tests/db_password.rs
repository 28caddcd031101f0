//! Resetting a user's password, checked with Go's bcrypt and real bbolt.

mod db_support;

use std::path::Path;

use portainer_key_agent::db::bolt;
use portainer_key_agent::db::{DbError, PortainerKey, reset_admin_password};

use db_support::{check_database, dump_database, make_database, run_reference, write_key};

fn bcrypt_matches(db: &Path, key: Option<&Path>, user: u64, password_file: &Path) -> bool {
    let user = user.to_string();
    let mut args = vec![
        "bcrypt",
        "-db",
        db.to_str().expect("utf-8"),
        "-user",
        &user,
        "-password-file",
        password_file.to_str().expect("utf-8"),
    ];
    if let Some(key) = key {
        args.extend(["-key", key.to_str().expect("utf-8")]);
    }
    run_reference(&args).status.success()
}

/// Dump lines other than user `user`'s record.
fn dump_without_user(dump: &str, user: u64) -> Vec<String> {
    let users = hex::encode("users");
    let key = hex::encode(user.to_be_bytes());
    let prefix = format!("value {users} {key} ");
    dump.lines()
        .filter(|line| !line.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn encrypted_reset_is_accepted_by_go_bcrypt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = write_key(dir.path(), "key", b"abc\n");
    let db = dir.path().join("portainer.edb");
    make_database(&db, Some(&key), &[]);
    let old_password = write_key(dir.path(), "old-password", b"initial-password");
    assert!(
        bcrypt_matches(&db, Some(&key), 1, &old_password),
        "fixture user 1 has the initial password"
    );
    let before = dump_database(&db, Some(&key));

    let report =
        reset_admin_password(dir.path(), Some(b"abc\n"), 1, b"n3w password").expect("resets");
    assert!(
        report.rewritten_in_place,
        "a 60-byte hash keeps the value length"
    );

    let new_password = write_key(dir.path(), "new-password", b"n3w password");
    assert!(bcrypt_matches(&db, Some(&key), 1, &new_password));
    assert!(!bcrypt_matches(&db, Some(&key), 1, &old_password));
    check_database(&db, Some(&key)).expect("bbolt checks the file");
    let after = dump_database(&db, Some(&key));
    assert_eq!(dump_without_user(&after, 1), dump_without_user(&before, 1));
}

#[test]
fn plaintext_reset_adds_missing_password() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("portainer.db");
    make_database(&db, None, &["-page-size", "16384"]);
    let before = dump_database(&db, None);

    // User 3 has no Password field, so the value grows and the file is rebuilt.
    let report = reset_admin_password(&db, None, 3, b"pw for user three").expect("resets");
    assert!(!report.rewritten_in_place);

    let password = write_key(dir.path(), "password", b"pw for user three");
    assert!(bcrypt_matches(&db, None, 3, &password));
    check_database(&db, None).expect("bbolt checks the rebuilt file");
    let after = dump_database(&db, None);
    assert_eq!(dump_without_user(&after, 3), dump_without_user(&before, 3));
}

#[test]
fn user_key_is_eight_byte_big_endian() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = write_key(dir.path(), "key", b"k");
    let db = dir.path().join("portainer.edb");
    make_database(&db, Some(&key), &["-keys", "10"]);
    let data = std::fs::read(&db).expect("read");
    let layout = bolt::parse(&data).expect("parses");
    let users = layout
        .buckets
        .iter()
        .find(|bucket| &data[bucket.name.clone()] == b"users")
        .expect("users bucket");
    let cipher = PortainerKey::from_key_file_bytes(b"k");
    for entry in layout.entries(users) {
        let record: serde_json::Value = serde_json::from_slice(
            &cipher
                .decrypt(&data[entry.value.clone()])
                .expect("decrypts"),
        )
        .expect("JSON");
        let id = record["Id"].as_u64().expect("Id");
        assert_eq!(&data[entry.key.clone()], id.to_be_bytes());
    }
}

#[test]
fn wrong_key_and_missing_user_fail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = write_key(dir.path(), "key", b"abc");
    let db = dir.path().join("portainer.edb");
    make_database(&db, Some(&key), &["-keys", "10"]);
    let before = std::fs::read(&db).expect("read");

    let error = reset_admin_password(&db, Some(b"abc\n"), 1, b"pw").expect_err("wrong key");
    assert!(error.is_key_mismatch(), "{error}");
    let error = reset_admin_password(&db, Some(b"abc"), 99, b"pw").expect_err("no user 99");
    assert!(
        matches!(error, DbError::UserNotFound { id: 99, .. }),
        "{error}"
    );
    let error =
        reset_admin_password(&db, None, 1, b"pw").expect_err("encrypted record without key");
    assert!(
        matches!(error, DbError::InvalidUserRecord { .. }),
        "{error}"
    );
    let error = reset_admin_password(&db, Some(b"abc"), 1, &[b'x'; 73]).expect_err("too long");
    assert!(matches!(error, DbError::InvalidInput { .. }), "{error}");
    assert_eq!(std::fs::read(&db).expect("read"), before);
}

#[test]
fn rust_bcrypt_accepts_reset_hash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("portainer.db");
    make_database(&db, None, &["-keys", "10"]);
    reset_admin_password(&db, None, 1, b"another").expect("resets");
    let data = std::fs::read(&db).expect("read");
    let layout = bolt::parse(&data).expect("parses");
    let users = layout
        .buckets
        .iter()
        .find(|bucket| &data[bucket.name.clone()] == b"users")
        .expect("users bucket");
    let entry = layout
        .entries(users)
        .iter()
        .find(|entry| data[entry.key.clone()] == 1u64.to_be_bytes())
        .expect("user 1");
    let record: serde_json::Value =
        serde_json::from_slice(&data[entry.value.clone()]).expect("JSON");
    let hash = record["Password"].as_str().expect("Password");
    assert!(hash.starts_with("$2a$10$"));
    assert!(bcrypt::verify("another", hash).expect("valid hash"));
    assert_eq!(record["Username"], "admin");
}

fn cli_reset(db: &Path, password_file: &Path, user: &str) -> std::process::Output {
    std::process::Command::new(integration_tests::paths::agent_binary())
        .args(["db", "reset-admin-password", "--db"])
        .arg(db)
        .arg("--password-file")
        .arg(password_file)
        .args(["--user-id", user])
        .output()
        .expect("run the agent")
}

#[test]
fn cli_rejects_hash_and_missing_user() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = dir.path().join("portainer.db");
    make_database(&database, None, &["-keys", "20"]);
    let before = std::fs::read(&database).expect("read");
    let hash = dir.path().join("hash.txt");
    let hash_text = bcrypt::hash("pka-plain", 4).expect("hash");
    std::fs::write(&hash, format!("{hash_text}\n")).expect("write hash");
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, "pka-new-password").expect("write password");

    let output = cli_reset(&database, &hash, "1");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("plaintext password"), "{stderr}");
    assert!(!stderr.contains("--admin-password"), "{stderr}");

    let output = cli_reset(&database, &plain, "99");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(66), "{stderr}");
    assert_eq!(std::fs::read(&database).expect("read"), before);
}
