//! Blocking HTTP calls for test set-up, to servers on 127.0.0.1 only.

use std::time::Duration;

use serde_json::Value;

/// Per-request timeout. Set-up calls to local servers finish in milliseconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Status and body of an HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// Parses the body as JSON; an empty body is `null`.
    ///
    /// # Panics
    /// When the body is not JSON.
    pub fn json(&self) -> Value {
        if self.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "response body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request and returns the response, or the transport error as text.
///
/// # Panics
/// When `url` is not on 127.0.0.1, because tests talk only to servers they start.
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<Response, String> {
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "test set-up may only call servers on 127.0.0.1, not {url}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(send_async(method, url, headers, body))
}

async fn send_async(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<Response, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|error| error.to_string())?;
    let method =
        reqwest::Method::from_bytes(method.as_bytes()).map_err(|error| error.to_string())?;
    let mut request = client.request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.map_err(|error| format!("{error:#}"))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|error| error.to_string())?
        .to_vec();
    Ok(Response { status, body })
}

/// Sends a JSON body and panics unless the status is 2xx.
pub fn send_json_ok(method: &str, url: &str, headers: &[(&str, &str)], body: &Value) -> Response {
    let mut all_headers = vec![("Content-Type", "application/json")];
    all_headers.extend_from_slice(headers);
    let response = send(
        method,
        url,
        &all_headers,
        Some(body.to_string().into_bytes()),
    )
    .unwrap_or_else(|error| panic!("{method} {url} failed: {error}"));
    assert!(
        (200..300).contains(&response.status),
        "{method} {url} returned {}: {}",
        response.status,
        response.text()
    );
    response
}
