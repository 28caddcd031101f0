//! Watches projected token files, which the kubelet replaces by swapping a
//! directory link, so a failing login is retried as soon as a new token lands.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;

use backends::vault::VaultAuth;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::{Config, StoreKind};

/// Environment variables that name token files read by the store SDKs.
const TOKEN_FILE_VARIABLES: &[&str] = &[
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

/// Starts watching the directories of every token file. The watcher stops when
/// the returned handle is dropped; events arrive on the receiver.
pub fn watch_token_files(
    config: &Config,
) -> (
    Option<notify::RecommendedWatcher>,
    mpsc::UnboundedReceiver<()>,
) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let files = token_files(config);
    let directories: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|file| file.parent().map(PathBuf::from))
        .filter(|directory| directory.is_dir())
        .collect();
    if directories.is_empty() {
        return (None, receiver);
    }

    // The kubelet swaps a `..data` link to publish a new token, so an event on that
    // link counts as well as one on a token file itself.
    let mut names: BTreeSet<OsString> = files
        .iter()
        .filter_map(|file| file.file_name().map(OsString::from))
        .collect();
    names.insert(OsString::from("..data"));
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            return;
        };
        let names_a_token = event
            .paths
            .iter()
            .any(|path| path.file_name().is_some_and(|name| names.contains(name)));
        if names_a_token && !event.kind.is_access() {
            let _ = sender.send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "failed to start watching token files; logins still re-read them");
            return (None, receiver);
        }
    };
    for directory in &directories {
        match watcher.watch(directory, RecursiveMode::NonRecursive) {
            Ok(()) => tracing::debug!(directory = %directory.display(), "watching token files"),
            Err(error) => {
                tracing::warn!(directory = %directory.display(), %error, "failed to watch a token directory")
            }
        }
    }
    (Some(watcher), receiver)
}

fn token_files(config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = config
        .stores
        .values()
        .filter_map(|store| match &store.kind {
            StoreKind::Vault(settings) => match &settings.auth {
                VaultAuth::Kubernetes { token_path, .. } => Some(token_path.clone()),
                VaultAuth::TokenFile { path } => Some(path.clone()),
            },
            _ => None,
        })
        .collect();
    files.extend(
        TOKEN_FILE_VARIABLES
            .iter()
            .filter_map(std::env::var_os)
            .map(PathBuf::from),
    );
    files
}
