"""Runs google-auth's identity_pool (external_account) credentials and
google-cloud-secret-manager's SecretManagerServiceClient, over its REST
transport, against google_secret_manager.py.
"""

import base64
import json
import ssl
import urllib.error
import urllib.request

import pytest
from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.auth import identity_pool
from google.cloud import secretmanager

import sajwt
from conftest import start_double, write_state

PROJECT_ID = "pka-test"
PROJECT_NUMBER = "123456789012"
PROVIDER = f"projects/{PROJECT_NUMBER}/locations/global/workloadIdentityPools/portainer/providers/cluster"
AUDIENCE = f"//iam.googleapis.com/{PROVIDER}"
JWT_AUDIENCE = f"https://iam.googleapis.com/{PROVIDER}"
ISSUER = "https://container.googleapis.com/v1/projects/pka-test/locations/europe-west1/clusters/c"
SUBJECT = "system:serviceaccount:portainer:portainer-key-agent"
SERVICE_ACCOUNT = "portainer-key-agent@pka-test.iam.gserviceaccount.com"
BINARY = b"\x00\xffpka\n\x00"


def subject_token(lifetime_seconds=3600, audiences=(JWT_AUDIENCE,)):
    return sajwt.service_account_jwt("portainer", "portainer-key-agent", audiences=audiences, lifetime_seconds=lifetime_seconds, issuer=ISSUER)


@pytest.fixture
def google(tmp_path, test_ca):
    state_file = tmp_path / "state.json"
    state = {
        "audience": AUDIENCE,
        "jwt_audience": JWT_AUDIENCE,
        "issuer": ISSUER,
        "subject": SUBJECT,
        "project_id": PROJECT_ID,
        "project_number": PROJECT_NUMBER,
        "service_account": SERVICE_ACCOUNT,
        "secrets": {
            "portainer-db-key": {
                "versions": [
                    {"data": base64.b64encode(b"first").decode()},
                    {"data": base64.b64encode(BINARY).decode()},
                    {"data": base64.b64encode(b"disabled").decode(), "state": "DISABLED"},
                ],
                "aliases": {"stable": 1},
            },
            "corrupt": {"versions": [{"data": base64.b64encode(b"x").decode()}]},
            "denied": {"versions": [{"data": base64.b64encode(b"x").decode()}]},
        },
        "denied": ["denied"],
        "corrupt_crc": ["corrupt"],
    }
    write_state(state_file, state)
    server = start_double("google_secret_manager.py", "--state", str(state_file), "--tls-cert", str(test_ca["cert"]), "--tls-key", str(test_ca["key"]))
    token_file = tmp_path / "token"
    token_file.write_text(subject_token())
    yield {"url": server.url, "state": state, "state_file": state_file, "token_file": token_file, "ca": test_ca["ca"]}
    server.close()


def credential_configuration(google, impersonate=False):
    info = {
        "type": "external_account",
        "audience": AUDIENCE,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": f"{google['url']}/v1/token",
        "credential_source": {"file": str(google["token_file"]), "format": {"type": "text"}},
    }
    if impersonate:
        info["service_account_impersonation_url"] = f"{google['url']}/v1/projects/-/serviceAccounts/{SERVICE_ACCOUNT}:generateAccessToken"
    return info


def client(google, impersonate=False):
    credentials = identity_pool.Credentials.from_info(credential_configuration(google, impersonate), scopes=["https://www.googleapis.com/auth/cloud-platform"])
    return secretmanager.SecretManagerServiceClient(
        credentials=credentials,
        transport="rest",
        client_options=ClientOptions(api_endpoint=google["url"]),
    )


def version_name(secret, version="latest", project=PROJECT_ID):
    return f"projects/{project}/secrets/{secret}/versions/{version}"


def request_counts(google):
    context = ssl.create_default_context(cafile=str(google["ca"]))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    with opener.open(google["url"] + "/_double/requests", timeout=10) as response:
        return json.load(response)


