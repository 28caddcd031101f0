//! Portainer's value encryption.
//!
//! Every bucket value of an encrypted Portainer database is
//! `nonce (12 bytes) || AES-256-GCM ciphertext || tag (16 bytes)`, with no
//! additional data. The AES key is SHA-256 of the key file's exact bytes,
//! nothing trimmed. A stored value that is exactly `false` is passed through
//! without decryption (Portainer 2.11 to 2.23, `api/database/boltdb/json.go`).

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use rand::RngCore;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

/// Nonce size in bytes.
pub const NONCE_SIZE: usize = 12;
/// Authentication tag size in bytes.
pub const TAG_SIZE: usize = 16;
/// Bytes an encrypted value has beyond its plaintext.
pub const OVERHEAD: usize = NONCE_SIZE + TAG_SIZE;
/// The stored value Portainer passes through without decryption.
pub const PASS_THROUGH_VALUE: &[u8] = b"false";

/// A value did not authenticate under the key: wrong key or damaged value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("value does not authenticate with this key")]
pub struct AuthenticationFailed;

/// The AES-256-GCM key Portainer derives from a key file.
///
/// AES-GCM comes from aws-lc-rs, the library that already does the agent's TLS,
/// whose assembly runs several times faster than the portable `aes-gcm` crate
/// (the database benchmark page has the figures). The derived key lives in a
/// zeroizing buffer only while the cipher is set up, and aws-lc wipes its
/// expanded key when the cipher is dropped. `Debug` never shows key material.
pub struct PortainerKey {
    cipher: LessSafeKey,
}

impl fmt::Debug for PortainerKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("PortainerKey(..)")
    }
}

impl PortainerKey {
    /// Derives the key from the key file's exact bytes: SHA-256, nothing trimmed.
    pub fn from_key_file_bytes(key_file: &[u8]) -> PortainerKey {
        let mut derived = Zeroizing::new([0u8; 32]);
        derived.copy_from_slice(&Sha256::digest(key_file));
        let unbound = UnboundKey::new(&AES_256_GCM, &derived[..])
            .unwrap_or_else(|_| unreachable!("a 32-byte key is valid for AES-256-GCM"));
        PortainerKey {
            cipher: LessSafeKey::new(unbound),
        }
    }

