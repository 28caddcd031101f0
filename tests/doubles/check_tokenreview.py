"""Runs the official Kubernetes Python client against tokenreview.py."""

import json
import urllib.error
import urllib.request

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

import sajwt


def authentication_api(url, bearer=None):
    configuration = client.Configuration()
    configuration.host = url
    if bearer is not None:
        # kubernetes 36 applies the prefix only under the "BearerToken" key.
        configuration.api_key = {"BearerToken": bearer}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
    return client.AuthenticationV1Api(client.ApiClient(configuration))


def review(url, bearer, token, audiences=None):
    spec = client.V1TokenReviewSpec(token=token, audiences=audiences)
    return authentication_api(url, bearer).create_token_review(client.V1TokenReview(spec=spec))


def post_raw(url, body, bearer, content_type="application/json"):
    request = urllib.request.Request(
        url + "/apis/authentication.k8s.io/v1/tokenreviews",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": content_type},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_accepted_token_is_authenticated(tokenreview):
    result = review(tokenreview["url"], tokenreview["reviewer"], tokenreview["agent"])

    assert result.status.authenticated is True
    assert result.status.user.username == "system:serviceaccount:portainer:agent"
    assert result.status.user.uid == "agent-uid"
    assert "system:serviceaccounts:portainer" in result.status.user.groups
    assert result.status.audiences == [sajwt.DEFAULT_AUDIENCE]
    assert result.status.error is None


def test_matching_requested_audience_is_returned(tokenreview):
    result = review(tokenreview["url"], tokenreview["reviewer"], tokenreview["other_audience"], audiences=["vault", "other"])

    assert result.status.authenticated is True
    assert result.status.audiences == ["vault"]


def test_unknown_token_is_not_authenticated(tokenreview):
    unknown = sajwt.service_account_jwt("portainer", "agent", uid="agent-uid")

    result = review(tokenreview["url"], tokenreview["reviewer"], unknown)

    assert not result.status.authenticated
    assert "invalid bearer token" in result.status.error
    assert result.status.user.username is None


def test_expired_token_is_not_authenticated(tokenreview):
    result = review(tokenreview["url"], tokenreview["reviewer"], tokenreview["expired"])

    assert not result.status.authenticated
    assert "expired" in result.status.error


def test_wrong_audience_is_not_authenticated(tokenreview):
    result = review(tokenreview["url"], tokenreview["reviewer"], tokenreview["agent"], audiences=["vault"])

    assert not result.status.authenticated
    assert "audiences" in result.status.error


def test_token_added_while_running_is_accepted(tokenreview):
    added = sajwt.service_account_jwt("portainer", "agent", uid="agent-uid")
    accounts = json.loads(tokenreview["tokens_file"].read_text())
    accounts[added] = {"namespace": "portainer", "name": "agent", "uid": "agent-uid"}
    tokenreview["tokens_file"].write_text(json.dumps(accounts))

    result = review(tokenreview["url"], tokenreview["reviewer"], added)

    assert result.status.authenticated is True


def test_missing_bearer_is_unauthorized(tokenreview):
    api = authentication_api(tokenreview["url"])
    body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=tokenreview["agent"]))

    with pytest.raises(ApiException) as raised:
        api.create_token_review(body)

    assert raised.value.status == 401
    assert json.loads(raised.value.body)["reason"] == "Unauthorized"


def test_unknown_bearer_is_unauthorized(tokenreview):
    stranger = sajwt.service_account_jwt("kube-system", "stranger")

    with pytest.raises(ApiException) as raised:
        review(tokenreview["url"], stranger, tokenreview["agent"])

    assert raised.value.status == 401


def test_service_account_bearer_without_review_right_is_forbidden(tokenreview):
    with pytest.raises(ApiException) as raised:
        review(tokenreview["url"], tokenreview["agent"], tokenreview["agent"])

    assert raised.value.status == 403
    assert json.loads(raised.value.body)["reason"] == "Forbidden"


def test_empty_token_is_bad_request(tokenreview):
    with pytest.raises(ApiException) as raised:
        review(tokenreview["url"], tokenreview["reviewer"], "")

    assert raised.value.status == 400
    assert "token is required" in json.loads(raised.value.body)["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"apiVersion": "authentication.k8s.io/v1beta1", "kind": "TokenReview", "spec": {"token": "x"}}',
        b'{"apiVersion": "authentication.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"token": "x"}}',
        b'{"spec": {"token": 42}}',
        b'{"spec": {"token": "x", "audiences": "vault"}}',
        b'{"spec": []}',
    ],
)
def test_malformed_body_is_bad_request(tokenreview, body):
    status, document = post_raw(tokenreview["url"], body, tokenreview["reviewer"])

    assert status == 400
    assert document["kind"] == "Status"
    assert document["reason"] == "BadRequest"


def test_body_without_kind_is_reviewed(tokenreview):
    body = json.dumps({"spec": {"token": tokenreview["agent"]}}).encode()

    status, document = post_raw(tokenreview["url"], body, tokenreview["reviewer"])

    assert status == 201
    assert document["status"]["authenticated"] is True


def test_non_json_content_type_is_unsupported(tokenreview):
    body = json.dumps({"spec": {"token": tokenreview["agent"]}}).encode()

    status, document = post_raw(tokenreview["url"], body, tokenreview["reviewer"], content_type="text/plain")

    assert status == 415
    assert document["reason"] == "UnsupportedMediaType"
