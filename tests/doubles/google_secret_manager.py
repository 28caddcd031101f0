"""Google STS, IAM Credentials and Secret Manager double, for workload identity
federation.

    python google_secret_manager.py --state STATE.json --tls-cert CERT --tls-key KEY

One HTTPS server plays three services:

* STS: `POST /v1/token`, the OAuth 2.0 token exchange (RFC 8693) that
  `external_account` credentials send: grant_type
  urn:ietf:params:oauth:grant-type:token-exchange, audience, scope,
  requested_token_type, subject_token and subject_token_type, form encoded.
  Errors use the OAuth body: error and error_description.
* IAM Credentials: `POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken`
  with the federated token as bearer.
* Secret Manager: `GET /v1/projects/{project}/secrets/{id}/versions/{version}:access`,
  the REST form of AccessSecretVersion. Errors use Google's body:
  error.code, error.message, error.status.

The state file is read on every request (write it atomically):

    {
      "audience": "//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/K",
      "jwt_audience": "...",                  # aud the subject token must carry
      "issuer": "...", "subject": "...",
      "project_id": "...", "project_number": "...",
      "service_account": "...@....iam.gserviceaccount.com",
      "require_impersonation": false,         # federated tokens alone are denied
      "token_lifetime_seconds": 3600,
      "secrets": {"ID": {"versions": [{"data": "<base64>", "state": "ENABLED"}], "aliases": {"stable": 1}}},
      "denied": ["ID"],
      "corrupt_crc": ["ID"]                   # states a wrong dataCrc32c
    }

Versions are numbered from 1 in list order, and `latest` is the highest enabled
one. Rejections follow the real services:

* STS: a wrong grant type, requested token type, audience or subject token
  type, a subject token that is not a JWT, has expired, or has another aud, iss
  or sub, and a scope other than cloud-platform or iam (400, OAuth error body).
* Every bearer call: a missing, unknown or expired token (401 UNAUTHENTICATED).
* Secret Manager: a federated token where impersonation is required and denied
  secrets (403 PERMISSION_DENIED), disabled and destroyed versions (400
  FAILED_PRECONDITION), unknown projects, secrets and versions (404 NOT_FOUND).

The subject token's signature is not checked, because the double has no issuer keys.
`GET /_double/issued` returns the tokens handed out and `GET /_double/requests`
the request counts by outcome.
"""

import argparse
import base64
import binascii
import json
import secrets
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from httpdouble import BodyError, DoubleHandler, add_listen_arguments, serve

EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# Scopes STS grants to federated tokens: cloud-platform, or iam when the token
# only serves to impersonate a service account.
STS_SCOPES = {CLOUD_PLATFORM, "https://www.googleapis.com/auth/iam"}


def _crc32c_table():
    table = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ 0x82F63B78 if value & 1 else value >> 1
        table.append(value)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    """CRC-32C (Castagnoli), the checksum in Secret Manager's dataCrc32c."""
    value = 0xFFFFFFFF
    for byte in data:
        value = CRC32C_TABLE[(value ^ byte) & 0xFF] ^ (value >> 8)
    return value ^ 0xFFFFFFFF


def jwt_claims(token):
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


