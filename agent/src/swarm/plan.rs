//! Pure decisions of `swarm sync`: secret names, labels, targets, and whether a
//! service's secret reference is kept, replaced or held back by the rotation guard.

use std::collections::HashMap;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{SecretKind, SecretSpec};

/// Label that marks a Swarm secret as created by this agent.
pub const LABEL_MANAGED: &str = "io.portainer-key-agent.managed";
/// Label with the name of the `[[secrets]]` entry the value came from.
pub const LABEL_SECRET: &str = "io.portainer-key-agent.secret";
/// Label with the secret kind (`encryption-key`, `admin-password`, `generic`).
pub const LABEL_KIND: &str = "io.portainer-key-agent.kind";
/// Label with the version the store reported for the value.
pub const LABEL_VERSION: &str = "io.portainer-key-agent.version";
/// Label with the keyed digest of the value, `hmac-sha256:<hex>`.
pub const LABEL_DIGEST: &str = "io.portainer-key-agent.digest";

/// Directory where Swarm mounts a secret whose target is a bare file name.
pub const SECRETS_DIR: &str = "/run/secrets";

/// Swarm rejects secret names longer than this (swarmkit's object name limit).
const MAX_SECRET_NAME: usize = 64;

/// Hex digits of the digest that end a secret name.
const NAME_DIGEST_HEX: usize = 12;

/// HMAC-SHA-256 key for content digests, derived from the swarm's cluster ID.
///
/// A plain SHA-256 of the key file would be Portainer's AES key itself, so digests
/// are always keyed. Every client of the Docker API can read the cluster ID and the
/// labels, so the digest hides only values that cannot be guessed. Such a client
/// can also mount the secret into a service and read it directly.
#[derive(Clone)]
pub struct DigestKey(zeroize::Zeroizing<Vec<u8>>);

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("DigestKey(..)")
    }
}

impl DigestKey {
    /// Derives the key of one swarm from its cluster ID.
    pub fn for_cluster(cluster_id: &str) -> Self {
        let mut key = b"portainer-key-agent swarm digest v1\0".to_vec();
        key.extend_from_slice(cluster_id.as_bytes());
        Self(zeroize::Zeroizing::new(key))
    }

    /// Returns the keyed digest of `bytes` as `hmac-sha256:<64 hex digits>`.
    pub fn digest(&self, bytes: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(bytes);
        format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// Builds the Swarm secret name for a value: a prefix from the entry's kind and
/// name, then the first 12 hex digits of its keyed digest.
pub fn secret_name(secret: &SecretSpec, digest: &str) -> String {
    let hex = digest.trim_start_matches("hmac-sha256:");
    let hex = &hex[..NAME_DIGEST_HEX.min(hex.len())];
    let prefix = match secret.kind {
        SecretKind::EncryptionKey => "portainer-key".to_owned(),
        SecretKind::AdminPassword => "portainer-admin-password".to_owned(),
        SecretKind::Generic => format!("portainer-{}", sanitize(&secret.name)),
    };
    let room = MAX_SECRET_NAME - NAME_DIGEST_HEX - 1;
    let prefix: String = prefix.chars().take(room).collect();
    format!("{prefix}-{hex}")
}

/// Keeps the characters Swarm accepts in names (`[a-zA-Z0-9._-]`).
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Builds the labels of a managed secret. None of them carries the value.
pub fn labels(secret: &SecretSpec, version: &str, digest: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_SECRET.to_owned(), secret.name.clone()),
        (LABEL_KIND.to_owned(), secret.kind.name().to_owned()),
        (LABEL_VERSION.to_owned(), version.to_owned()),
        (LABEL_DIGEST.to_owned(), digest.to_owned()),
    ])
}

/// Returns the Swarm target of a configured file: the bare file name for a file
/// directly in `/run/secrets` (`/run/secrets/portainer` becomes `portainer`),
/// otherwise the absolute path, which Swarm mounts as it is on Linux.
///
/// NOTE: the tests cover targets in `/run/secrets` only.
pub fn swarm_target(target: &Path) -> String {
    match (target.parent(), target.file_name()) {
        (Some(parent), Some(name)) if parent == Path::new(SECRETS_DIR) => {
            name.to_string_lossy().into_owned()
        }
        _ => target.to_string_lossy().into_owned(),
    }
}

/// The secret a service currently has at one target, as far as labels show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attached {
    /// Nothing is mounted at the target.
    Nothing,
    /// A secret created by the agent, with its digest label.
    Managed { digest: String },
    /// A secret created by someone else, whose content cannot be compared.
    Unmanaged { name: String },
}

/// What to do with one target of the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The attached secret has the store's value.
    Keep,
    /// Attach the new secret: first delivery, or a change that may roll the service.
    Attach,
    /// The store's key differs, but switching needs `--allow-key-change`.
    RotationPending,
}

