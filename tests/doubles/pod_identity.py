"""EKS Pod Identity agent double: the container credentials endpoint.

    python pod_identity.py --token-file TOKEN.jwt [--path /v1/credentials]

AWS SDKs reach it through AWS_CONTAINER_CREDENTIALS_FULL_URI and send the
contents of AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE as the Authorization
header. The double returns temporary credentials for `GET <path>` when the
header equals the token file's contents (read again on every request, so a
test can rotate it), as the real agent does once EKS Auth accepted the token:

    {"AccessKeyId": ..., "SecretAccessKey": ..., "Token": ..., "AccountId": ..., "Expiration": ...}

Rejections follow the agent's code (aws/eks-pod-identity-agent): 400 with a
plain-text message for an empty or unparseable token or one whose `exp` has
passed, 403 for a well-formed token that EKS Auth would deny (here: any token
other than the file's). The real agent also rejects requests whose Host is not
169.254.170.23 or fd00:ec2::23; the double serves on 127.0.0.1 and skips that
check. Every request is counted, and `GET /_double/requests` returns the
counts, so a test can tell whether a client fetched credentials, and
`GET /_double/issued` returns the credentials handed out, so a test can check
that none of them leaked into a log.
"""

import argparse
import base64
import binascii
import json
import secrets
import string
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from httpdouble import DoubleHandler, add_listen_arguments, serve

ACCOUNT_ID = "123456789012"


def parse_jwt_claims(token):
    """Returns the JWT payload, or None when the token is not a JWS compact token."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    return claims


def random_key(prefix, length):
    alphabet = string.ascii_uppercase + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length - len(prefix)))


class PodIdentityHandler(DoubleHandler):
    server_version = "pod-identity-double"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/_double/requests":
            self.send_json(200, self.server.counts())
            return
        if path == "/_double/issued":
            self.send_json(200, self.server.issued())
            return
        if path != self.server.credentials_path:
            self.server.count("not_found")
            self.send_whole(404, "404 page not found\n", content_type="text/plain; charset=utf-8")
            return

        token = self.headers.get("Authorization", "")
        rejection = self.check_token(token)
        if rejection is not None:
            status, message = rejection
            self.server.count(f"rejected_{status}")
            self.send_whole(status, message + "\n", content_type="text/plain; charset=utf-8")
            return

        expiration = datetime.now(timezone.utc) + timedelta(seconds=self.server.lifetime_seconds)
        credentials = {
            "AccessKeyId": random_key("ASIA", 20),
            "SecretAccessKey": secrets.token_urlsafe(30),
            "Token": secrets.token_urlsafe(96),
            "AccountId": ACCOUNT_ID,
            "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        self.server.record_issued(credentials)
        self.send_json(200, credentials)

    def check_token(self, token):
        """Returns None for the expected token, else (HTTP status, message)."""
        if not token:
            return 400, "Service account token cannot be empty"
        claims = parse_jwt_claims(token)
        if claims is None:
            return 400, "Service account token cannot be parsed: token is malformed"
        expires = claims.get("exp")
        if isinstance(expires, (int, float)) and expires < time.time():
            return 400, "Service account token failed basic claim validations: token has invalid claims: token is expired"
        expected = self.server.token_path.read_text()
        if not secrets.compare_digest(token.encode(), expected.encode()):
            return 403, "(AccessDeniedException): The service account token is not valid for this cluster, fault: client"
        return None

    def do_POST(self):
        self.send_whole(405, "Method Not Allowed\n", content_type="text/plain; charset=utf-8")

    do_PUT = do_POST
    do_DELETE = do_POST


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add_listen_arguments(parser)
    parser.add_argument("--token-file", required=True, help="file whose contents the Authorization header must equal")
    parser.add_argument("--path", default="/v1/credentials", help="credentials path (default /v1/credentials)")
    parser.add_argument(
        "--lifetime-seconds",
        type=int,
        default=3600,
        help="lifetime of the issued credentials in seconds (default 3600)",
    )
    args = parser.parse_args(argv)

    lock = threading.Lock()
    counts = {}
    issued = []

    def configure(server):
        server.token_path = Path(args.token_file)
        server.credentials_path = args.path
        server.lifetime_seconds = args.lifetime_seconds

        def count(name):
            with lock:
                counts[name] = counts.get(name, 0) + 1

        def snapshot():
            with lock:
                return dict(counts)

        def record_issued(credentials):
            with lock:
                counts["issued"] = counts.get("issued", 0) + 1
                issued.append(credentials)

        def issued_snapshot():
            with lock:
                return list(issued)

        server.count = count
        server.counts = snapshot
        server.record_issued = record_issued
        server.issued = issued_snapshot

    serve(PodIdentityHandler, args.port, "pod_identity", configure)


if __name__ == "__main__":
    sys.exit(main())
