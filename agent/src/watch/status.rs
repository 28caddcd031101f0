//! The status endpoint: `/healthz`, `/readyz` and `/metrics` over HTTP/1.1 on TCP
//! or a Unix socket.
//!
//! A deliberately small server: GET only, one request per connection, bounded
//! request size and read time, so a slow or hostile client cannot hold the agent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::state::State;
use crate::config::StatusListen;

/// Largest request head read from a client.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the endpoint and serves it until the task is dropped.
pub async fn serve(listen: StatusListen, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    match listen {
        StatusListen::Tcp(address) => {
            let listener = tokio::net::TcpListener::bind(address).await?;
            tracing::info!(address = %listener.local_addr()?, "status endpoint listening");
            loop {
                let (stream, _) = listener.accept().await?;
                tokio::spawn(answer(stream, state.clone()));
            }
        }
        StatusListen::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path)?;
            tracing::info!(path = %path.display(), "status endpoint listening");
            loop {
                let (stream, _) = listener.accept().await?;
                tokio::spawn(answer(stream, state.clone()));
            }
        }
    }
}

async fn answer(mut stream: impl AsyncRead + AsyncWrite + Unpin, state: Arc<Mutex<State>>) {
    let path = match tokio::time::timeout(READ_TIMEOUT, read_request_path(&mut stream)).await {
        Ok(Some(path)) => path,
        Ok(None) | Err(_) => {
            let _ = stream
                .write_all(&response(400, "text/plain", "bad request\n"))
                .await;
            return;
        }
    };
    let reply = {
        let state = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        route(&path, &state)
    };
    let _ = stream.write_all(&reply).await;
    let _ = stream.shutdown().await;
}

/// Reads the request head and returns the path of a GET request.
async fn read_request_path(stream: &mut (impl AsyncRead + Unpin)) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 || head.len() + read > MAX_REQUEST_BYTES {
            return None;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let line = head.split(|byte| *byte == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => Some(path.split('?').next().unwrap_or(path).to_owned()),
        _ => None,
    }
}

/// Builds the reply for one path from the current state.
pub fn route(path: &str, state: &State) -> Vec<u8> {
    match path {
        "/healthz" => {
            let degraded = state.degraded();
            if degraded.is_empty() {
                response(200, "text/plain", "ok\n")
            } else {
                // Still 200: during a store outage the files stay as they are and the
                // agent recovers by itself, so a restart would not help.
                response(
                    200,
                    "text/plain",
                    &format!("degraded: {}\n", degraded.join(", ")),
                )
            }
        }
        "/readyz" => {
            let body = readiness_body(state);
            let status = if state.is_ready() { 200 } else { 503 };
            response(status, "text/plain", &body)
        }
        "/metrics" => response(200, "text/plain; version=0.0.4", &state.render_metrics()),
        _ => response(
            404,
            "text/plain",
            "not found; try /healthz, /readyz or /metrics\n",
        ),
    }
}

fn readiness_body(state: &State) -> String {
    let mut body = String::new();
    for (name, secret) in &state.secrets {
        let status = match (
            secret.written_once,
            secret.current,
            &secret.rotation_pending,
        ) {
            (false, _, _) => "not written yet".to_owned(),
            (true, false, _) => "last write failed".to_owned(),
            (true, true, Some(version)) => {
                format!("written; rotation pending to version {version}")
            }
            (true, true, None) => "written".to_owned(),
        };
        body.push_str(&format!("{name}: {status}\n"));
    }
    body
}

fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::state::SecretStatus;

    fn text(reply: Vec<u8>) -> String {
        String::from_utf8(reply).expect("utf-8 reply")
    }

    #[test]
    fn readyz_is_503_until_written() {
        let mut state = State::default();
        state
            .secrets
            .insert("database-key".to_owned(), SecretStatus::default());

        let reply = text(route("/readyz", &state));

        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
        assert!(reply.contains("database-key: not written yet"), "{reply}");
    }

    #[test]
    fn unknown_path_is_404() {
        let reply = text(route("/secret", &State::default()));

        assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    }

    #[tokio::test]
    async fn request_line_is_parsed() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");

        let path = read_request_path(&mut server).await;

        assert_eq!(path.as_deref(), Some("/metrics"));
    }

    #[tokio::test]
    async fn oversized_request_is_rejected() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(&vec![b'a'; MAX_REQUEST_BYTES + 10])
            .await
            .expect("write");

        assert_eq!(read_request_path(&mut server).await, None);
    }
}
