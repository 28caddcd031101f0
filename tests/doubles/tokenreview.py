"""Kubernetes TokenReview API double.

Serves `POST /apis/authentication.k8s.io/v1/tokenreviews`, the call that
OpenBao's Kubernetes auth method makes to validate a service account JWT.

    python tokenreview.py --tokens TOKENS.json --reviewer-token-file REVIEWER.jwt

TOKENS.json maps each accepted JWT to its service account:

    {"<jwt>": {"namespace": "portainer", "name": "agent", "uid": "1234-..."}}

Both files are read again on every request, so a test can add or revoke a
token while the server runs. The caller must send `Authorization: Bearer
<jwt>` with the reviewer JWT (401 otherwise, as the API server returns to an
unauthenticated caller). A caller whose bearer is an accepted service account
token but not the reviewer gets 403, as a service account without the
system:auth-delegator role does.

The review itself follows kube-apiserver (v1.29 to v1.31 behaviour): HTTP 201
with `status.authenticated` true and the `system:serviceaccount:NS:NAME`
user, or `authenticated: false` with an `error` string for an unknown,
expired or wrong-audience token. The token's audiences are its JWT `aud`
claim. When the request has no `spec.audiences`, the API server's own
audiences (`--api-audience`) apply. A malformed body gets 400, a body that is
not JSON by Content-Type gets 415, as on the API server.

Only HTTP on 127.0.0.1 is served, because OpenBao accepts an http
kubernetes_host and the test CA would add nothing the tests check.
"""

import argparse
import base64
import binascii
import json
import sys
import time
from pathlib import Path

from httpdouble import BodyError, DoubleHandler, add_listen_arguments, serve

TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
API_VERSION = "authentication.k8s.io/v1"
DEFAULT_API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"


def status_object(code, reason, message, details=None):
    """Builds a metav1.Status failure document as the API server returns it."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        status["details"] = details
    return status


def decode_jwt_claims(token):
    """Returns the JWT payload as a dict, or None when it is not a JWS compact token."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def token_audiences(claims):
    audience = claims.get("aud", [])
    if isinstance(audience, str):
        return [audience]
    return [a for a in audience if isinstance(a, str)]


class Config:
    def __init__(self, tokens_path, reviewer_path, api_audiences):
        self.tokens_path = Path(tokens_path)
        self.reviewer_path = Path(reviewer_path) if reviewer_path else None
        self.api_audiences = api_audiences

    def accepted_tokens(self):
        with self.tokens_path.open() as file:
            return json.load(file)

    def reviewer_tokens(self):
        if self.reviewer_path is None:
            return set()
        return {self.reviewer_path.read_text().strip()}


