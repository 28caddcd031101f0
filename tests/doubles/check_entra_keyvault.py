"""Runs azure-identity's WorkloadIdentityCredential and azure-keyvault-secrets'
SecretClient against entra_keyvault.py.

The vault is addressed as pka.localhost, which this module resolves to
127.0.0.1 (RFC 6761 reserves .localhost for loopback), because the SDK accepts
a challenge resource only when the vault host is a subdomain of it.
"""

import json
import socket
import ssl
import urllib.error
import urllib.request
import uuid

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import WorkloadIdentityCredential
from azure.keyvault.secrets import SecretClient

import sajwt
from conftest import start_double, write_state

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "5d4bd1a8-5e3f-4a3e-a4f4-1a5f2a9b3c01"
ISSUER = "https://oidc.prod-aks.azure.com/9f2b2c4e-aks/"
SUBJECT = "system:serviceaccount:portainer:portainer-key-agent"
VERSION_1 = uuid.uuid4().hex
VERSION_2 = uuid.uuid4().hex


def federated_token(lifetime_seconds=3600, audiences=("api://AzureADTokenExchange",), issuer=ISSUER):
    return sajwt.service_account_jwt("portainer", "portainer-key-agent", audiences=audiences, lifetime_seconds=lifetime_seconds, issuer=issuer)


@pytest.fixture(autouse=True)
def localhost_names(monkeypatch):
    """Resolves *.localhost to 127.0.0.1 and nothing else differently."""
    original = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return original(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def keyvault(tmp_path, test_ca):
    state_file = tmp_path / "state.json"
    state = {
        "tenant_id": TENANT,
        "client_id": CLIENT,
        "issuer": ISSUER,
        "subject": SUBJECT,
        "secrets": {
            "portainer-db-key": {"versions": [{"id": VERSION_1, "value": "first"}, {"id": VERSION_2, "value": "pka-azure-key\n"}]},
            "disabled-key": {"versions": [{"id": VERSION_1, "value": "x", "enabled": False}]},
            "rbac-key": {"versions": [{"id": VERSION_1, "value": "x"}]},
        },
        "rbac_denied": ["rbac-key"],
    }
    write_state(state_file, state)
    server = start_double("entra_keyvault.py", "--state", str(state_file), "--tls-cert", str(test_ca["cert"]), "--tls-key", str(test_ca["key"]))
    port = server.url.rsplit(":", 1)[1]
    state["resource"] = f"https://localhost:{port}"
    write_state(state_file, state)
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(federated_token())
    yield {
        "origin": server.url,
        "vault_url": f"https://pka.localhost:{port}",
        "state": state,
        "state_file": state_file,
        "token_file": token_file,
        "ca": test_ca["ca"],
    }
    server.close()


def credential(keyvault, **overrides):
    options = {
        "tenant_id": TENANT,
        "client_id": CLIENT,
        "token_file_path": str(keyvault["token_file"]),
        "authority": keyvault["origin"],
        "disable_instance_discovery": True,
    }
    options.update(overrides)
    return WorkloadIdentityCredential(**options)


def client(keyvault, **credential_overrides):
    return SecretClient(vault_url=keyvault["vault_url"], credential=credential(keyvault, **credential_overrides))


def request_counts(keyvault):
    context = ssl.create_default_context(cafile=str(keyvault["ca"]))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    with opener.open(keyvault["origin"] + "/_double/requests", timeout=10) as response:
        return json.load(response)


def test_latest_and_pinned_versions(keyvault):
    secrets = client(keyvault)

    latest = secrets.get_secret("portainer-db-key")
    pinned = secrets.get_secret("portainer-db-key", VERSION_1)

    assert latest.value == "pka-azure-key\n"
    assert latest.properties.version == VERSION_2
    assert pinned.value == "first"
    assert request_counts(keyvault)["vault_401_Unauthorized"] >= 1


def test_missing_secret_is_not_found(keyvault):
    with pytest.raises(ResourceNotFoundError):
        client(keyvault).get_secret("no-such-secret")


def test_disabled_secret_is_forbidden(keyvault):
    with pytest.raises(HttpResponseError) as raised:
        client(keyvault).get_secret("disabled-key")

    assert raised.value.status_code == 403
    assert "disabled" in str(raised.value)


def test_rbac_denial_is_forbidden(keyvault):
    with pytest.raises(HttpResponseError) as raised:
        client(keyvault).get_secret("rbac-key")

    assert raised.value.status_code == 403
    assert "ForbiddenByRbac" in str(raised.value)


def test_expired_assertion_is_rejected(keyvault):
    keyvault["token_file"].write_text(federated_token(lifetime_seconds=-60))

    with pytest.raises(ClientAuthenticationError) as raised:
        client(keyvault).get_secret("portainer-db-key")

    assert "AADSTS700024" in str(raised.value)


def test_wrong_assertion_audience_is_rejected(keyvault):
    keyvault["token_file"].write_text(federated_token(audiences=("https://kubernetes.default.svc",)))

    with pytest.raises(ClientAuthenticationError) as raised:
        client(keyvault).get_secret("portainer-db-key")

    assert "AADSTS700212" in str(raised.value)


def test_unknown_issuer_is_rejected(keyvault):
    keyvault["token_file"].write_text(federated_token(issuer="https://other-cluster.example/"))

    with pytest.raises(ClientAuthenticationError) as raised:
        client(keyvault).get_secret("portainer-db-key")

    assert "AADSTS70021" in str(raised.value)


def test_wrong_scope_is_rejected(keyvault):
    with pytest.raises(ClientAuthenticationError) as raised:
        credential(keyvault).get_token("https://localhost/user_impersonation")

    assert "AADSTS1002012" in str(raised.value)


def test_token_for_other_resource_is_rejected(keyvault):
    token = credential(keyvault).get_token("https://management.example/.default").token
    context = ssl.create_default_context(cafile=str(keyvault["ca"]))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(keyvault["origin"] + "/secrets/portainer-db-key?api-version=7.5", headers={"Authorization": f"Bearer {token}"})

    with pytest.raises(urllib.error.HTTPError) as raised:
        opener.open(request, timeout=10)

    assert raised.value.code == 401
    assert "invalid_token" in raised.value.headers["WWW-Authenticate"]


def test_sdk_rejects_other_challenge_resource(keyvault):
    keyvault["state"]["resource"] = "https://evil.example"
    write_state(keyvault["state_file"], keyvault["state"])

    with pytest.raises(ValueError) as raised:
        client(keyvault).get_secret("portainer-db-key")

    assert "does not match" in str(raised.value)
    assert "token_issued" not in request_counts(keyvault)


def test_replaced_token_file_is_read_again(keyvault):
    first = credential(keyvault)
    first.get_token(keyvault["state"]["resource"] + "/.default")
    keyvault["token_file"].write_text(federated_token(lifetime_seconds=-60))

    with pytest.raises(ClientAuthenticationError) as raised:
        credential(keyvault).get_token(keyvault["state"]["resource"] + "/.default")

    assert "AADSTS700024" in str(raised.value)
