"""Runs requests (urllib3) and google-cloud-secret-manager through connect_proxy.py
and tls_front.py."""

import base64
import json
import socket
import urllib.request

import pytest
import requests
from google.api_core.client_options import ClientOptions
from google.auth import identity_pool
from google.cloud import secretmanager

import check_google_secret_manager as google_check
from conftest import start_double

pytest_plugins = ["check_google_secret_manager"]


def start_proxy():
    return start_double("connect_proxy.py")


def proxy_targets(proxy):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(proxy.url + "/_double/targets", timeout=10) as response:
        return json.load(response)


def test_vendor_client_tunnels_through_proxy(google, monkeypatch):
    proxy = start_proxy()
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        credentials = identity_pool.Credentials.from_info(
            google_check.credential_configuration(google), scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        client = secretmanager.SecretManagerServiceClient(
            credentials=credentials, transport="rest", client_options=ClientOptions(api_endpoint=google["url"])
        )

        response = client.access_secret_version(name=google_check.version_name("portainer-db-key"))

        assert response.payload.data == google_check.BINARY
        assert google["url"].removeprefix("https://") in proxy_targets(proxy)
    finally:
        proxy.close()


def test_non_loopback_target_is_refused():
    proxy = start_proxy()
    try:
        host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(b"CONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n\r\n")
            reply = connection.recv(4096).decode()

        assert reply.startswith("HTTP/1.1 403")
        assert "example.invalid:443" in proxy_targets(proxy)
    finally:
        proxy.close()


def test_plain_http_proxying_is_not_implemented():
    proxy = start_proxy()
    try:
        response = requests.get("http://127.0.0.1:9/", proxies={"http": proxy.url}, timeout=10)

        assert response.status_code == 501
    finally:
        proxy.close()


def test_tls_front_serves_https_for_a_plain_server(test_ca, tmp_path):
    backend = start_double("connect_proxy.py")
    front = start_double(
        "tls_front.py",
        "--backend",
        backend.url.removeprefix("http://"),
        "--tls-cert",
        str(test_ca["cert"]),
        "--tls-key",
        str(test_ca["key"]),
    )
    try:
        response = requests.get(front.url + "/_double/targets", timeout=10)

        assert response.status_code == 200
        assert response.json() == []
    finally:
        front.close()
        backend.close()


def test_checksum_helper_is_castagnoli():
    import google_secret_manager

    assert google_secret_manager.crc32c(base64.b64decode("MTIzNDU2Nzg5")) == 0xE3069283
