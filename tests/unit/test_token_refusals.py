"""Token refusals are told from transient failures by the OAuth ``error`` field and the HTTP
status, not by a list of AADSTS codes; and the hints built from what the answer and the
credential say (``daemon.auth.hints``)."""

from __future__ import annotations

import jwt
import pytest

from daemon.auth.hints import (
    REFUSAL_ERRORS,
    assertion_claims,
    entra_description,
    federated_hint,
    hint_for,
    is_refusal,
    mailbox_grant_hint,
    token_object_id,
)

HMAC_KEY = "a test key that is long enough for HS256 in PyJWT"
CLIENT_ID = "66666666-7777-8888-9999-000000000000"


@pytest.mark.parametrize(
    "error",
    ["invalid_client", "unauthorized_client", "invalid_request", "invalid_scope", "invalid_grant"],
)
@pytest.mark.parametrize("code", [7000215, 7000229, 700213, 9999999, None])
def test_oauth_refusals_need_an_administrator_whatever_the_code(
    error: str, code: int | None
) -> None:
    assert error in REFUSAL_ERRORS
    assert is_refusal(error, code, 400)
    assert is_refusal(error, code, 401)
    assert is_refusal(error, code, None)


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        ("invalid_client", 7000215, 429),  # throttled: the status wins over the body
        ("invalid_client", None, 500),
        ("invalid_grant", 50012, 503),
        ("temporarily_unavailable", 90055, 429),
        ("temporarily_unavailable", None, 400),
        ("server_error", None, 400),
        ("invalid_request", 90055, 400),  # tenant throttled, however it is worded
        (None, None, 400),  # no error field, no known code: retried
        (None, 4242, None),
    ],
)
def test_throttling_server_errors_and_unknown_answers_are_transient(
    error: str | None, code: int | None, status: int | None
) -> None:
    assert not is_refusal(error, code, status)


def test_known_permanent_code_without_error_field_is_a_refusal() -> None:
    assert is_refusal(None, 90002, None)  # OIDC discovery: the code is all there is


def test_entra_description_drops_trace_ids_and_joins_lines() -> None:
    raw = (
        "AADSTS7000229: The client application x is missing service principal in the tenant y."
        "\r\nTrace ID: 1f6a92a9 Correlation ID: 0d1a5c28 Timestamp: 2025-06-09 09:07:41Z"
    )
    assert entra_description(raw) == (
        "AADSTS7000229: The client application x is missing service principal in the tenant y."
    )
    assert entra_description("") is None
    assert entra_description(None) is None
    assert len(entra_description("x" * 5000) or "") == 400


def test_assertion_claims_are_read_without_the_signature_and_never_include_the_token() -> None:
    token = jwt.encode(
        {"iss": "https://oidc.example/", "sub": "system:serviceaccount:a:b", "aud": ["api://x"]},
        HMAC_KEY,
        algorithm="HS256",
    )
    claims = assertion_claims(token)
    assert claims == {
        "iss": "https://oidc.example/",
        "sub": "system:serviceaccount:a:b",
        "aud": "api://x",
    }
    hint = federated_hint(CLIENT_ID, claims)
    assert "iss https://oidc.example/" in hint
    assert "sub system:serviceaccount:a:b" in hint
    assert f"az ad app federated-credential list --id {CLIENT_ID}" in hint
    assert token not in hint
    assert assertion_claims("not a jwt") == {}


def test_grant_hint_names_the_mailbox_and_the_tokens_object_id() -> None:
    token = jwt.encode({"oid": "abcdef-0123"}, HMAC_KEY, algorithm="HS256")
    oid = token_object_id(token)
    assert oid == "abcdef-0123"
    hint = mailbox_grant_hint("support@contoso.com", oid)
    assert "Add-MailboxPermission -Identity support@contoso.com -User abcdef-0123" in hint
    assert "<" not in hint
    assert token_object_id("opaque") is None
    assert "<object id" in mailbox_grant_hint("support@contoso.com", None)


def test_no_service_principal_hint_fills_in_the_client_id() -> None:
    hint = hint_for(7000229, client_id=CLIENT_ID, tenant_id="contoso.com")
    assert hint is not None
    assert f"az ad sp create --id {CLIENT_ID}" in hint
    assert "tenant contoso.com" in hint
