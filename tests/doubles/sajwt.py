"""Builds Kubernetes service account JWTs for the tests.

The tokens are syntactically real (RS256 header, the claims a projected
service account token carries), but the signature is random bytes. Only a
party that does not verify signatures accepts them, such as OpenBao's
Kubernetes auth method when it delegates to TokenReview.
"""

import base64
import json
import os
import time
import uuid

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_AUDIENCE = "https://kubernetes.default.svc.cluster.local"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def service_account_jwt(namespace, name, uid=None, audiences=(DEFAULT_AUDIENCE,), lifetime_seconds=3600, issuer=DEFAULT_ISSUER):
    now = int(time.time())
    uid = uid or str(uuid.uuid4())
    header = {"alg": "RS256", "kid": "test-key", "typ": "JWT"}
    claims = {
        "aud": list(audiences),
        "exp": now + lifetime_seconds,
        "iat": now,
        "nbf": now,
        "iss": issuer,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": {
            "namespace": namespace,
            "pod": {"name": f"{name}-0", "uid": str(uuid.uuid4())},
            "serviceaccount": {"name": name, "uid": uid},
        },
        "sub": f"system:serviceaccount:{namespace}:{name}",
    }
    signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
    return signing_input + "." + _b64url(os.urandom(256))