    /// Encrypts `plaintext` with a fresh random nonce.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut value = vec![0u8; plaintext.len() + OVERHEAD];
        value[NONCE_SIZE..NONCE_SIZE + plaintext.len()].copy_from_slice(plaintext);
        self.seal_in_place(&mut value, &mut rand::rng());
        value
    }

    /// Decrypts a stored value; `false` is returned as it is.
    pub fn decrypt(&self, stored: &[u8]) -> Result<Zeroizing<Vec<u8>>, AuthenticationFailed> {
        let mut value = Zeroizing::new(stored.to_vec());
        if stored == PASS_THROUGH_VALUE {
            return Ok(value);
        }
        self.open_in_place(&mut value)?;
        let plaintext_end = value.len() - TAG_SIZE;
        value.truncate(plaintext_end);
        value.drain(..NONCE_SIZE);
        Ok(value)
    }

    /// Checks that `stored` authenticates, decrypting into `scratch`. `false`
    /// passes. The plaintext stays in `scratch`, so callers keep it in a
    /// zeroizing buffer with room for their largest value: a buffer that
    /// never grows leaves no unwiped copy behind when it is dropped.
    pub(crate) fn authenticates(&self, stored: &[u8], scratch: &mut Vec<u8>) -> bool {
        if stored == PASS_THROUGH_VALUE {
            return true;
        }
        scratch.clear();
        scratch.extend_from_slice(stored);
        self.open_in_place(scratch).is_ok()
    }

    /// Decrypts `value` in place: afterwards `value[12..len - 16]` contains the
    /// plaintext. On failure the ciphertext part of `value` may be overwritten,
    /// so callers keep their own copy when they need the original.
    pub(crate) fn open_in_place(&self, value: &mut [u8]) -> Result<(), AuthenticationFailed> {
        if value.len() < OVERHEAD {
            return Err(AuthenticationFailed);
        }
        let (nonce, rest) = value.split_at_mut(NONCE_SIZE);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| AuthenticationFailed)?;
        self.cipher
            .open_in_place(nonce, Aad::empty(), rest)
            .map(|_| ())
            .map_err(|_| AuthenticationFailed)
    }

    /// Encrypts `value[12..len - 16]` in place under a fresh random nonce,
    /// writing the nonce in front and the tag behind.
    pub(crate) fn seal_in_place(&self, value: &mut [u8], rng: &mut impl RngCore) {
        let mut nonce = [0u8; NONCE_SIZE];
        rng.fill_bytes(&mut nonce);
        self.seal_in_place_with_nonce(value, &nonce);
    }

    fn seal_in_place_with_nonce(&self, value: &mut [u8], nonce: &[u8; NONCE_SIZE]) {
        debug_assert!(value.len() >= OVERHEAD);
        let (nonce_slot, rest) = value.split_at_mut(NONCE_SIZE);
        nonce_slot.copy_from_slice(nonce);
        let (plaintext, tag_slot) = rest.split_at_mut(rest.len() - TAG_SIZE);
        let tag = self
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::empty(),
                plaintext,
            )
            .unwrap_or_else(|_| unreachable!("AES-GCM accepts any plaintext shorter than 64 GiB"));
        tag_slot.copy_from_slice(tag.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; NONCE_SIZE] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

    /// Vectors computed with an independent AES-GCM implementation, key =
    /// SHA-256("abc"), nonce 000102030405060708090a0b.
    const VECTORS: [(&[u8], &str); 3] = [
        (
            b"35",
            "000102030405060708090a0b64ac3d791fb5d1b7549f467270c708acaa47",
        ),
        (
            b"false",
            "000102030405060708090a0b31f81818a74521ce7a0658d0ad25ca390f78ab75ec",
        ),
        (
            br#"{"Id":1,"Username":"admin"}"#,
            "000102030405060708090a0b2cbb3d0fe096ae3567d15483e2d73de170421f57843bb400f0b0c292c7967b487ea39002cbe07db57ecbbe",
        ),
    ];

    fn vector_bytes(hex_value: &str) -> Vec<u8> {
        hex::decode(hex_value).expect("vector is hex")
    }

    #[test]
    fn vectors_decrypt_with_sha256_of_abc() {
        let key = PortainerKey::from_key_file_bytes(b"abc");
        for (plaintext, stored) in VECTORS {
            let decrypted = key
                .decrypt(&vector_bytes(stored))
                .expect("vector authenticates");
            assert_eq!(decrypted.as_slice(), plaintext);
        }
    }

    #[test]
    fn vectors_encrypt_with_fixed_nonce() {
        let key = PortainerKey::from_key_file_bytes(b"abc");
        for (plaintext, stored) in VECTORS {
            let mut value = vec![0u8; plaintext.len() + OVERHEAD];
            value[NONCE_SIZE..NONCE_SIZE + plaintext.len()].copy_from_slice(plaintext);
            key.seal_in_place_with_nonce(&mut value, &NONCE);
            assert_eq!(hex::encode(&value), stored);
        }
    }

    #[test]
    fn vectors_fail_with_trailing_newline_key() {
        let key = PortainerKey::from_key_file_bytes(b"abc\n");
        let mut scratch = Vec::new();
        for (_, stored) in VECTORS {
            let stored = vector_bytes(stored);
            assert_eq!(key.decrypt(&stored), Err(AuthenticationFailed));
            assert!(!key.authenticates(&stored, &mut scratch));
        }
    }

    #[test]
    fn false_passes_through() {
        let key = PortainerKey::from_key_file_bytes(b"any key");
        let decrypted = key.decrypt(PASS_THROUGH_VALUE).expect("passes through");
        assert_eq!(decrypted.as_slice(), PASS_THROUGH_VALUE);
    }

    #[test]
    fn encrypt_round_trips_with_fresh_nonces() {
        let key = PortainerKey::from_key_file_bytes(b"k");
        let first = key.encrypt(b"{}");
        let second = key.encrypt(b"{}");
        assert_eq!(first.len(), 2 + OVERHEAD);
        assert_ne!(first[..NONCE_SIZE], second[..NONCE_SIZE]);
        assert_eq!(key.decrypt(&first).expect("round trip").as_slice(), b"{}");
    }

    #[test]
    fn wrong_key_fails_to_open() {
        let mut value = vector_bytes(VECTORS[2].1);
        let key = PortainerKey::from_key_file_bytes(b"abc\n");
        assert!(key.open_in_place(&mut value).is_err());
    }

    #[test]
    fn matches_portable_aes_gcm() {
        use aes_gcm::aead::{Aead, KeyInit};

        let derived = Sha256::digest(b"key file");
        let portable = aes_gcm::Aes256Gcm::new_from_slice(&derived).expect("32-byte key");
        let key = PortainerKey::from_key_file_bytes(b"key file");
        let nonce = [7u8; NONCE_SIZE];
        for length in [0usize, 1, 15, 16, 17, 255, 4096] {
            let plaintext: Vec<u8> = (0..length).map(|i| (i * 31 % 251) as u8).collect();
            let mut value = vec![0u8; length + OVERHEAD];
            value[NONCE_SIZE..NONCE_SIZE + length].copy_from_slice(&plaintext);

            key.seal_in_place_with_nonce(&mut value, &nonce);

            let expected = portable
                .encrypt(aes_gcm::Nonce::from_slice(&nonce), plaintext.as_slice())
                .expect("portable encrypt");
            assert_eq!(&value[NONCE_SIZE..], expected.as_slice(), "length {length}");
        }
    }

    #[test]
    fn debug_hides_key() {
        let key = PortainerKey::from_key_file_bytes(b"abc");
        assert_eq!(format!("{key:?}"), "PortainerKey(..)");
    }
}
