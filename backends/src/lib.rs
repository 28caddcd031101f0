//! Secret stores behind one trait.
//!
//! Each store module turns a [`SecretRequest`] into a [`SecretValue`] and classifies
//! its failures as transient or permanent through [`BackendError::is_transient`].
//! Values travel in zeroising buffers and never appear in `Debug`, `Display` or logs.

pub mod aws;
mod aws_http;
pub mod azure;
mod error;
pub mod file;
pub mod gcp;
pub mod http;
mod oauth;
mod value;
pub mod vault;

use std::future::Future;
use std::pin::Pin;

pub use error::BackendError;
pub use value::{SecretBytes, SecretValue, wipe_json};

/// The future returned by [`SecretBackend`] methods.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send + 'a>>;

/// One secret to read from a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRequest {
    /// Store-specific location: a Vault path with its mount, an AWS secret name or ARN,
    /// an Azure Key Vault secret name, a GCP secret ID, or a file path.
    pub path: String,
    /// Version pin: a Vault KV v2 version number, an AWS `VersionId`, an Azure Key
    /// Vault version id, or a GCP version number or alias.
    pub version: Option<String>,
    /// AWS staging label; ignored by the other stores.
    pub stage: Option<String>,
}

impl SecretRequest {
    /// Creates a request for the current version of `path`.
    pub fn latest(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            version: None,
            stage: None,
        }
    }
}

/// Version information of a secret, without its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretVersion {
    /// The concrete version the store resolved, as the store names it.
    pub version: String,
}

/// A secret store.
///
/// Implementations authenticate on their own (re-reading token files at every login)
/// and return errors that tell whether a retry can help.
pub trait SecretBackend: Send + Sync + std::fmt::Debug {
    /// Returns a short label for logs and errors, such as `vault http://127.0.0.1:8200`.
    fn describe(&self) -> String;

    /// Reads the secret's value and the version it came from.
    fn fetch<'a>(&'a self, request: &'a SecretRequest) -> BackendFuture<'a, SecretValue>;

    /// Resolves the version that [`SecretBackend::fetch`] would return, without
    /// transferring the value where the store allows it.
    fn resolve_version<'a>(
        &'a self,
        request: &'a SecretRequest,
    ) -> BackendFuture<'a, SecretVersion>;

    /// Returns the time left on the store's login token, for stores that hold one.
    fn token_expires_in(&self) -> BackendFuture<'_, Option<std::time::Duration>> {
        Box::pin(async { Ok(None) })
    }
}