def test_latest_binary_payload_with_checksum(google):
    response = client(google).access_secret_version(name=version_name("portainer-db-key"))

    assert response.payload.data == BINARY
    assert response.name == f"projects/{PROJECT_NUMBER}/secrets/portainer-db-key/versions/2"
    assert response.payload.data_crc32c is not None


def test_pinned_version_and_alias(google):
    secrets = client(google)

    pinned = secrets.access_secret_version(name=version_name("portainer-db-key", "1"))
    alias = secrets.access_secret_version(name=version_name("portainer-db-key", "stable"))

    assert pinned.payload.data == b"first"
    assert alias.name.endswith("/versions/1")


def test_impersonated_service_account(google):
    google["state"]["require_impersonation"] = True
    write_state(google["state_file"], google["state"])

    response = client(google, impersonate=True).access_secret_version(name=version_name("portainer-db-key"))

    assert response.payload.data == BINARY
    assert request_counts(google)["issued_service_account"] == 1


def test_federated_token_denied_where_impersonation_required(google):
    google["state"]["require_impersonation"] = True
    write_state(google["state_file"], google["state"])

    with pytest.raises(api_exceptions.Forbidden) as raised:
        client(google).access_secret_version(name=version_name("portainer-db-key"))

    assert "secretmanager.versions.access" in str(raised.value)


def test_disabled_version_is_rejected(google):
    with pytest.raises(api_exceptions.BadRequest) as raised:
        client(google).access_secret_version(name=version_name("portainer-db-key", "3"))

    assert "DISABLED state" in str(raised.value)


def test_missing_secret_is_not_found(google):
    with pytest.raises(api_exceptions.NotFound):
        client(google).access_secret_version(name=version_name("no-such-secret"))


def test_denied_secret_is_permission_denied(google):
    with pytest.raises(api_exceptions.Forbidden):
        client(google).access_secret_version(name=version_name("denied"))


def test_bad_checksum_differs_from_payload(google):
    import google_secret_manager

    response = client(google).access_secret_version(name=version_name("corrupt"))

    assert response.payload.data_crc32c != google_secret_manager.crc32c(response.payload.data)


def test_checksum_matches_google_crc32c(google):
    import google_secret_manager

    response = client(google).access_secret_version(name=version_name("portainer-db-key", "1"))

    assert response.payload.data_crc32c == google_secret_manager.crc32c(b"first")
    assert google_secret_manager.crc32c(b"123456789") == 0xE3069283


def test_expired_subject_token_is_rejected(google):
    google["token_file"].write_text(subject_token(lifetime_seconds=-60))

    with pytest.raises(auth_exceptions.OAuthError) as raised:
        client(google).access_secret_version(name=version_name("portainer-db-key"))

    assert "invalid_grant" in str(raised.value)


def test_wrong_jwt_audience_is_rejected(google):
    google["token_file"].write_text(subject_token(audiences=("https://kubernetes.default.svc",)))

    with pytest.raises(auth_exceptions.OAuthError) as raised:
        client(google).access_secret_version(name=version_name("portainer-db-key"))

    assert "audience" in str(raised.value)


def test_wrong_provider_audience_is_rejected(google):
    google["state"]["audience"] = AUDIENCE + "-other"
    write_state(google["state_file"], google["state"])

    with pytest.raises(auth_exceptions.OAuthError) as raised:
        client(google).access_secret_version(name=version_name("portainer-db-key"))

    assert "invalid_target" in str(raised.value)


def test_request_without_bearer_is_unauthenticated(google):
    context = ssl.create_default_context(cafile=str(google["ca"]))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))

    with pytest.raises(urllib.error.HTTPError) as raised:
        opener.open(f"{google['url']}/v1/{version_name('portainer-db-key')}:access", timeout=10)

    assert raised.value.code == 401
    assert json.load(raised.value)["error"]["status"] == "UNAUTHENTICATED"
