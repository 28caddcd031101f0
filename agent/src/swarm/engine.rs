//! The Docker Engine API calls of `swarm sync`, through bollard over the Unix socket.

use std::collections::HashMap;

use base64::Engine as _;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{Secret, SecretSpec as DockerSecretSpec, Service, ServiceSpec};
use bollard::query_parameters::{
    InspectServiceOptions, ListSecretsOptionsBuilder, ListServicesOptions, UpdateServiceOptions,
};

use super::SwarmError;
use super::plan::LABEL_MANAGED;

/// Default Docker socket, used when `DOCKER_HOST` is unset.
pub const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

/// Request timeout for one Engine API call, in seconds.
const REQUEST_TIMEOUT_SECONDS: u64 = 60;

/// Connects to the engine named by `DOCKER_HOST` (only `unix://` URLs), or to
/// `/var/run/docker.sock`, and negotiates the API version.
///
/// NOTE: TCP and TLS endpoints are not supported, so the agent links no OpenSSL
/// and never sends the value over a network. Run the agent on a manager node.
pub async fn connect(docker_host: Option<&str>) -> Result<Docker, SwarmError> {
    let host = docker_host.unwrap_or(DEFAULT_SOCKET);
    if !host.starts_with("unix://") {
        return Err(SwarmError::UnsupportedHost {
            host: host.to_owned(),
        });
    }
    let docker =
        Docker::connect_with_unix(host, REQUEST_TIMEOUT_SECONDS, bollard::API_DEFAULT_VERSION)
            .map_err(|error| engine_error("connect to the Docker engine", host, error))?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|error| engine_error("negotiate the Docker API version", host, error))?;
    let version = docker.client_version();
    tracing::debug!(host, api_version = %version, "connected to the Docker engine");
    Ok(docker)
}

/// Classifies a bollard error by the step that failed.
pub fn engine_error(step: &str, object: &str, error: DockerError) -> SwarmError {
    match error {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => SwarmError::Rejected {
            step: step.to_owned(),
            object: object.to_owned(),
            status_code,
            message,
        },
        other => {
            let permission_denied = io_kind(&other) == Some(std::io::ErrorKind::PermissionDenied);
            SwarmError::Unreachable {
                step: step.to_owned(),
                object: object.to_owned(),
                permission_denied,
                error: other.to_string(),
            }
        }
    }
}

/// Finds an I/O error kind in the source chain, such as a denied socket.
fn io_kind(error: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = error.source();
    }
    None
}

/// Returns the swarm's cluster ID. The engine rejects the call with 503 on a node
/// that is not a swarm manager.
pub async fn cluster_id(docker: &Docker) -> Result<String, SwarmError> {
    let swarm = docker
        .inspect_swarm()
        .await
        .map_err(|error| engine_error("inspect the swarm", "swarm", error))?;
    swarm.id.ok_or_else(|| SwarmError::Incomplete {
        object: "swarm".to_owned(),
        field: "ID",
    })
}

pub async fn inspect_service(docker: &Docker, name: &str) -> Result<Service, SwarmError> {
    docker
        .inspect_service(name, None::<InspectServiceOptions>)
        .await
        .map_err(|error| engine_error("inspect the service", name, error))
}

pub async fn list_services(docker: &Docker) -> Result<Vec<Service>, SwarmError> {
    docker
        .list_services(None::<ListServicesOptions>)
        .await
        .map_err(|error| engine_error("list services", "services", error))
}

/// Lists the secrets that carry the agent's managed label.
pub async fn list_managed_secrets(docker: &Docker) -> Result<Vec<Secret>, SwarmError> {
    let filters = HashMap::from([("label", vec![format!("{LABEL_MANAGED}=true")])]);
    let options = ListSecretsOptionsBuilder::default()
        .filters(&filters)
        .build();
    docker
        .list_secrets(Some(options))
        .await
        .map_err(|error| engine_error("list secrets", "secrets", error))
}

/// Creates a Swarm secret and returns its ID.
///
/// The value goes only into the request body, base64-encoded as the API expects.
/// The body is built here and never formatted with `Debug`.
///
/// NOTE: the base64 copy and bollard's serialised body are freed without being
/// zeroized, because bollard takes the spec by value.
pub async fn create_secret(
    docker: &Docker,
    name: &str,
    labels: HashMap<String, String>,
    value: &[u8],
) -> Result<String, SwarmError> {
    let spec = DockerSecretSpec {
        name: Some(name.to_owned()),
        labels: Some(labels),
        data: Some(base64::engine::general_purpose::STANDARD.encode(value)),
        ..Default::default()
    };
    let created = docker
        .create_secret(spec)
        .await
        .map_err(|error| engine_error("create the secret", name, error))?;
    Ok(created.id)
}

pub async fn delete_secret(docker: &Docker, id: &str) -> Result<(), SwarmError> {
    docker
        .delete_secret(id)
        .await
        .map_err(|error| engine_error("remove the secret", id, error))
}

/// Updates a service to `spec`, guarded by the version it was read at, so a
/// concurrent change makes the engine reject this one instead of losing it.
///
/// NOTE: the spec round-trips through bollard's models (API 1.53), so a field that
/// the engine returns and those models lack would be dropped from the update.
pub async fn update_service(
    docker: &Docker,
    name: &str,
    spec: ServiceSpec,
    version: u64,
) -> Result<Vec<String>, SwarmError> {
    let version = i32::try_from(version).map_err(|_| SwarmError::Incomplete {
        object: name.to_owned(),
        field: "Version.Index (above i32::MAX)",
    })?;
    let options = UpdateServiceOptions {
        version,
        ..Default::default()
    };
    let response = docker
        .update_service(name, spec, options, None)
        .await
        .map_err(|error| engine_error("update the service", name, error))?;
    Ok(response.warnings.unwrap_or_default())
}
