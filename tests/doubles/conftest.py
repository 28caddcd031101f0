"""Fixtures that start the test doubles and moto on 127.0.0.1."""

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import sajwt
import testca

DOUBLES = Path(__file__).resolve().parent
START_TIMEOUT_SECONDS = 30


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch, tmp_path):
    """Keeps every client on 127.0.0.1 with no inherited credentials or proxies."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "missing-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "missing-aws-credentials"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))


class Process:
    """A child server whose output is drained by a thread; killed on close."""

    def __init__(self, argv, ready_pattern, stream_name):
        self.lines = []
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"},
        )
        self.ready = threading.Event()
        self.url = None
        pattern = re.compile(ready_pattern)
        for name in ("stdout", "stderr"):
            stream = getattr(self.process, name)
            watch = pattern if name == stream_name else None
            threading.Thread(target=self._drain, args=(stream, watch), daemon=True).start()
        if not self.ready.wait(START_TIMEOUT_SECONDS):
            self.close()
            raise RuntimeError(f"{argv[:3]} did not start within {START_TIMEOUT_SECONDS} s:\n" + "".join(self.lines))

    def _drain(self, stream, pattern):
        for line in stream:
            self.lines.append(line)
            if pattern is not None and not self.ready.is_set():
                match = pattern.search(line)
                if match:
                    self.url = match.group(1)
                    self.ready.set()

    def close(self):
        self.process.kill()
        self.process.wait()


def start_double(script, *arguments):
    return Process(
        [sys.executable, str(DOUBLES / script), "--port", "0", *arguments],
        r"^listening on (https?://(?:127\.0\.0\.1|\[::1\]):\d+)",
        "stdout",
    )


@pytest.fixture
def test_ca(tmp_path, monkeypatch):
    """Creates a private CA and a server certificate, and makes requests trust the CA."""
    paths = testca.create(tmp_path / "ca")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(paths["ca"]))
    return paths


def write_state(path, state):
    """Replaces a double's state file atomically; the double reads it on every request."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(state))
    temporary.replace(path)


@pytest.fixture
def tokenreview(tmp_path):
    """Starts tokenreview.py with one reviewer and one accepted service account."""
    reviewer = sajwt.service_account_jwt("kube-system", "bao-reviewer", uid="reviewer-uid")
    agent = sajwt.service_account_jwt("portainer", "agent", uid="agent-uid")
    expired = sajwt.service_account_jwt("portainer", "agent", uid="agent-uid", lifetime_seconds=-60)
    other_audience = sajwt.service_account_jwt("portainer", "agent", uid="agent-uid", audiences=["vault"])
    accounts = {
        agent: {"namespace": "portainer", "name": "agent", "uid": "agent-uid"},
        expired: {"namespace": "portainer", "name": "agent", "uid": "agent-uid"},
        other_audience: {"namespace": "portainer", "name": "agent", "uid": "agent-uid"},
    }
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps(accounts))
    reviewer_file = tmp_path / "reviewer.jwt"
    reviewer_file.write_text(reviewer)

    server = start_double("tokenreview.py", "--tokens", str(tokens_file), "--reviewer-token-file", str(reviewer_file))
    yield {
        "url": server.url,
        "reviewer": reviewer,
        "agent": agent,
        "expired": expired,
        "other_audience": other_audience,
        "tokens_file": tokens_file,
    }
    server.close()


@pytest.fixture
def pod_identity(tmp_path):
    """Starts pod_identity.py with a token file that the test may rewrite."""
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text(sajwt.service_account_jwt("portainer", "agent", audiences=["pods.eks.amazonaws.com"]))
    server = start_double("pod_identity.py", "--token-file", str(token_file))
    yield {"url": server.url + "/v1/credentials", "base_url": server.url, "token_file": token_file}
    server.close()


@pytest.fixture
def moto_server():
    """Starts moto's server on a port the kernel picks."""
    server = Process(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        r"Running on (http://127\.0\.0\.1:\d+)",
        "stderr",
    )
    yield server.url
    server.close()