class GoogleHandler(DoubleHandler):
    server_version = "google-secret-manager-double"

    def oauth_error(self, error, description):
        self.server.count(f"sts_{error}")
        self.send_json(400, {"error": error, "error_description": description})

    def google_error(self, code, status, message):
        self.server.count(f"{code}_{status}")
        self.send_json(code, {"error": {"code": code, "message": message, "status": status}})

    def exchange(self, state):
        try:
            form = parse_qs(self.read_body().decode(), keep_blank_values=True)
        except (BodyError, UnicodeDecodeError):
            self.oauth_error("invalid_request", "Invalid request body.")
            return
        field = lambda name: (form.get(name) or [""])[0]  # noqa: E731

        if field("grant_type") != EXCHANGE_GRANT:
            self.oauth_error("unsupported_grant_type", f"Invalid value for \"grant_type\": {field('grant_type')!r}.")
            return
        if field("requested_token_type") != ACCESS_TOKEN_TYPE:
            self.oauth_error("invalid_request", "Invalid value for \"requested_token_type\".")
            return
        if field("audience") != state["audience"]:
            self.oauth_error("invalid_target", "The target service indicated by the \"audience\" parameters is invalid. This might either be because the pool or provider is disabled or deleted or because it doesn't exist.")
            return
        if field("subject_token_type") not in JWT_TOKEN_TYPES:
            self.oauth_error("invalid_request", "Invalid value for \"subject_token_type\". Expected an OIDC token type.")
            return
        scopes = field("scope").split()
        if not scopes or not set(scopes) <= STS_SCOPES:
            self.oauth_error("invalid_scope", f"Invalid value for \"scope\": {field('scope')!r}.")
            return
        claims = jwt_claims(field("subject_token"))
        if claims is None:
            self.oauth_error("invalid_request", "Invalid value for \"subject_token\". The token is not a valid JWT.")
            return
        expires = claims.get("exp")
        if not isinstance(expires, (int, float)) or expires < time.time():
            self.oauth_error("invalid_grant", "The access token has expired.")
            return
        audiences = claims.get("aud")
        audiences = audiences if isinstance(audiences, list) else [audiences]
        if state["jwt_audience"] not in audiences:
            self.oauth_error("invalid_grant", f"The audience in ID Token [{','.join(map(str, audiences))}] does not match the expected audience.")
            return
        if claims.get("iss") != state["issuer"] or claims.get("sub") != state["subject"]:
            self.oauth_error("invalid_grant", "The given credential is rejected by the attribute condition.")
            return

        lifetime = int(state.get("token_lifetime_seconds", 3600))
        token = "ya29.d." + secrets.token_urlsafe(64)
        self.server.issue(token, "federated", lifetime)
        self.send_json(200, {"access_token": token, "issued_token_type": ACCESS_TOKEN_TYPE, "token_type": "Bearer", "expires_in": lifetime})

    def bearer(self):
        authorization = self.headers.get("Authorization", "")
        if not authorization.startswith("Bearer "):
            self.google_error(401, "UNAUTHENTICATED", "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.")
            return None
        grant = self.server.grant(authorization[len("Bearer "):])
        if grant is None:
            self.google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.")
        return grant

    def impersonate(self, state, email):
        grant = self.bearer()
        if grant is None:
            return
        if grant["kind"] != "federated" or email != state.get("service_account"):
            self.google_error(403, "PERMISSION_DENIED", f"Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).")
            return
        try:
            body = json.loads(self.read_body() or b"{}")
        except (BodyError, ValueError):
            self.google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
            return
        if CLOUD_PLATFORM not in body.get("scope", []):
            self.google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument: scope.")
            return
        lifetime_text = str(body.get("lifetime", "3600s"))
        try:
            lifetime = int(float(lifetime_text.rstrip("s")))
        except ValueError:
            self.google_error(400, "INVALID_ARGUMENT", f"Invalid value at 'lifetime' ({lifetime_text}).")
            return
        if not 0 < lifetime <= 3600:
            self.google_error(400, "INVALID_ARGUMENT", "The lifetime must be between 1s and 3600s.")
            return
        token = "ya29.c." + secrets.token_urlsafe(64)
        self.server.issue(token, "service_account", lifetime)
        expire_time = (datetime.now(timezone.utc) + timedelta(seconds=lifetime)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.send_json(200, {"accessToken": token, "expireTime": expire_time})

    def access(self, state, project, secret_id, version_name):
        grant = self.bearer()
        if grant is None:
            return
        if state.get("require_impersonation") and grant["kind"] != "service_account":
            self.google_error(403, "PERMISSION_DENIED", f"Permission 'secretmanager.versions.access' denied for resource 'projects/{project}/secrets/{secret_id}/versions/{version_name}' (or it may not exist).")
            return
        if project not in (state["project_id"], state["project_number"]):
            self.google_error(403, "PERMISSION_DENIED", f"Permission 'secretmanager.versions.access' denied for resource 'projects/{project}/secrets/{secret_id}/versions/{version_name}' (or it may not exist).")
            return
        name = f"projects/{state['project_number']}/secrets/{secret_id}"
        if secret_id in state.get("denied", []):
            self.google_error(403, "PERMISSION_DENIED", f"Permission 'secretmanager.versions.access' denied for resource '{name}/versions/{version_name}' (or it may not exist).")
            return
        secret = state.get("secrets", {}).get(secret_id)
        if secret is None or not secret.get("versions"):
            self.google_error(404, "NOT_FOUND", f"Secret [{name}] not found or has no versions.")
            return

        versions = secret["versions"]
        if version_name == "latest":
            enabled = [index for index, version in enumerate(versions, 1) if version.get("state", "ENABLED") == "ENABLED"]
            if not enabled:
                self.google_error(400, "FAILED_PRECONDITION", f"Secret [{name}] has no enabled versions.")
                return
            number = enabled[-1]
        elif version_name.isdigit():
            number = int(version_name)
        elif version_name in secret.get("aliases", {}):
            number = int(secret["aliases"][version_name])
        else:
            self.google_error(404, "NOT_FOUND", f"Secret Version [{name}/versions/{version_name}] not found.")
            return
        if not 1 <= number <= len(versions):
            self.google_error(404, "NOT_FOUND", f"Secret Version [{name}/versions/{number}] not found.")
            return
        version = versions[number - 1]
        version_state = version.get("state", "ENABLED")
        if version_state != "ENABLED":
            self.google_error(400, "FAILED_PRECONDITION", f"Secret Version [{name}/versions/{number}] is in {version_state} state.")
            return

        data = base64.b64decode(version["data"])
        checksum = crc32c(data)
        if secret_id in state.get("corrupt_crc", []):
            checksum ^= 1
        self.server.count("access_200")
        self.send_json(200, {"name": f"{name}/versions/{number}", "payload": {"data": version["data"], "dataCrc32c": str(checksum)}})

    def route(self, method):
        state = self.server.state()
        path = unquote(urlsplit(self.path).path)
        segments = [segment for segment in path.split("/") if segment]

        if method == "GET" and path == "/_double/issued":
            self.send_json(200, self.server.issued())
        elif method == "GET" and path == "/_double/requests":
            self.send_json(200, self.server.counts())
        elif method == "POST" and path == "/v1/token":
            self.exchange(state)
        elif method == "POST" and len(segments) == 5 and segments[:4] == ["v1", "projects", "-", "serviceAccounts"] and segments[4].endswith(":generateAccessToken"):
            self.impersonate(state, segments[4][: -len(":generateAccessToken")])
        elif method == "GET" and len(segments) == 7 and segments[0] == "v1" and segments[1] == "projects" and segments[3] == "secrets" and segments[5] == "versions" and segments[6].endswith(":access"):
            self.access(state, segments[2], segments[4], segments[6][: -len(":access")])
        else:
            self.google_error(404, "NOT_FOUND", f"No route for {method} {path}.")

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add_listen_arguments(parser)
    parser.add_argument("--state", required=True, help="JSON state file, read on every request")
    args = parser.parse_args(argv)
    if not args.tls_cert:
        parser.error("--tls-cert is required: the Google APIs are HTTPS only")

    lock = threading.Lock()
    counts = {}
    grants = {}

    def configure(server):
        def count(name):
            with lock:
                counts[name] = counts.get(name, 0) + 1

        def issue(token, kind, lifetime):
            with lock:
                grants[token] = {"kind": kind, "expires": time.time() + lifetime}
                counts[f"issued_{kind}"] = counts.get(f"issued_{kind}", 0) + 1

        def grant(token):
            with lock:
                found = grants.get(token)
            if found is None or found["expires"] < time.time():
                return None
            return found

        server.state = lambda: json.loads(Path(args.state).read_text())
        server.count = count
        server.issue = issue
        server.grant = grant
        server.counts = lambda: dict(counts)
        server.issued = lambda: list(grants)

    serve(GoogleHandler, args.port, "google_secret_manager", configure, args.host, args.tls_cert, args.tls_key)


if __name__ == "__main__":
    sys.exit(main())