/// Decides what to do with one target, given the store's digest.
///
/// An encryption key is attached when the service has none (bootstrap) and
/// replaced only with `allow_key_change`, because Portainer cannot open its
/// database with a different key until `rotate-key` has re-encrypted it. Other
/// kinds are replaced whenever the value changed.
pub fn decide(
    kind: SecretKind,
    attached: &Attached,
    digest: &str,
    allow_key_change: bool,
) -> Decision {
    match attached {
        Attached::Nothing => Decision::Attach,
        Attached::Managed { digest: current } if current == digest => Decision::Keep,
        Attached::Managed { .. } | Attached::Unmanaged { .. } => {
            if kind == SecretKind::EncryptionKey && !allow_key_change {
                Decision::RotationPending
            } else {
                Decision::Attach
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{Encoding, NewlinePolicy};

    fn spec(name: &str, kind: SecretKind, target: &str) -> SecretSpec {
        SecretSpec {
            name: name.to_owned(),
            kind,
            store: "main".to_owned(),
            path: "secret/portainer".to_owned(),
            field: None,
            version: None,
            stage: None,
            target: PathBuf::from(target),
            mode: 0o400,
            owner: None,
            encoding: Encoding::Raw,
            newline: NewlinePolicy::Exact,
            allow_disk: false,
            interval: None,
        }
    }

    #[test]
    fn digest_is_keyed_by_cluster() {
        let first = DigestKey::for_cluster("cluster-a").digest(b"abc");
        let second = DigestKey::for_cluster("cluster-b").digest(b"abc");
        let plain = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

        assert!(first.starts_with("hmac-sha256:"), "{first}");
        assert_ne!(first, second);
        assert!(!first.contains(plain));
    }

    #[test]
    fn secret_name_ends_with_digest_prefix() {
        let key = spec(
            "database-key",
            SecretKind::EncryptionKey,
            "/run/secrets/portainer",
        );
        let digest = DigestKey::for_cluster("c").digest(b"abc");

        let name = secret_name(&key, &digest);

        assert_eq!(name, format!("portainer-key-{}", &digest[12..24]));
    }

    #[test]
    fn secret_name_of_generic_is_sanitized_and_bounded() {
        let long = "a name/with spaces".repeat(8);
        let generic = spec(&long, SecretKind::Generic, "/run/secrets/x");

        let name = secret_name(&generic, "hmac-sha256:0123456789abcdef");

        assert!(name.len() <= MAX_SECRET_NAME, "{name}");
        assert!(name.ends_with("-0123456789ab"), "{name}");
        assert!(!name.contains(' ') && !name.contains('/'), "{name}");
    }

    #[test]
    fn labels_hold_no_value() {
        let key = spec(
            "database-key",
            SecretKind::EncryptionKey,
            "/run/secrets/portainer",
        );

        let labels = labels(&key, "3", "hmac-sha256:00");

        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_SECRET], "database-key");
        assert_eq!(labels[LABEL_VERSION], "3");
        assert_eq!(labels[LABEL_DIGEST], "hmac-sha256:00");
        assert_eq!(labels[LABEL_KIND], "encryption-key");
    }

    #[test]
    fn target_in_run_secrets_is_file_name() {
        assert_eq!(
            swarm_target(Path::new("/run/secrets/portainer")),
            "portainer"
        );
        assert_eq!(
            swarm_target(Path::new("/run/secrets/admin-password")),
            "admin-password"
        );
        assert_eq!(
            swarm_target(Path::new("/run/portainer/portainer")),
            "/run/portainer/portainer"
        );
        assert_eq!(
            swarm_target(Path::new("/run/secrets/sub/file")),
            "/run/secrets/sub/file"
        );
    }

    #[test]
    fn decide_follows_rotation_guard() {
        use SecretKind::{AdminPassword, EncryptionKey};
        let same = Attached::Managed {
            digest: "d1".to_owned(),
        };
        let other = Attached::Managed {
            digest: "d0".to_owned(),
        };
        let foreign = Attached::Unmanaged {
            name: "portainer-key-2025".to_owned(),
        };
        let cases = [
            (EncryptionKey, &Attached::Nothing, false, Decision::Attach),
            (EncryptionKey, &same, false, Decision::Keep),
            (EncryptionKey, &other, false, Decision::RotationPending),
            (EncryptionKey, &other, true, Decision::Attach),
            (EncryptionKey, &foreign, false, Decision::RotationPending),
            (EncryptionKey, &foreign, true, Decision::Attach),
            (AdminPassword, &Attached::Nothing, false, Decision::Attach),
            (AdminPassword, &same, false, Decision::Keep),
            (AdminPassword, &other, false, Decision::Attach),
            (AdminPassword, &foreign, false, Decision::Attach),
        ];

        for (kind, attached, allow, expected) in cases {
            assert_eq!(
                decide(kind, attached, "d1", allow),
                expected,
                "{kind:?} {attached:?} allow_key_change={allow}"
            );
        }
    }
}
