//! A secret already on disk: a Swarm secret, a CSI or Secret volume, a local file.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;

use crate::{
    BackendError, BackendFuture, SecretBackend, SecretBytes, SecretRequest, SecretValue,
    SecretVersion,
};

/// Largest file the store reads, so a wrong path (a log, a disk image) fails fast.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads secrets from files. Symbolic links are followed, because Kubernetes volumes
/// publish files through `..data` links.
#[derive(Debug, Default)]
pub struct FileBackend;

impl FileBackend {
    fn read(&self, request: &SecretRequest) -> Result<SecretValue, BackendError> {
        let path = &request.path;
        let metadata = std::fs::metadata(path).map_err(|error| io_error(path, &error))?;
        if !metadata.is_file() {
            return Err(not_a_file(path));
        }
        if metadata.len() > MAX_FILE_BYTES {
            return Err(too_large(path, metadata.len()));
        }

        let bytes = std::fs::read(path).map_err(|error| io_error(path, &error))?;
        let version = file_version(&metadata);
        Ok(SecretValue {
            bytes: SecretBytes::new(bytes),
            is_json_object: false,
            version,
        })
    }
}

impl SecretBackend for FileBackend {
    fn describe(&self) -> String {
        "file store".to_owned()
    }

    fn fetch<'a>(&'a self, request: &'a SecretRequest) -> BackendFuture<'a, SecretValue> {
        Box::pin(async move { self.read(request) })
    }

    fn resolve_version<'a>(
        &'a self,
        request: &'a SecretRequest,
    ) -> BackendFuture<'a, SecretVersion> {
        Box::pin(async move {
            let path = &request.path;
            let metadata = std::fs::metadata(path).map_err(|error| io_error(path, &error))?;
            if !metadata.is_file() {
                return Err(not_a_file(path));
            }
            Ok(SecretVersion {
                version: file_version(&metadata),
            })
        })
    }
}

/// Names a file's content version by its modification time and inode, which change
/// when a volume's `..data` link moves to a new copy.
fn file_version(metadata: &std::fs::Metadata) -> String {
    format!(
        "mtime {}.{:09} inode {}",
        metadata.mtime(),
        metadata.mtime_nsec(),
        metadata.ino()
    )
}

fn io_error(path: &str, error: &std::io::Error) -> BackendError {
    match error.kind() {
        ErrorKind::NotFound => BackendError::NotFound {
            store: "file store".into(),
            path: path.into(),
            detail: "no such file".into(),
            hint: "check the secret's path and that its volume is mounted".into(),
        },
        ErrorKind::PermissionDenied => BackendError::PermissionDenied {
            store: "file store".into(),
            path: path.into(),
            detail: error.to_string(),
            hint: "run the agent as a user that can read the file".into(),
        },
        _ => BackendError::Unavailable {
            store: "file store".into(),
            detail: format!("failed to read {path:?}: {error}"),
        },
    }
}

fn not_a_file(path: &str) -> BackendError {
    BackendError::InvalidResponse {
        store: "file store".into(),
        path: path.into(),
        detail: "the path is not a regular file".into(),
        hint: "point the secret's path at the file itself, not at its directory".into(),
    }
}

fn too_large(path: &str, length: u64) -> BackendError {
    BackendError::InvalidResponse {
        store: "file store".into(),
        path: path.into(),
        detail: format!("the file is {length} bytes, over the {MAX_FILE_BYTES}-byte limit"),
        hint: "point the secret's path at the key or password file".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &std::path::Path) -> SecretRequest {
        SecretRequest::latest(path.to_str().expect("utf-8 temp path"))
    }

    #[tokio::test]
    async fn fetch_returns_exact_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("key");
        std::fs::write(&path, b"\x00\xffkey\n").expect("write key");

        let value = FileBackend.fetch(&request(&path)).await.expect("fetch");

        assert_eq!(value.bytes.expose(), b"\x00\xffkey\n");
        assert!(!value.is_json_object);
    }

    #[tokio::test]
    async fn missing_file_is_not_found() {
        let dir = tempfile::tempdir().expect("temp dir");

        let error = FileBackend
            .fetch(&request(&dir.path().join("absent")))
            .await
            .expect_err("missing file");

        assert!(matches!(error, BackendError::NotFound { .. }), "{error}");
    }

    #[tokio::test]
    async fn directory_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");

        let error = FileBackend
            .fetch(&request(dir.path()))
            .await
            .expect_err("directory");

        assert!(
            matches!(error, BackendError::InvalidResponse { .. }),
            "{error}"
        );
        assert!(!error.is_transient());
    }
}
