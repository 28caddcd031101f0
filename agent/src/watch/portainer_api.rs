//! Applies a changed admin password to a running Portainer through its API.
//!
//! Portainer reads `--admin-password-file` only while no administrator exists, so
//! a later change needs `POST /api/auth` with the previous password, then
//! `PUT /api/users/{id}/passwd` with the previous and the new one.

use backends::SecretBytes;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::Value;

use crate::config::PortainerApiSpec;
use crate::value::wipe_json;

/// Changes the password from `previous` to `new`, as Portainer reads them from the
/// file: one trailing `\n` removed.
pub async fn change_password(
    client: &reqwest::Client,
    api: &PortainerApiSpec,
    previous: &SecretBytes,
    new: &SecretBytes,
) -> Result<(), String> {
    let previous = portainer_text(previous)?;
    let new = portainer_text(new)?;
    let jwt = authenticate(client, api, &previous).await?;

    let mut body =
        serde_json::json!({ "Password": previous.expose_text(), "NewPassword": new.expose_text() });
    let url = api
        .url
        .join(&format!("api/users/{}/passwd", api.user_id))
        .map_err(|error| format!("invalid Portainer URL: {error}"))?;
    let mut bearer = HeaderValue::from_str(&format!("Bearer {}", jwt.expose_text()))
        .map_err(|_| "Portainer returned a token that is not a valid header value".to_owned())?;
    bearer.set_sensitive(true);
    let result = client
        .put(url)
        .header(AUTHORIZATION, bearer)
        .json(&body)
        .send()
        .await;
    wipe_json(&mut body);

    let response =
        result.map_err(|error| format!("PUT api/users/{}/passwd failed: {error}", api.user_id))?;
    match response.status().as_u16() {
        200..=299 => Ok(()),
        status => Err(format!(
            "PUT api/users/{}/passwd returned HTTP {status}; check that user {} exists and that the new password meets Portainer's rules",
            api.user_id, api.user_id
        )),
    }
}

async fn authenticate(
    client: &reqwest::Client,
    api: &PortainerApiSpec,
    password: &Text,
) -> Result<Text, String> {
    let url = api
        .url
        .join("api/auth")
        .map_err(|error| format!("invalid Portainer URL: {error}"))?;
    let mut body =
        serde_json::json!({ "Username": api.username, "Password": password.expose_text() });
    let result = client.post(url).json(&body).send().await;
    wipe_json(&mut body);

    let response = result.map_err(|error| format!("POST api/auth failed: {error}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!(
            "POST api/auth as {:?} returned HTTP {}; the previous password no longer logs in, so change it in Portainer by hand",
            api.username,
            status.as_u16()
        ));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|error| format!("failed to read the api/auth reply: {error}"))?;
    let mut reply: Value =
        serde_json::from_slice(&bytes).map_err(|_| "the api/auth reply is not JSON".to_owned())?;
    let jwt = reply
        .get("jwt")
        .and_then(Value::as_str)
        .map(|jwt| Text(SecretBytes::copy_from(jwt.as_bytes())));
    wipe_json(&mut reply);
    jwt.ok_or_else(|| "the api/auth reply has no jwt".to_owned())
}

/// UTF-8 secret text.
struct Text(SecretBytes);

impl Text {
    fn expose_text(&self) -> &str {
        std::str::from_utf8(self.0.expose()).unwrap_or_default()
    }
}

fn portainer_text(password: &SecretBytes) -> Result<Text, String> {
    let bytes = password.expose();
    let trimmed = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    std::str::from_utf8(trimmed)
        .map(|_| Text(SecretBytes::copy_from(trimmed)))
        .map_err(|_| {
            "the password is not UTF-8, which Portainer's JSON API cannot carry".to_owned()
        })
}
