//! From a stored value to the exact bytes of a file: field, encoding, newline, rules.

use backends::{SecretBytes, SecretValue};
use base64::Engine;
use serde_json::Value;
use zeroize::Zeroize;

use crate::config::{Encoding, NewlinePolicy, SecretKind, SecretSpec};

/// bcrypt reads at most 72 bytes; Portainer treats a longer password as fatal.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// A value that cannot be written, with the reason and the fix. Carries no secret.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error(
        "secret {secret:?}: JSON field {field:?} not found in {path:?}; fields present: [{present}]"
    )]
    FieldNotFound {
        secret: String,
        path: String,
        field: String,
        present: String,
    },

    #[error("secret {secret:?}: invalid value from {path:?}: {reason}")]
    Invalid {
        secret: String,
        path: String,
        reason: String,
    },
}

/// Bytes ready to write, with the version they came from.
#[derive(Debug)]
pub struct Prepared {
    pub bytes: SecretBytes,
    pub version: String,
}

/// Turns a fetched value into file content and checks it against the secret's kind.
///
/// Warnings about surprising bytes are logged with the secret's name, never the value.
pub fn prepare(secret: &SecretSpec, value: SecretValue) -> Result<Prepared, ValueError> {
    let invalid = |reason: String| ValueError::Invalid {
        secret: secret.name.clone(),
        path: secret.path.clone(),
        reason,
    };

    let selected = select_field(secret, &value)?;
    let mut bytes = match secret.encoding {
        Encoding::Raw => selected,
        Encoding::Base64 => decode_base64(&selected).map_err(&invalid)?,
    };
    apply_newline(secret.newline, &mut bytes);
    check_kind(secret.kind, bytes.expose()).map_err(invalid)?;

    for warning in warnings(secret.kind, secret.newline, bytes.expose()) {
        tracing::warn!(secret = %secret.name, target = ?secret.target, "{warning}");
    }
    Ok(Prepared {
        bytes,
        version: value.version,
    })
}

/// Picks the configured JSON field, or the only field of a Vault KV object.
fn select_field(secret: &SecretSpec, value: &SecretValue) -> Result<SecretBytes, ValueError> {
    if secret.field.is_none() && !value.is_json_object {
        return Ok(value.bytes.clone());
    }

    let invalid = |reason: String| ValueError::Invalid {
        secret: secret.name.clone(),
        path: secret.path.clone(),
        reason,
    };
    let UniqueObject { object, duplicate } = serde_json::from_slice(value.bytes.expose())
        .map_err(|_| invalid("field is set, but the stored value is not a JSON object; remove field to use the value as it is".to_owned()))?;
    let mut parsed = Value::Object(object);
    let result = match duplicate {
        Some(name) => Err(invalid(format!(
            "the stored JSON object has field {name:?} more than once, and readers disagree on which copy wins; store each field once"
        ))),
        None => pick(secret, &parsed),
    };
    wipe_json(&mut parsed);
    result
}

/// A JSON object with the first repeated key, if any. The repeated value is
/// wiped and left out, so the caller can reject the object.
struct UniqueObject {
    object: serde_json::Map<String, Value>,
    duplicate: Option<String>,
}

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(UniqueObjectVisitor)
    }
}

struct UniqueObjectVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueObjectVisitor {
    type Value = UniqueObject;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueObject, A::Error> {
        let mut object = serde_json::Map::new();
        let mut duplicate = None;
        while let Some(key) = map.next_key::<String>()? {
            let mut value: Value = map.next_value()?;
            if object.contains_key(&key) {
                wipe_json(&mut value);
                duplicate.get_or_insert(key);
            } else {
                object.insert(key, value);
            }
        }
        Ok(UniqueObject { object, duplicate })
    }
}

