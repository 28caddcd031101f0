"""Entra ID and Azure Key Vault double, for Azure workload identity.

    python entra_keyvault.py --state STATE.json --tls-cert CERT --tls-key KEY

One HTTPS server plays both services:

* Entra ID: `GET /{tenant}/v2.0/.well-known/openid-configuration` and
  `POST /{tenant}/oauth2/v2.0/token` with the client_credentials grant and a
  federated client assertion (client_assertion_type
  urn:ietf:params:oauth:client-assertion-type:jwt-bearer), as Azure workload
  identity sends it. Errors use Entra's body: error, error_description with an
  AADSTS code, error_codes.
* Key Vault: `GET /secrets/{name}` and `GET /secrets/{name}/{version}` with an
  api-version query. A request without a bearer token gets 401 and the
  challenge `Bearer authorization="<origin>/<tenant>", resource="<resource>"`.

The state file is read on every request, so a test can change it between
calls (write it atomically):

    {
      "tenant_id": "...", "client_id": "...",
      "issuer": "...", "subject": "...",      # the federated credential
      "resource": "https://...",              # challenge resource, default this server's origin
      "token_lifetime_seconds": 3600,
      "secrets": {"NAME": {"versions": [{"id": "32 hex", "value": "...", "enabled": true}]}},
      "rbac_denied": ["NAME"],
      "access_policy_denied": ["NAME"]
    }

The last version of a secret is its current one. Rejections follow the real
services:

* Entra ID: an assertion that is not a JWT, has expired, has another audience
  than api://AzureADTokenExchange, or whose issuer and subject match no
  federated credential, an unknown tenant or client, and a scope that is not
  exactly one `<resource>/.default`.
* Key Vault: a bearer token that is missing, unknown, expired or issued for
  another resource (401 with the challenge), RBAC and access policy denials and
  disabled versions (403), unknown secrets and versions (404).

The assertion's signature is not checked, because the double has no issuer keys.
`GET /_double/issued` returns the access tokens handed out and
`GET /_double/requests` the request counts by outcome.
"""

import argparse
import base64
import binascii
import json
import re
import secrets
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from httpdouble import BodyError, DoubleHandler, add_listen_arguments, serve

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
API_VERSION = re.compile(r"^(7\.\d|\d{4}-\d{2}-\d{2}(-preview)?)$")