class TokenReviewHandler(DoubleHandler):
    server_version = "tokenreview-double"

    @property
    def config(self) -> Config:
        return self.server.config

    def do_POST(self):
        if self.path.split("?", 1)[0] != TOKENREVIEW_PATH:
            self.send_not_found()
            return
        if not self.authorize_caller():
            return

        content_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip()
        if content_type != "application/json":
            self.close_connection = True
            self.send_json(
                415,
                status_object(
                    415,
                    "UnsupportedMediaType",
                    f'the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf; got "{content_type}"',
                ),
            )
            return
        try:
            body = self.read_body()
        except BodyError as error:
            self.send_json(error.status, status_object(error.status, "BadRequest", error.message))
            return

        review, problem = self.parse_review(body)
        if problem is not None:
            self.send_json(400, status_object(400, "BadRequest", problem))
            return
        self.send_json(201, self.review(review))

    def do_GET(self):
        if self.path.split("?", 1)[0] == TOKENREVIEW_PATH:
            if self.authorize_caller():
                self.send_json(405, status_object(405, "MethodNotAllowed", "the server does not allow this method on the requested resource"))
            return
        self.send_not_found()

    do_PUT = do_GET
    do_DELETE = do_GET
    do_PATCH = do_GET

    def send_not_found(self):
        self.send_json(404, status_object(404, "NotFound", "the server could not find the requested resource"))

    def authorize_caller(self):
        """Checks the bearer token; sends 401 or 403 and returns False when it fails."""
        header = self.headers.get("Authorization", "")
        scheme, _, bearer = header.partition(" ")
        bearer = bearer.strip()
        if scheme.lower() != "bearer" or not bearer:
            self.send_json(401, status_object(401, "Unauthorized", "Unauthorized"))
            return False
        if bearer in self.config.reviewer_tokens():
            return True
        account = self.config.accepted_tokens().get(bearer)
        if account is None:
            self.send_json(401, status_object(401, "Unauthorized", "Unauthorized"))
            return False
        user = f"system:serviceaccount:{account['namespace']}:{account['name']}"
        self.send_json(
            403,
            status_object(
                403,
                "Forbidden",
                f'tokenreviews.authentication.k8s.io is forbidden: User "{user}" cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope',
                details={"group": "authentication.k8s.io", "kind": "tokenreviews"},
            ),
        )
        return False

    @staticmethod
    def parse_review(body):
        """Returns (review, None) or (None, message) for a body the API server rejects."""
        try:
            review = json.loads(body)
        except (UnicodeDecodeError, ValueError) as error:
            return None, f"json: cannot unmarshal request body: {error}"
        if not isinstance(review, dict):
            return None, "json: cannot unmarshal non-object into Go value of type v1.TokenReview"
        # The API server fills in a missing apiVersion and kind from the URL,
        # and OpenBao sends neither, but it rejects a mismatch.
        api_version = review.get("apiVersion", API_VERSION)
        if api_version != API_VERSION:
            return None, f"the API version in the data ({api_version}) does not match the expected API version ({API_VERSION})"
        kind = review.get("kind", "TokenReview")
        if kind != "TokenReview":
            return None, f"the kind in the data ({kind}) does not match the expected kind (TokenReview)"
        spec = review.get("spec", {})
        if not isinstance(spec, dict):
            return None, "json: cannot unmarshal spec into Go struct field TokenReview.spec of type v1.TokenReviewSpec"
        token = spec.get("token", "")
        if not isinstance(token, str):
            return None, "json: cannot unmarshal spec.token into Go struct field TokenReviewSpec.spec.token of type string"
        audiences = spec.get("audiences", [])
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            return None, "json: cannot unmarshal spec.audiences into Go struct field TokenReviewSpec.spec.audiences of type []string"
        if not token:
            return None, "token is required for TokenReview in authentication"
        return review, None

    def review(self, review):
        spec = review.get("spec", {})
        token = spec["token"]
        requested = spec.get("audiences") or []
        target_audiences = requested or self.config.api_audiences
        status = self.review_status(token, target_audiences)
        return {
            "kind": "TokenReview",
            "apiVersion": API_VERSION,
            "metadata": {"creationTimestamp": None},
            "spec": {"token": token, **({"audiences": requested} if requested else {})},
            "status": status,
        }

    def review_status(self, token, target_audiences):
        account = self.config.accepted_tokens().get(token)
        claims = decode_jwt_claims(token)
        if account is None or claims is None:
            return {"user": {}, "error": "[invalid bearer token, token lookup failed]"}

        expires = claims.get("exp")
        if isinstance(expires, (int, float)) and expires < time.time():
            return {"user": {}, "error": "[invalid bearer token, service account token has expired]"}

        audiences = token_audiences(claims)
        matched = [a for a in target_audiences if a in audiences]
        if not matched:
            return {
                "user": {},
                "error": f"[invalid bearer token, token audiences {json.dumps(audiences)} is invalid for the target audiences {json.dumps(target_audiences)}]",
            }

        namespace = account["namespace"]
        return {
            "authenticated": True,
            "user": {
                "username": f"system:serviceaccount:{namespace}:{account['name']}",
                "uid": account["uid"],
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{namespace}",
                    "system:authenticated",
                ],
            },
            "audiences": matched,
        }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add_listen_arguments(parser)
    parser.add_argument("--tokens", required=True, help="JSON file mapping accepted JWTs to service accounts")
    parser.add_argument(
        "--reviewer-token-file",
        help="file with the JWT that callers must send as bearer token (default: none, so only 401 and 403)",
    )
    parser.add_argument(
        "--api-audience",
        action="append",
        help=f"audience used when a request names none; repeatable (default {DEFAULT_API_AUDIENCE})",
    )
    args = parser.parse_args(argv)
    config = Config(args.tokens, args.reviewer_token_file, args.api_audience or [DEFAULT_API_AUDIENCE])

    def configure(server):
        server.config = config

    serve(TokenReviewHandler, args.port, "tokenreview", configure)


if __name__ == "__main__":
    sys.exit(main())