fn pick(secret: &SecretSpec, parsed: &Value) -> Result<SecretBytes, ValueError> {
    let invalid = |reason: String| ValueError::Invalid {
        secret: secret.name.clone(),
        path: secret.path.clone(),
        reason,
    };
    let Some(object) = parsed.as_object() else {
        return Err(invalid(
            "field is set, but the stored value is not a JSON object".to_owned(),
        ));
    };
    let present = object
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");

    let field = match &secret.field {
        Some(field) => field.as_str(),
        None if object.len() == 1 => object.keys().next().map(String::as_str).unwrap_or_default(),
        None => {
            return Err(invalid(format!(
                "the secret has {} fields [{present}]; set field to the one to write",
                object.len()
            )));
        }
    };
    let Some(found) = object.get(field) else {
        return Err(ValueError::FieldNotFound {
            secret: secret.name.clone(),
            path: secret.path.clone(),
            field: field.to_owned(),
            present,
        });
    };
    match found {
        Value::String(text) => Ok(SecretBytes::copy_from(text.as_bytes())),
        other => Err(invalid(format!(
            "field {field:?} is a JSON {}, not a string; store the value as a string",
            json_type(other)
        ))),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub use backends::wipe_json;

fn decode_base64(encoded: &SecretBytes) -> Result<SecretBytes, String> {
    let mut decoded = Vec::new();
    base64::engine::general_purpose::STANDARD
        .decode_vec(encoded.expose(), &mut decoded)
        .map_err(|error| {
            decoded.zeroize();
            format!("encoding is base64, but the value is not standard padded base64 ({error}); store it encoded with `base64 -w0`, or set encoding = \"raw\"")
        })?;
    Ok(SecretBytes::new(decoded))
}

/// Applies the newline policy in place.
pub fn apply_newline(policy: NewlinePolicy, bytes: &mut SecretBytes) {
    let ends_with_newline = bytes.expose().ends_with(b"\n");
    match policy {
        NewlinePolicy::Exact => {}
        NewlinePolicy::StripOne if ends_with_newline => {
            bytes.expose_mut().pop();
        }
        NewlinePolicy::StripOne => {}
        NewlinePolicy::EnsureOne if ends_with_newline => {}
        NewlinePolicy::EnsureOne => bytes.expose_mut().push(b'\n'),
    }
}

/// Rejects values that would break or weaken Portainer.
pub fn check_kind(kind: SecretKind, bytes: &[u8]) -> Result<(), String> {
    match kind {
        SecretKind::EncryptionKey if bytes.is_empty() => Err(
            "the encryption key is empty; Portainer would encrypt with SHA-256 of nothing, a public key. Store a random key (32 bytes or more)".to_owned(),
        ),
        SecretKind::EncryptionKey if bytes.iter().all(u8::is_ascii_whitespace) => Err(
            "the encryption key is only whitespace, such as the newline `echo \"\"` leaves; Portainer would encrypt with SHA-256 of it, a guessable key. Store a random key (32 bytes or more)".to_owned(),
        ),
        SecretKind::EncryptionKey => Ok(()),
        SecretKind::AdminPassword => check_password(bytes),
        SecretKind::Generic if bytes.is_empty() => {
            Err("the value is empty; store a value or remove the secret".to_owned())
        }
        SecretKind::Generic => Ok(()),
    }
}

fn check_password(bytes: &[u8]) -> Result<(), String> {
    let effective = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if effective.is_empty() {
        return Err(
            "the admin password is empty; Portainer would reject it at start-up".to_owned(),
        );
    }
    if effective.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the admin password is {} bytes; bcrypt accepts at most {MAX_PASSWORD_BYTES} and Portainer stops at start-up. Store a shorter password",
            effective.len()
        ));
    }
    if looks_like_bcrypt(effective) {
        return Err("the admin password looks like a bcrypt hash, but --admin-password-file takes the plaintext; Portainer would hash it again and logins would fail. Store the plaintext password, or pass the hash with --admin-password instead".to_owned());
    }
    Ok(())
}

/// Matches `$2a$10$` followed by 53 characters of bcrypt's base64 alphabet.
pub(crate) fn looks_like_bcrypt(bytes: &[u8]) -> bool {
    let Some(rest) = bytes.strip_prefix(b"$2") else {
        return false;
    };
    let rest = match rest.first() {
        Some(b'a' | b'b' | b'x' | b'y') => &rest[1..],
        _ => rest,
    };
    let [b'$', tens, ones, b'$', hash @ ..] = rest else {
        return false;
    };
    tens.is_ascii_digit()
        && ones.is_ascii_digit()
        && hash.len() == 53
        && hash
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'.' || *byte == b'/')
}

