//! Kubernetes service account JWTs for the tests.
//!
//! The tokens carry the header and claims of a projected service account token
//! (`iss`, `sub = system:serviceaccount:NS:NAME`, the `kubernetes.io` claim
//! block) and an RS256 header, but the signature is filler bytes. OpenBao parses
//! them without checking the signature when no `pem_keys` are configured, and
//! leaves validation to TokenReview.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Issuer and default audience of tokens from an in-cluster API server.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

static SERIAL: AtomicU64 = AtomicU64::new(0);

/// Builds a one-hour token for `NS/NAME` with the API server's default audience.
pub fn service_account_jwt(namespace: &str, name: &str, uid: &str) -> String {
    service_account_jwt_with(namespace, name, uid, &[DEFAULT_AUDIENCE], 3600)
}

/// Builds a token with the given audiences that expires `lifetime_seconds` from now
/// (negative for an expired token).
pub fn service_account_jwt_with(
    namespace: &str,
    name: &str,
    uid: &str,
    audiences: &[&str],
    lifetime_seconds: i64,
) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let now = i64::try_from(now).expect("time fits i64");
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let unique = format!("{}-{serial}-{now}", std::process::id());

    let header = json!({ "alg": "RS256", "kid": "integration-tests", "typ": "JWT" });
    let claims = json!({
        "aud": audiences,
        "exp": now + lifetime_seconds,
        "iat": now,
        "nbf": now,
        "iss": DEFAULT_ISSUER,
        "jti": unique,
        "kubernetes.io": {
            "namespace": namespace,
            "pod": { "name": format!("{name}-0"), "uid": format!("pod-{unique}") },
            "serviceaccount": { "name": name, "uid": uid },
        },
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
    });

    // 256 filler bytes, the length of an RSA-2048 signature, unique per token.
    let seed = Sha256::digest(unique.as_bytes());
    let signature: Vec<u8> = seed.iter().cycle().take(256).copied().collect();

    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}