def jwt_claims(token):
    """Returns the claims of a JWS compact token, or None when it is not one."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


class EntraKeyVaultHandler(DoubleHandler):
    server_version = "entra-keyvault-double"

    # Entra ID

    def entra_error(self, status, error, code, description):
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        self.server.count(f"token_{error}")
        self.send_json(
            status,
            {
                "error": error,
                "error_description": f"AADSTS{code}: {description} Trace ID: {uuid.uuid4()} Timestamp: {now}",
                "error_codes": [code],
                "timestamp": now,
                "trace_id": str(uuid.uuid4()),
                "correlation_id": str(uuid.uuid4()),
            },
        )

    def openid_configuration(self, state, tenant):
        if tenant != state["tenant_id"]:
            self.entra_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
            return
        origin = self.origin()
        self.send_json(
            200,
            {
                "token_endpoint": f"{origin}/{tenant}/oauth2/v2.0/token",
                "authorization_endpoint": f"{origin}/{tenant}/oauth2/v2.0/authorize",
                "issuer": f"{origin}/{tenant}/v2.0",
                "jwks_uri": f"{origin}/{tenant}/discovery/v2.0/keys",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "tenant_region_scope": "EU",
            },
        )

    def token(self, state, tenant):
        try:
            form = parse_qs(self.read_body().decode(), keep_blank_values=True)
        except (BodyError, UnicodeDecodeError):
            self.entra_error(400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.")
            return
        field = lambda name: (form.get(name) or [""])[0]  # noqa: E731

        if tenant != state["tenant_id"]:
            self.entra_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID.")
            return
        if field("grant_type") != "client_credentials":
            self.entra_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
            return
        if field("client_id") != state["client_id"]:
            self.entra_error(400, "unauthorized_client", 700016, f"Application with identifier '{field('client_id')}' was not found in the directory.")
            return
        if field("client_assertion_type") != ASSERTION_TYPE or not field("client_assertion"):
            self.entra_error(401, "invalid_client", 7000216, "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.")
            return
        scopes = field("scope").split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            self.entra_error(400, "invalid_scope", 1002012, f"The provided value for scope {field('scope')} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.")
            return

        claims = jwt_claims(field("client_assertion"))
        if claims is None:
            self.entra_error(400, "invalid_client", 50027, "JWT token is invalid or malformed.")
            return
        expires = claims.get("exp")
        if not isinstance(expires, (int, float)) or expires < time.time():
            self.entra_error(400, "invalid_client", 700024, "Client assertion is not within its valid time range.")
            return
        audiences = claims.get("aud")
        audiences = audiences if isinstance(audiences, list) else [audiences]
        if EXCHANGE_AUDIENCE not in audiences:
            self.entra_error(400, "invalid_client", 700212, f"No matching federated identity record found for presented assertion audience '{','.join(map(str, audiences))}'.")
            return
        if claims.get("iss") != state["issuer"] or claims.get("sub") != state["subject"]:
            self.entra_error(400, "invalid_client", 70021, f"No matching federated identity record found for presented assertion. Assertion Issuer: '{claims.get('iss')}'. Assertion Subject: '{claims.get('sub')}'.")
            return

        lifetime = int(state.get("token_lifetime_seconds", 3600))
        access_token = secrets.token_urlsafe(64)
        audience = scopes[0][: -len("/.default")]
        self.server.issue(access_token, audience, time.time() + lifetime)
        self.send_json(200, {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": access_token})

    # Key Vault

    def origin(self):
        return f"https://{self.headers.get('Host', '')}"

    def challenge_headers(self, state, error=None):
        resource = state.get("resource") or self.origin()
        value = f'Bearer authorization="{self.origin()}/{state["tenant_id"]}", resource="{resource}"'
        if error:
            value += f', error="{error}"'
        return [("WWW-Authenticate", value)]

    def vault_error(self, status, code, message, inner=None, headers=()):
        error = {"code": code, "message": message}
        if inner:
            error["innererror"] = {"code": inner}
        self.server.count(f"vault_{status}_{inner or code}")
        self.send_json(status, {"error": error}, headers=headers)

    def get_secret(self, state, name, version, query):
        api_version = (query.get("api-version") or [""])[0]
        if not API_VERSION.match(api_version):
            self.vault_error(400, "BadParameter", "The request URI contains an invalid api-version parameter.")
            return

        authorization = self.headers.get("Authorization", "")
        if not authorization.startswith("Bearer "):
            self.vault_error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.", headers=self.challenge_headers(state))
            return
        grant = self.server.grant(authorization[len("Bearer "):])
        if grant is None:
            self.vault_error(401, "Unauthorized", "AKV10032: Invalid issuer or expired token.", headers=self.challenge_headers(state, "invalid_token"))
            return
        resource = (state.get("resource") or self.origin()).rstrip("/")
        if grant["audience"].rstrip("/") != resource:
            self.vault_error(401, "Unauthorized", f"AKV10022: Invalid audience. Expected {resource}, found: {grant['audience']}.", headers=self.challenge_headers(state, "invalid_token"))
            return

        if name in state.get("rbac_denied", []):
            self.vault_error(403, "Forbidden", f"Caller is not authorized to perform action on resource.\r\nIf role assignments were recently changed, please wait several minutes for role assignments to become effective.\r\nCaller: appid={state['client_id']}\r\nAction: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'", inner="ForbiddenByRbac")
            return
        if name in state.get("access_policy_denied", []):
            self.vault_error(403, "Forbidden", f"The user, group or application 'appid={state['client_id']}' does not have secrets get permission on key vault.", inner="AccessDenied")
            return

        versions = state.get("secrets", {}).get(name, {}).get("versions", [])
        if not versions:
            self.vault_error(404, "SecretNotFound", f"A secret with (name/id) {name} was not found in this key vault.")
            return
        if version:
            matching = [entry for entry in versions if entry["id"] == version]
            if not matching:
                self.vault_error(404, "SecretNotFound", f"A secret with (name/id) {name}/{version} was not found in this key vault.")
                return
            entry = matching[0]
        else:
            entry = versions[-1]
        if not entry.get("enabled", True):
            self.vault_error(403, "Forbidden", "Operation get is not allowed on a disabled secret.", inner="SecretDisabled")
            return

        self.server.count("vault_200")
        now = int(time.time())
        self.send_json(
            200,
            {
                "value": entry["value"],
                "id": f"{self.origin()}/secrets/{name}/{entry['id']}",
                "attributes": {"enabled": True, "created": now, "updated": now, "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
                "tags": {},
            },
        )

    # Routing

    def route(self, method):
        state = self.server.state()
        split = urlsplit(self.path)
        path = split.path
        query = parse_qs(split.query)
        segments = [segment for segment in path.split("/") if segment]

        if method == "GET" and path == "/_double/issued":
            self.send_json(200, self.server.issued())
        elif method == "GET" and path == "/_double/requests":
            self.send_json(200, self.server.counts())
        elif method == "GET" and len(segments) == 4 and segments[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            self.openid_configuration(state, segments[0])
        elif method == "POST" and len(segments) == 4 and segments[1:] == ["oauth2", "v2.0", "token"]:
            self.token(state, segments[0])
        elif method == "GET" and len(segments) in (2, 3) and segments[0] == "secrets":
            version = segments[2] if len(segments) == 3 else None
            self.get_secret(state, segments[1], version, query)
        else:
            self.server.count("not_found")
            self.send_json(404, {"error": {"code": "NotFound", "message": f"No route for {method} {path}"}})

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
        parser.error("--tls-cert is required: Entra ID and Key Vault are HTTPS only")

    lock = threading.Lock()
    counts = {}
    grants = {}

    def configure(server):
        def state():
            return json.loads(Path(args.state).read_text())

        def count(name):
            with lock:
                counts[name] = counts.get(name, 0) + 1

        def issue(token, audience, expires):
            with lock:
                grants[token] = {"audience": audience, "expires": expires}
                counts["token_issued"] = counts.get("token_issued", 0) + 1

        def grant(token):
            with lock:
                found = grants.get(token)
            if found is None or found["expires"] < time.time():
                return None
            return found

        server.state = state
        server.count = count
        server.issue = issue
        server.grant = grant
        server.counts = lambda: dict(counts)
        server.issued = lambda: list(grants)

    serve(EntraKeyVaultHandler, args.port, "entra_keyvault", configure, args.host, args.tls_cert, args.tls_key)


if __name__ == "__main__":
    sys.exit(main())