/// Lists surprising bytes: worth a warning, not a failure.
pub fn warnings(kind: SecretKind, newline: NewlinePolicy, bytes: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let body = match kind {
        SecretKind::AdminPassword => bytes.strip_suffix(b"\n").unwrap_or(bytes),
        _ => bytes,
    };

    if kind == SecretKind::EncryptionKey
        && newline == NewlinePolicy::Exact
        && bytes.ends_with(b"\n")
    {
        found.push("the key ends with a newline, which Portainer hashes as part of the key; that is right only for a database created with an echo-made key. Otherwise set newline = \"strip-one\"".to_owned());
    }
    if kind == SecretKind::EncryptionKey && bytes.len() < 16 {
        found.push(format!(
            "the key is {} bytes long; use 32 random bytes or more",
            bytes.len()
        ));
    }
    if body.ends_with(b"\r") || body.ends_with(b"\r\n") {
        found.push(
            "the value ends with a carriage return (\\r), which becomes part of it".to_owned(),
        );
    }
    if body.first().is_some_and(u8::is_ascii_whitespace) {
        found.push("the value starts with whitespace, which becomes part of it".to_owned());
    }
    let trailing = body.strip_suffix(b"\n").unwrap_or(body);
    if trailing
        .last()
        .is_some_and(|byte| *byte == b' ' || *byte == b'\t')
    {
        found.push("the value ends with a space or tab, which becomes part of it".to_owned());
    }
    if kind == SecretKind::AdminPassword && body.contains(&0) {
        found.push(
            "the admin password contains a NUL byte; type-in logins cannot reproduce it".to_owned(),
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_object_reports_repeated_field() {
        let parsed: UniqueObject =
            serde_json::from_slice(br#"{"key":"first","other":"x","key":"second"}"#)
                .expect("parses");

        assert_eq!(parsed.duplicate.as_deref(), Some("key"));
        assert_eq!(parsed.object.get("key"), Some(&Value::from("first")));
    }

    #[test]
    fn unique_object_accepts_distinct_fields() {
        let parsed: UniqueObject =
            serde_json::from_slice(br#"{"key":"k","password":"p"}"#).expect("parses");

        assert_eq!(parsed.duplicate, None);
        assert_eq!(parsed.object.len(), 2);
    }

    #[test]
    fn unique_object_rejects_non_objects() {
        assert!(serde_json::from_slice::<UniqueObject>(b"\"text\"").is_err());
        assert!(serde_json::from_slice::<UniqueObject>(b"[1]").is_err());
    }

    #[test]
    fn strip_one_removes_a_single_newline() {
        let mut bytes = SecretBytes::copy_from(b"abc\n\n");

        apply_newline(NewlinePolicy::StripOne, &mut bytes);

        assert_eq!(bytes.expose(), b"abc\n");
    }

    #[test]
    fn ensure_one_adds_newline_once() {
        let mut without = SecretBytes::copy_from(b"abc");
        let mut with = SecretBytes::copy_from(b"abc\n");

        apply_newline(NewlinePolicy::EnsureOne, &mut without);
        apply_newline(NewlinePolicy::EnsureOne, &mut with);

        assert_eq!(without.expose(), b"abc\n");
        assert_eq!(with.expose(), b"abc\n");
    }

    #[test]
    fn exact_keeps_bytes() {
        let mut bytes = SecretBytes::copy_from(b"abc\r\n");

        apply_newline(NewlinePolicy::Exact, &mut bytes);

        assert_eq!(bytes.expose(), b"abc\r\n");
    }

    #[test]
    fn empty_key_is_rejected() {
        let error = check_kind(SecretKind::EncryptionKey, b"").expect_err("empty key");

        assert!(error.contains("empty"), "{error}");
    }

    #[test]
    fn whitespace_key_is_rejected() {
        for key in [&b"\n"[..], b"\r", b" \t\r\n"] {
            let error = check_kind(SecretKind::EncryptionKey, key).expect_err("whitespace key");
            assert!(error.contains("only whitespace"), "{error}");
        }
    }

    #[test]
    fn password_limit_counts_after_portainer_trim() {
        let exactly_72 = [b'a'; 72];
        let mut with_newline = exactly_72.to_vec();
        with_newline.push(b'\n');

        assert!(check_kind(SecretKind::AdminPassword, &exactly_72).is_ok());
        assert!(check_kind(SecretKind::AdminPassword, &with_newline).is_ok());
        assert!(check_kind(SecretKind::AdminPassword, &[b'a'; 73]).is_err());
    }

    #[test]
    fn newline_only_password_is_empty() {
        let error = check_kind(SecretKind::AdminPassword, b"\n").expect_err("empty");

        assert!(error.contains("empty"), "{error}");
    }

    #[test]
    fn bcrypt_hash_password_is_rejected() {
        let hash = b"$2y$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

        let error = check_kind(SecretKind::AdminPassword, hash).expect_err("hash");

        assert!(error.contains("bcrypt hash"), "{error}");
    }

    #[test]
    fn password_with_dollar_is_not_a_hash() {
        assert!(!looks_like_bcrypt(b"$2y$10$short"));
        assert!(!looks_like_bcrypt(b"my$2y$password"));
    }

    #[test]
    fn key_with_newline_warns_under_exact() {
        let found = warnings(
            SecretKind::EncryptionKey,
            NewlinePolicy::Exact,
            b"0123456789abcdef0123\n",
        );

        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("ends with a newline"));
    }

    #[test]
    fn password_warnings_cover_cr_space_and_nul() {
        let found = warnings(
            SecretKind::AdminPassword,
            NewlinePolicy::Exact,
            b" pa\0ss \r\n",
        );

        let joined = found.join("\n");
        assert!(joined.contains("carriage return"), "{joined}");
        assert!(joined.contains("starts with whitespace"), "{joined}");
        assert!(joined.contains("NUL"), "{joined}");
    }

    #[test]
    fn invalid_base64_is_rejected() {
        let error = decode_base64(&SecretBytes::copy_from(b"not base64!")).expect_err("invalid");

        assert!(error.contains("base64"), "{error}");
    }

    #[test]
    fn base64_decodes_binary() {
        let decoded = decode_base64(&SecretBytes::copy_from(b"AP8AYQ==")).expect("valid");

        assert_eq!(decoded.expose(), b"\x00\xff\x00a");
    }
}
