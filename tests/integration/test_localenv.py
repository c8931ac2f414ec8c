"""The local stand-in environment behaves like Entra ID and Exchange Online where it matters."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import msal
import pytest
import requests
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from localenv import pki
from localenv.client import IdpControl
from localenv.env import EnvInfo, LocalEnv
from localenv.imap import FixtureImap
from localenv.seed import hostile_messages, realistic_messages
from localenv.tokens import EXCHANGE_RESOURCE, mint_access_token

SCOPE = [f"{EXCHANGE_RESOURCE}/.default"]


def _session(info: EnvInfo) -> requests.Session:
    session = requests.Session()
    session.verify = info.ca_file
    session.trust_env = False
    return session


def _app(info: EnvInfo, tenant: str, credential: Any, client_id: str | None = None) -> Any:
    t = info.tenant(tenant)
    return msal.ConfidentialClientApplication(
        client_id or t.client_id,
        client_credential=credential,
        authority=f"{info.authority_host}/{t.tenant_id}",
        instance_discovery=False,
        http_client=_session(info),
    )


def _imap(info: EnvInfo) -> IMAPClient:
    import ssl

    context = ssl.create_default_context(cafile=info.ca_file)
    return IMAPClient(
        info.imap_host, port=info.imap_port, ssl=True, ssl_context=context, timeout=10
    )


def _post_token(info: EnvInfo, tenant: str, **form: str) -> requests.Response:
    t = info.tenant(tenant)
    data = {
        "client_id": t.client_id,
        "grant_type": "client_credentials",
        "scope": SCOPE[0],
        "client_secret": t.secret,
        **form,
    }
    return _session(info).post(
        f"{info.authority_host}/{t.tenant_id}/oauth2/v2.0/token", data=data, timeout=10
    )


def _claims(info: EnvInfo, token: str) -> dict[str, Any]:
    jwks = _session(info).get(
        f"{info.authority_host}/{info.tenants[0].tenant_id}/discovery/v2.0/keys", timeout=10
    )
    key = jwt.PyJWK(jwks.json()["keys"][0])
    return jwt.decode(token, key, algorithms=["RS256"], audience=EXCHANGE_RESOURCE)


def test_msal_gets_entra_shaped_token_with_client_secret(env_info: EnvInfo) -> None:
    tenant = env_info.tenant("contoso")
    result = _app(env_info, "contoso", tenant.secret).acquire_token_for_client(scopes=SCOPE)
    assert "access_token" in result, result
    assert result["token_source"] == "identity_provider"
    claims = _claims(env_info, result["access_token"])
    assert claims["iss"] == f"https://sts.windows.net/{tenant.tenant_id}/"
    assert claims["appid"] == tenant.client_id
    assert claims["tid"] == tenant.tenant_id
    assert claims["roles"] == ["IMAP.AccessAsApp"]
    assert claims["ver"] == "1.0"
    assert claims["exp"] - time.time() > 3500


@pytest.mark.parametrize("tenant_name", ["contoso", "fabrikam"])
def test_msal_gets_token_with_certificate_and_logs_into_dovecot(
    env_info: EnvInfo, tenant_name: str
) -> None:
    tenant = env_info.tenant(tenant_name)
    credential = {
        "private_key": Path(tenant.private_key_file).read_text(),
        "thumbprint": tenant.thumbprint,
    }
    result = _app(env_info, tenant_name, credential).acquire_token_for_client(scopes=SCOPE)
    assert "access_token" in result, result
    with _imap(env_info) as client:
        assert client.oauth2_login(f"someone@{tenant.domain}", result["access_token"])
        assert client.folder_exists("INBOX")


def test_msal_gets_token_with_federated_assertion_read_from_file(
    local_env: LocalEnv, env_info: EnvInfo
) -> None:
    tenant = env_info.tenant("fabrikam")
    path = local_env.write_federated_token("fabrikam")
    app = _app(env_info, "fabrikam", {"client_assertion": path.read_text})
    result = app.acquire_token_for_client(scopes=SCOPE)
    assert "access_token" in result, result
    assert _claims(env_info, result["access_token"])["appid"] == tenant.client_id


def test_federated_assertion_with_wrong_subject_gives_aadsts70021(
    local_env: LocalEnv, env_info: EnvInfo
) -> None:
    path = local_env.write_federated_token("contoso", subject="system:serviceaccount:x:y")
    try:
        result = _app(
            env_info, "contoso", {"client_assertion": path.read_text}
        ).acquire_token_for_client(scopes=SCOPE)
    finally:
        local_env.write_federated_token("contoso")
    assert result.get("error_codes") == [70021], result


def test_wrong_certificate_gives_aadsts700027(env_info: EnvInfo) -> None:
    key, cert = pki.self_signed("not-registered")
    credential = {"private_key": pki.key_pem(key).decode(), "thumbprint": pki.thumbprint(cert)}
    result = _app(env_info, "contoso", credential).acquire_token_for_client(scopes=SCOPE)
    assert result.get("error_codes") == [700027], result
    assert "AADSTS700027" in result["error_description"]


def test_xoauth2_and_oauthbearer_logins_accept_a_platform_token(env_info: EnvInfo) -> None:
    tenant = env_info.tenant("contoso")
    token = _app(env_info, "contoso", tenant.secret).acquire_token_for_client(scopes=SCOPE)[
        "access_token"
    ]
    mailbox = f"user-{uuid.uuid4().hex[:8]}@{tenant.domain}"
    with _imap(env_info) as client:
        client.oauth2_login(mailbox, token)
        assert b"CONDSTORE" in client.capabilities()
    with _imap(env_info) as client:
        client.oauthbearer_login(mailbox, token)
        assert client.folder_exists("INBOX")


REJECTED: dict[str, Callable[[LocalEnv], str]] = {
    "expired": lambda env: env.mint_token("contoso", lifetime=-60),
    "wrong-audience": lambda env: env.mint_token("contoso", audience="https://graph.microsoft.com"),
    "unknown-key": lambda env: env.mint_token("contoso", key=pki.new_key(), kid=uuid.uuid4().hex),
    "known-kid-wrong-key": lambda env: env.mint_token("contoso", key=pki.new_key()),
    "wrong-issuer": lambda env: env.mint_token(
        "contoso", issuer="https://sts.windows.net/00000000-0000-0000-0000-000000000000/"
    ),
    "other-application": lambda env: mint_access_token(
        key=pki.load_key(Path(env.info.signing_key_file)),
        kid=env.info.kid,
        tenant_id=env.info.tenant("contoso").tenant_id,
        client_id=str(uuid.uuid4()),
    ),
    "garbage": lambda env: "not-a-jwt-at-all",
}


@pytest.mark.parametrize("kind", sorted(REJECTED))
def test_dovecot_rejects_bad_tokens(local_env: LocalEnv, env_info: EnvInfo, kind: str) -> None:
    token = REJECTED[kind](local_env)
    with _imap(env_info) as client, pytest.raises(LoginError):
        client.oauth2_login("someone@contoso.test", token)
    # The same login with a good token works, so the rejection is about the token alone.
    with _imap(env_info) as client:
        client.oauth2_login("someone@contoso.test", local_env.mint_token("contoso"))


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"client_secret": "wrong"}, 7000215),
        ({"client_id": str(uuid.UUID(int=7))}, 700016),
        ({"scope": "https://outlook.office365.com/IMAP.AccessAsApp"}, 1002012),
        ({"scope": "https://graph.microsoft.com/.default"}, 500011),
        ({"grant_type": "password"}, 70003),
    ],
)
def test_token_endpoint_answers_entra_shaped_errors(
    env_info: EnvInfo, change: dict[str, str], code: int
) -> None:
    response = _post_token(env_info, "contoso", **change)
    assert response.status_code in (400, 401)
    body = response.json()
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}:")


def test_expired_secret_gives_aadsts7000222(env_info: EnvInfo, idp: IdpControl) -> None:
    tenant = env_info.tenant("fabrikam")
    idp.update_client(
        tenant.tenant_id,
        tenant.client_id,
        set_={"secrets": [{"value": tenant.secret, "expires": time.time() - 1}]},
    )
    try:
        body = _post_token(env_info, "fabrikam").json()
    finally:
        idp.update_client(
            tenant.tenant_id,
            tenant.client_id,
            set_={"secrets": [{"value": tenant.secret, "expires": None}]},
        )
    assert body["error_codes"] == [7000222]


def test_unknown_tenant_fails_msal_app_construction_with_aadsts90002(env_info: EnvInfo) -> None:
    tenant = env_info.tenant("contoso")
    with pytest.raises(ValueError, match=r".") as caught:
        msal.ConfidentialClientApplication(
            tenant.client_id,
            client_credential=tenant.secret,
            authority=f"{env_info.authority_host}/no-such-tenant.test",
            instance_discovery=False,
            http_client=_session(env_info),
        )
    chain = []
    exc: BaseException | None = caught.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("AADSTS90002" in text for text in chain), chain


def test_tenant_is_addressable_by_domain(env_info: EnvInfo) -> None:
    tenant = env_info.tenant("contoso")
    app = msal.ConfidentialClientApplication(
        tenant.client_id,
        client_credential=tenant.secret,
        authority=f"{env_info.authority_host}/{tenant.domain}",
        instance_discovery=False,
        http_client=_session(env_info),
    )
    assert "access_token" in app.acquire_token_for_client(scopes=SCOPE)


def test_fail_control_fails_exactly_the_next_n_requests(env_info: EnvInfo, idp: IdpControl) -> None:
    idp.clear_requests()
    idp.fail(count=2, status=503)
    statuses = [_post_token(env_info, "contoso").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    log = idp.requests()
    assert [entry["status"] for entry in log] == [503, 503, 200]
    assert [entry.get("injected", False) for entry in log] == [True, True, False]


def test_fail_control_with_aadsts_code_and_retry_after(env_info: EnvInfo, idp: IdpControl) -> None:
    idp.fail(count=1, status=429, aadsts=90055, retry_after=7)
    response = _post_token(env_info, "contoso")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["error_codes"] == [90055]
    assert _post_token(env_info, "contoso").status_code == 200


def test_fail_control_for_a_period_then_recovers(env_info: EnvInfo, idp: IdpControl) -> None:
    idp.fail(seconds=1.0, status=500)
    assert _post_token(env_info, "contoso").status_code == 500
    deadline = time.monotonic() + 10
    while _post_token(env_info, "contoso").status_code != 200:
        assert time.monotonic() < deadline, "outage did not end"
        time.sleep(0.1)


def test_fail_control_can_target_one_tenant(env_info: EnvInfo, idp: IdpControl) -> None:
    idp.fail(count=1, tenant=env_info.tenant("contoso").tenant_id)
    assert _post_token(env_info, "fabrikam").status_code == 200
    assert _post_token(env_info, "contoso").status_code == 503


def test_msal_raises_on_injected_5xx(env_info: EnvInfo, idp: IdpControl) -> None:
    tenant = env_info.tenant("fabrikam")
    app = _app(env_info, "fabrikam", tenant.secret)
    idp.fail(count=1, status=503)
    with pytest.raises(msal.exceptions.MsalServiceError):
        app.acquire_token_for_client(scopes=SCOPE)


def test_token_lifetime_control_and_request_log_without_secrets(
    env_info: EnvInfo, idp: IdpControl
) -> None:
    idp.clear_requests()
    idp.set_token_lifetime(60)
    body = _post_token(env_info, "contoso").json()
    assert body["expires_in"] == 60
    claims = _claims(env_info, body["access_token"])
    assert 50 <= claims["exp"] - time.time() <= 61
    log = idp.requests()
    assert len(log) == 1
    assert log[0]["credential"] == "secret"
    assert log[0]["client_id"] == env_info.tenant("contoso").client_id
    assert env_info.tenant("contoso").secret not in str(log)
    assert body["access_token"] in idp.issued_secrets()["tokens"]


def test_fixture_login_writes_realistic_messages_into_any_mailbox_and_folder(
    env_info: EnvInfo, fixture_imap: Callable[[str], FixtureImap], new_mailbox: Callable[..., str]
) -> None:
    messages = list(realistic_messages(60, seed=3, big_every=20, max_size=2 * 1024 * 1024))
    session = fixture_imap(new_mailbox())
    uids = session.append("Sent Items", messages)
    assert uids == list(range(1, 61))
    session.client.select_folder("Sent Items", readonly=True)
    fetched = session.client.fetch(uids, ["RFC822.SIZE", "FLAGS", "INTERNALDATE"])
    for uid, message in zip(uids, messages, strict=True):
        data = fetched[uid]
        assert data[b"RFC822.SIZE"] == message.expected.size_bytes
        flags = sorted(f.decode() for f in data[b"FLAGS"] if f != b"\\Recent")
        assert flags == message.expected.flags
    assert max(m.expected.size_bytes for m in messages) > 1024 * 1024


def test_server_accepts_every_hostile_message(
    fixture_imap: Callable[[str], FixtureImap], new_mailbox: Callable[..., str]
) -> None:
    messages = hostile_messages()
    session = fixture_imap(new_mailbox())
    uids = session.append("INBOX", messages)
    assert len(uids) == len(messages)
    session.client.select_folder("INBOX", readonly=True)
    # imapclient's default conversion of ENVELOPE dates to local time overflows on the year-9999
    # Date (OverflowError): the raw, aware datetimes are what a client must work with.
    session.client.normalise_times = False
    envelopes = session.client.fetch(uids, ["ENVELOPE", "RFC822.SIZE"])
    assert len(envelopes) == len(messages)


def test_flags_expunge_and_folder_recreation_through_the_fixture_login(
    fixture_imap: Callable[[str], FixtureImap], new_mailbox: Callable[..., str]
) -> None:
    session = fixture_imap(new_mailbox())
    uids = session.append("Archive", realistic_messages(5, max_size=4096))
    session.set_flags("Archive", uids[:2], ["\\Seen", "\\Flagged"])
    session.expunge("Archive", uids[4:])
    assert session.uids("Archive") == uids[:4]
    before = session.uidvalidity("Archive")
    session.client.unselect_folder()
    session.delete_folder("Archive")
    session.ensure_folder("Archive")
    assert session.uidvalidity("Archive") != before
