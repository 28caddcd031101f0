"""Runs botocore's container credential provider against pod_identity.py.

The credentials are then used for a Secrets Manager call to moto, which takes
any key, so the check covers the wire format end to end.
"""

import json
import urllib.error
import urllib.request

import boto3
import botocore.session
import pytest
from botocore.credentials import ContainerProvider
from botocore.exceptions import CredentialRetrievalError
from botocore.utils import ContainerMetadataFetcher

import sajwt


def container_environment(pod_identity):
    return {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": pod_identity["url"],
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(pod_identity["token_file"]),
    }


def load_without_retry_delay(environment):
    fetcher = ContainerMetadataFetcher(sleep=lambda _seconds: None)
    return ContainerProvider(environ=environment, fetcher=fetcher).load()


def request_counts(pod_identity):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(pod_identity["base_url"] + "/_double/requests", timeout=10) as response:
        return json.load(response)


def test_default_chain_uses_container_credentials(pod_identity, monkeypatch):
    for name, value in container_environment(pod_identity).items():
        monkeypatch.setenv(name, value)

    credentials = botocore.session.Session().get_credentials()

    assert credentials is not None
    assert credentials.method == "container-role"
    frozen = credentials.get_frozen_credentials()
    assert frozen.access_key.startswith("ASIA")
    assert frozen.secret_key
    assert frozen.token
    assert request_counts(pod_identity) == {"issued": 1}


def test_credentials_work_against_moto(pod_identity, moto_server, monkeypatch):
    for name, value in container_environment(pod_identity).items():
        monkeypatch.setenv(name, value)
    session = boto3.session.Session(region_name="us-east-1")
    secrets = session.client("secretsmanager", endpoint_url=moto_server)

    secrets.create_secret(Name="portainer/db", SecretBinary=b"\x00key\xff")
    value = secrets.get_secret_value(SecretId="portainer/db")

    assert value["SecretBinary"] == b"\x00key\xff"
    assert session.get_credentials().method == "container-role"
    assert request_counts(pod_identity)["issued"] >= 1


def test_rotated_token_file_is_read_again(pod_identity):
    environment = container_environment(pod_identity)
    first = load_without_retry_delay(environment)
    pod_identity["token_file"].write_text(sajwt.service_account_jwt("portainer", "agent", audiences=["pods.eks.amazonaws.com"]))

    second = load_without_retry_delay(environment)

    assert first.get_frozen_credentials().access_key != second.get_frozen_credentials().access_key


def test_wrong_token_is_forbidden(pod_identity, tmp_path):
    wrong = tmp_path / "wrong-token"
    wrong.write_text(sajwt.service_account_jwt("portainer", "agent", audiences=["pods.eks.amazonaws.com"]))
    environment = container_environment(pod_identity)
    environment["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(wrong)

    with pytest.raises(CredentialRetrievalError) as raised:
        load_without_retry_delay(environment)

    assert "403" in str(raised.value)
    assert "issued" not in request_counts(pod_identity)


def test_expired_token_is_bad_request(pod_identity):
    pod_identity["token_file"].write_text(sajwt.service_account_jwt("portainer", "agent", lifetime_seconds=-60))

    with pytest.raises(CredentialRetrievalError) as raised:
        load_without_retry_delay(container_environment(pod_identity))

    assert "400" in str(raised.value)


def test_missing_authorization_is_bad_request(pod_identity):
    environment = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": pod_identity["url"]}

    with pytest.raises(CredentialRetrievalError) as raised:
        load_without_retry_delay(environment)

    assert "400" in str(raised.value)
    assert request_counts(pod_identity).get("rejected_400", 0) >= 1


def test_malformed_token_is_bad_request(pod_identity):
    pod_identity["token_file"].write_text("not-a-jwt")

    with pytest.raises(CredentialRetrievalError) as raised:
        load_without_retry_delay(container_environment(pod_identity))

    assert "400" in str(raised.value)


def test_other_path_is_not_found(pod_identity):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    token = pod_identity["token_file"].read_text()
    request = urllib.request.Request(pod_identity["base_url"] + "/v2/credentials", headers={"Authorization": token})

    with pytest.raises(urllib.error.HTTPError) as raised:
        opener.open(request, timeout=10)

    assert raised.value.code == 404
