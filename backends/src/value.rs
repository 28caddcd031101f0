//! Zeroising containers for secret bytes.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// Secret bytes, wiped from memory when dropped.
///
/// `Debug` prints only the length, so a struct that derives `Debug` over this type
/// cannot leak the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes`; the caller's vector is moved, not copied.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a new zeroising buffer.
    pub fn copy_from(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// Exposes the value. Callers must not log, format or copy it into plain buffers.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Exposes the value for in-place edits such as newline handling.
    pub fn expose_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretBytes {
    fn from(mut text: String) -> Self {
        let bytes = std::mem::take(&mut text).into_bytes();
        text.zeroize();
        Self::new(bytes)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "SecretBytes({} bytes, redacted)", self.0.len())
    }
}

/// Overwrites every string of a parsed JSON value before it is dropped, because
/// serde_json's strings are not zeroised.
pub fn wipe_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(text) => text.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe_json),
        Value::Object(map) => map.values_mut().for_each(wipe_json),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A value read from a store, with the version it came from.
#[derive(Clone, Debug)]
pub struct SecretValue {
    /// The value exactly as stored: a Vault KV entry as its JSON `data` object, an AWS
    /// `SecretString` as UTF-8 or `SecretBinary` as raw bytes, a file's bytes.
    pub bytes: SecretBytes,
    /// Whether `bytes` is a JSON object that a field must be selected from (Vault KV).
    pub is_json_object: bool,
    /// The concrete version as the store names it.
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_length_only() {
        let value = SecretBytes::copy_from(b"hunter2");

        let printed = format!("{value:?}");

        assert_eq!(printed, "SecretBytes(7 bytes, redacted)");
        assert!(!printed.contains("hunter2"));
    }

    #[test]
    fn from_string_keeps_bytes() {
        let value = SecretBytes::from(String::from("abc\n"));

        assert_eq!(value.expose(), b"abc\n");
    }
}
