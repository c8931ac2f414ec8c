"""MsalTokenClient against the local identity platform: each credential kind, each error mapped.

Every test builds its configuration the way the daemon does (``config_from_mapping`` or
``load_config``), a fresh client (so MSAL's per-app HTTP cache of errors never leaks between
tests), and an observer that records every call. Checks that every test repeats:

- each ``acquire`` reports to the observer exactly once, with ok True and the token, or ok
  False and no token;
- no secret value (client secrets, private keys, federated tokens, every access token and
  assertion the platform ever issued or received) appears in ``str``, ``repr``, the hint or the
  printed traceback of a raised error.

The platform is shared by every test of the worker: tests that change a registered client
restore it in ``finally``, and the request log is read filtered by client id and time.
"""

from __future__ import annotations

import base64
import hashlib
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from daemon.auth import AccessToken
from daemon.auth.msal_provider import MsalTokenClient
from daemon.config import Tenant, config_from_mapping, load_config
from daemon.errors import TokenRejected, TokenUnavailable
from localenv import pki
from localenv.client import IdpControl
from localenv.env import FEDERATED_ISSUER, FEDERATED_SUBJECT, EnvInfo, LocalEnv
from localenv.tokens import EXCHANGE_RESOURCE
from support.daemon import wait_for
from support.federated import projected_token_file

SCOPE = f"{EXCHANGE_RESOURCE}/.default"
Observation = tuple[str, bool, AccessToken | None]


@dataclass
class Harness:
    """One client for one tenant, its observations, and the platform's view of it."""

    client: MsalTokenClient
    tenant: Tenant
    idp: IdpControl
    info: EnvInfo
    observed: list[Observation]
    started: float = field(default_factory=time.time)
    extra_secrets: list[str] = field(default_factory=list)

    def acquire(self) -> AccessToken:
        """``acquire`` that checks it succeeded and was observed exactly once, with the token."""
        before = len(self.observed)
        token = self.client.acquire(self.tenant.name)
        assert self.observed[before:] == [(self.tenant.name, True, token)]
        return token

    def fails(self, kind: type[Exception], *, requested: bool = True) -> Any:
        """``acquire`` that checks it raised ``kind``, leak-free, observed once as a failure
        (or, when no request was made, not observed: the observer counts requests)."""
        before = len(self.observed)
        with pytest.raises(kind) as info:
            self.client.acquire(self.tenant.name)
        expected = [(self.tenant.name, False, None)] if requested else []
        assert self.observed[before:] == expected
        assert_no_secret_in(info.value, self.info, self.idp, self.extra_secrets)
        return info.value

    def requests(self) -> list[dict[str, Any]]:
        """Token requests of this client id since the harness was made."""
        return [
            r
            for r in self.idp.requests()
            if r["client_id"] == self.tenant.client_id and r["time"] >= self.started
        ]


def _jwt_parts(value: str) -> list[str]:
    # The payload and signature identify one token; a truncated copy still leaks them.
    parts = value.split(".")
    return [p for p in parts[1:] if len(p) >= 16] if len(parts) == 3 else []


def _pem_body_lines(path: str) -> list[str]:
    return [
        line
        for line in Path(path).read_text().splitlines()
        if line and not line.startswith("-----") and len(line) >= 16
    ]


def known_secrets(info: EnvInfo, idp: IdpControl, extra: list[str]) -> list[str]:
    """Every secret value a token request may have touched."""
    values = list(extra)
    for tenant in info.tenants:
        values.append(tenant.secret)
        values.extend(_pem_body_lines(tenant.private_key_file))
        federated = Path(tenant.federated_token_file).read_text().strip()
        values += [federated, *_jwt_parts(federated)]
    issued = idp.issued_secrets()
    for value in issued["tokens"] + issued["assertions"]:
        values += [value, *_jwt_parts(value)]
    return [v for v in values if v]


def assert_no_secret_in(
    exc: BaseException, info: EnvInfo, idp: IdpControl, extra: list[str]
) -> None:
    texts = [
        str(exc),
        repr(exc),
        str(getattr(exc, "hint", "")),
        "".join(traceback.format_exception(exc)),
    ]
    for secret in known_secrets(info, idp, extra):
        for text in texts:
            assert secret not in text, f"a secret value appears in {type(exc).__name__}"


@pytest.fixture
def make_client(env_info: EnvInfo, idp: IdpControl, tmp_path: Path) -> Callable[..., Harness]:
    """Returns ``make(credential, tenant=, tenant_id=, client_id=, scope=, tls=, via_yaml=)``."""

    def make(
        credential: dict[str, Any],
        *,
        tenant: str = "contoso",
        tenant_id: str | None = None,
        client_id: str | None = None,
        scope: str = SCOPE,
        tls: bool = True,
        via_yaml: bool = False,
    ) -> Harness:
        info = env_info.tenant(tenant)
        data: dict[str, Any] = {
            "database": {"url": f"sqlite:///{tmp_path / 'unused.db'}"},
            "tenants": [
                {
                    "name": tenant,
                    "tenant_id": tenant_id or info.tenant_id,
                    "client_id": client_id or info.client_id,
                    "credential": credential,
                    "authority_host": env_info.authority_host,
                    "scope": scope,
                }
            ],
            "mailboxes": [],
        }
        if tls:
            data["tls"] = {"ca_file": env_info.ca_file}
        if via_yaml:
            path = tmp_path / f"config-{uuid.uuid4().hex[:8]}.yaml"
            path.write_text(yaml.safe_dump(data))
            config = load_config(path, environ={})
        else:
            config = config_from_mapping(data, environ={})
        observed: list[Observation] = []
        client = MsalTokenClient(
            config.tenants,
            ca_file=str(config.tls.ca_file) if config.tls.ca_file else None,
            observer=lambda name, ok, token: observed.append((name, ok, token)),
        )
        return Harness(client, config.tenants[0], idp, env_info, observed)

    return make


def assert_exchange_token(token: AccessToken, info: EnvInfo, tenant: str) -> dict[str, Any]:
    """The token is what Dovecot (Exchange) will accept for this tenant's application."""
    t = info.tenant(tenant)
    claims = jwt.decode(token.value, options={"verify_signature": False})
    assert claims["aud"] == EXCHANGE_RESOURCE
    assert claims["appid"] == t.client_id
    assert claims["tid"] == t.tenant_id
    assert claims["roles"] == ["IMAP.AccessAsApp"]
    # expires_at counts from when the request started: never later than the token's exp.
    assert token.expires_at <= claims["exp"] + 1
    assert token.obtained_at <= time.time()
    return claims


def _copy_secret(info: EnvInfo, tenant: str, directory: Path) -> Path:
    path = directory / f"{tenant}-client-secret"
    pki.write_private(path, Path(info.tenant(tenant).secret_file).read_bytes())
    return path


def _restore_secret(idp: IdpControl, info: EnvInfo, tenant: str) -> None:
    t = info.tenant(tenant)
    idp.update_client(
        t.tenant_id, t.client_id, set_={"secrets": [{"value": t.secret, "expires": None}]}
    )


def _last_assertion_header(idp: IdpControl) -> dict[str, Any]:
    return dict(jwt.get_unverified_header(idp.issued_secrets()["assertions"][-1]))


# -- credentials that work ---------------------------------------------------------------------


def test_client_secret_file_gets_an_exchange_token_and_a_new_one_on_each_call(
    make_client: Callable[..., Harness], env_info: EnvInfo
) -> None:
    harness = make_client({"client_secret_file": env_info.tenant("contoso").secret_file})
    first = harness.acquire()
    second = harness.acquire()
    assert_exchange_token(first, env_info, "contoso")
    assert 3590 <= first.expires_at - first.obtained_at <= 3600
    # No MSAL cache in between: the second call went to the platform and got another token.
    assert second.value != first.value
    requests = harness.requests()
    assert [(r["status"], r["credential"], r["scope"]) for r in requests] == [
        (200, "secret", SCOPE)
    ] * 2
    assert first.value not in repr(first)


def test_client_secret_file_with_a_relative_path_in_a_yaml_config(
    make_client: Callable[..., Harness], env_info: EnvInfo, tmp_path: Path
) -> None:
    _copy_secret(env_info, "contoso", tmp_path)
    harness = make_client({"client_secret_file": "contoso-client-secret"}, via_yaml=True)
    assert harness.tenant.credential.client_secret_file == tmp_path / "contoso-client-secret"
    assert_exchange_token(harness.acquire(), env_info, "contoso")


def test_certificate_credential_sends_the_thumbprint_computed_from_the_certificate(
    make_client: Callable[..., Harness], env_info: EnvInfo, idp: IdpControl
) -> None:
    t = env_info.tenant("fabrikam")
    harness = make_client(
        {
            "certificate": {
                "private_key_file": t.private_key_file,
                "certificate_file": t.certificate_file,
            }
        },
        tenant="fabrikam",
    )
    assert_exchange_token(harness.acquire(), env_info, "fabrikam")
    assert [(r["status"], r["credential"]) for r in harness.requests()] == [(200, "certificate")]
    header = _last_assertion_header(idp)
    x5t = base64.urlsafe_b64decode(header["x5t"] + "=" * (-len(header["x5t"]) % 4))
    assert x5t.hex().upper() == t.thumbprint
    assert "x5c" not in header  # only with send_certificate_chain


def test_certificate_with_send_certificate_chain_sends_the_certificate_in_x5c(
    make_client: Callable[..., Harness], env_info: EnvInfo, idp: IdpControl
) -> None:
    t = env_info.tenant("contoso")
    harness = make_client(
        {
            "certificate": {
                "private_key_file": t.private_key_file,
                "certificate_file": t.certificate_file,
                "send_certificate_chain": True,
            }
        }
    )
    assert_exchange_token(harness.acquire(), env_info, "contoso")
    assert [(r["status"], r["credential"]) for r in harness.requests()] == [(200, "certificate")]
    header = _last_assertion_header(idp)
    leaf = base64.b64decode(header["x5c"][0])
    assert hashlib.sha1(leaf).hexdigest().upper() == t.thumbprint  # noqa: S324


def test_federated_token_file_is_read_again_for_every_request(
    make_client: Callable[..., Harness],
    env_info: EnvInfo,
    idp: IdpControl,
    local_env: LocalEnv,
) -> None:
    t = env_info.tenant("fabrikam")
    local_env.write_federated_token("fabrikam")
    harness = make_client({"federated_token_file": t.federated_token_file}, tenant="fabrikam")
    assert_exchange_token(harness.acquire(), env_info, "fabrikam")
    first_assertion = idp.issued_secrets()["assertions"][-1]
    assert first_assertion == Path(t.federated_token_file).read_text().strip()

    time.sleep(1.1)  # the projected token's iat has one-second resolution: make it differ
    rotated = local_env.write_federated_token("fabrikam").read_text().strip()
    assert rotated != first_assertion
    assert_exchange_token(harness.acquire(), env_info, "fabrikam")
    assert idp.issued_secrets()["assertions"][-1] == rotated
    assert [(r["status"], r["credential"]) for r in harness.requests()] == [(200, "federated")] * 2


def test_rotated_secret_file_is_used_by_the_next_acquire_without_a_new_client(
    make_client: Callable[..., Harness], env_info: EnvInfo, idp: IdpControl, tmp_path: Path
) -> None:
    t = env_info.tenant("contoso")
    secret_file = _copy_secret(env_info, "contoso", tmp_path)
    harness = make_client({"client_secret_file": str(secret_file)})
    new_secret = f"rotated-{uuid.uuid4().hex}"
    harness.extra_secrets.append(new_secret)
    try:
        harness.acquire()
        # The operator's order: add the new secret, deploy it, then delete the old one.
        idp.update_client(
            t.tenant_id,
            t.client_id,
            set_={"secrets": [{"value": t.secret, "expires": None}, {"value": new_secret}]},
        )
        secret_file.write_text(new_secret + "\n")
        idp.update_client(t.tenant_id, t.client_id, set_={"secrets": [{"value": new_secret}]})
        assert_exchange_token(harness.acquire(), env_info, "contoso")
        assert [r["status"] for r in harness.requests()] == [200, 200]
        # And the old secret really is gone: the rotated file was what got the second token.
        secret_file.write_text(t.secret + "\n")
        error = harness.fails(TokenRejected)
        assert error.code == 7000215
    finally:
        _restore_secret(idp, env_info, "contoso")


# -- errors, each mapped -----------------------------------------------------------------------


def test_wrong_secret_is_rejected_with_7000215_and_a_hint_naming_value_secret_id_and_file(
    make_client: Callable[..., Harness], tmp_path: Path
) -> None:
    wrong = f"not-the-secret-{uuid.uuid4().hex}"
    secret_file = tmp_path / "wrong-secret"
    pki.write_private(secret_file, (wrong + "\n").encode())
    harness = make_client({"client_secret_file": str(secret_file)})
    harness.extra_secrets.append(wrong)
    error = harness.fails(TokenRejected)
    assert error.code == 7000215
    assert "AADSTS7000215" in str(error)
    assert "Value" in error.hint
    assert "Secret ID" in error.hint
    assert str(secret_file) in error.hint
    assert "client_secret_file" in error.hint
    assert [(r["status"], r["error_code"]) for r in harness.requests()] == [(401, 7000215)]


def test_expired_secret_is_rejected_with_7000222(
    make_client: Callable[..., Harness], env_info: EnvInfo, idp: IdpControl
) -> None:
    t = env_info.tenant("contoso")
    idp.update_client(
        t.tenant_id,
        t.client_id,
        set_={"secrets": [{"value": t.secret, "expires": time.time() - 3600}]},
    )
    try:
        harness = make_client({"client_secret_file": t.secret_file})
        error = harness.fails(TokenRejected)
    finally:
        _restore_secret(idp, env_info, "contoso")
    assert error.code == 7000222
    assert "expired" in error.hint
    assert t.secret_file in error.hint
    assert [(r["status"], r["error_code"]) for r in harness.requests()] == [(401, 7000222)]


def test_unknown_client_id_is_rejected_with_700016_naming_the_client_and_tenant(
    make_client: Callable[..., Harness], env_info: EnvInfo, idp: IdpControl
) -> None:
    t = env_info.tenant("contoso")
    unknown = str(uuid.uuid4())
    harness = make_client({"client_secret_file": t.secret_file}, client_id=unknown)
    error = harness.fails(TokenRejected)
    assert error.code == 700016
    assert unknown in error.hint
    assert t.tenant_id in error.hint
    assert [
        (r["status"], r["error_code"])
        for r in idp.requests()
        if r["client_id"] == unknown and r["time"] >= harness.started
    ] == [(400, 700016)]


def test_unknown_tenant_is_rejected_with_90002_while_msal_builds_the_app(
    make_client: Callable[..., Harness], env_info: EnvInfo
) -> None:
    unknown = str(uuid.uuid4())
    harness = make_client(
        {"client_secret_file": env_info.tenant("contoso").secret_file}, tenant_id=unknown
    )
    error = harness.fails(TokenRejected)
    assert error.code == 90002
    assert unknown in error.hint
    assert "authority_host" in error.hint
    # OIDC discovery failed: no token request reached the platform.
    assert harness.requests() == []


def test_wrong_certificate_is_rejected_with_700027_and_its_thumbprint_in_the_hint(
    make_client: Callable[..., Harness], tmp_path: Path
) -> None:
    key, cert = pki.self_signed("not-registered")
    key_file = pki.write_private(tmp_path / "key.pem", pki.key_pem(key))
    cert_file = tmp_path / "cert.pem"
    cert_file.write_bytes(pki.cert_pem(cert))
    harness = make_client(
        {"certificate": {"private_key_file": str(key_file), "certificate_file": str(cert_file)}}
    )
    harness.extra_secrets.extend(_pem_body_lines(str(key_file)))
    error = harness.fails(TokenRejected)
    assert error.code == 700027
    assert pki.thumbprint(cert) in error.hint
    assert [(r["status"], r["error_code"]) for r in harness.requests()] == [(401, 700027)]


def test_bad_scope_is_rejected_with_1002012_and_a_hint_showing_the_default_scope(
    make_client: Callable[..., Harness], env_info: EnvInfo
) -> None:
    harness = make_client(
        {"client_secret_file": env_info.tenant("contoso").secret_file},
        scope=f"{EXCHANGE_RESOURCE}/IMAP.AccessAsApp",
    )
    error = harness.fails(TokenRejected)
    assert error.code == 1002012
    assert SCOPE in error.hint
    assert [(r["status"], r["error_code"]) for r in harness.requests()] == [(400, 1002012)]


def test_injected_503_is_transient(
    make_client: Callable[..., Harness], env_info: EnvInfo, idp: IdpControl
) -> None:
    t = env_info.tenant("contoso")
    harness = make_client({"client_secret_file": t.secret_file})
    idp.fail(count=1, status=503, tenant=t.tenant_id)
    error = harness.fails(TokenUnavailable)
    assert isinstance(error, TokenUnavailable)
    assert [(r["status"], r.get("injected")) for r in harness.requests()] == [(503, True)]


def test_injected_429_with_retry_after_7_is_transient_with_retry_after_7(
    make_client: Callable[..., Harness], env_info: EnvInfo, idp: IdpControl
) -> None:
    t = env_info.tenant("contoso")
    harness = make_client({"client_secret_file": t.secret_file})
    idp.fail(count=1, status=429, retry_after=7, tenant=t.tenant_id)
    error = harness.fails(TokenUnavailable)
    assert error.retry_after == 7
    assert [(r["status"], r.get("injected")) for r in harness.requests()] == [(429, True)]


def test_no_request_within_retry_after_and_the_remaining_wait_is_reported(
    make_client: Callable[..., Harness], env_info: EnvInfo, idp: IdpControl
) -> None:
    t = env_info.tenant("contoso")
    harness = make_client({"client_secret_file": t.secret_file})
    idp.fail(count=1, status=429, retry_after=7, tenant=t.tenant_id)
    assert harness.fails(TokenUnavailable).retry_after == 7
    # Within the 7 s: no request (MSAL would only replay the 429), the rest of the wait told.
    throttled = harness.fails(TokenUnavailable, requested=False)
    assert 5 < throttled.retry_after <= 7
    assert len(harness.requests()) == 1

    def token_after_the_wait() -> AccessToken | None:
        try:
            return harness.client.acquire(harness.tenant.name)
        except TokenUnavailable:
            return None

    token = wait_for(token_after_the_wait, timeout=10, interval=0.5, what="a token after 7 s")
    assert time.time() - harness.started >= 7
    assert_exchange_token(token, env_info, "contoso")
    assert [r["status"] for r in harness.requests()] == [429, 200]


def test_tls_without_ca_file_is_transient_with_a_hint_naming_tls_ca_file(
    make_client: Callable[..., Harness], env_info: EnvInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without tls.ca_file requests trusts the environment: make sure nothing there trusts the
    # local CA (or routes through a proxy), so the handshake fails on verification.
    for name in (
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "SSL_CERT_FILE",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    harness = make_client({"client_secret_file": env_info.tenant("contoso").secret_file}, tls=False)
    error = harness.fails(TokenUnavailable)
    assert "tls.ca_file" in (error.hint or "")
    assert harness.requests() == []


def test_missing_secret_file_is_rejected_with_a_hint(
    make_client: Callable[..., Harness], env_info: EnvInfo, tmp_path: Path
) -> None:
    secret_file = _copy_secret(env_info, "contoso", tmp_path)
    harness = make_client({"client_secret_file": str(secret_file)})
    harness.acquire()
    secret_file.unlink()
    error = harness.fails(TokenRejected)
    assert error.code is None
    assert "client_secret_file" in str(error)
    assert "exists" in (error.hint or "")
    assert "readable" in (error.hint or "")
    assert [r["status"] for r in harness.requests()] == [200]


def test_missing_federated_token_file_is_rejected_with_a_hint(
    make_client: Callable[..., Harness],
    env_info: EnvInfo,
    local_env: LocalEnv,
    tmp_path: Path,
) -> None:
    source = local_env.write_federated_token("fabrikam")
    token_file = tmp_path / "federated-token"
    pki.write_private(token_file, source.read_bytes())
    harness = make_client({"federated_token_file": str(token_file)}, tenant="fabrikam")
    harness.acquire()
    token_file.unlink()
    error = harness.fails(TokenRejected)
    assert error.code is None
    assert "federated_token_file" in str(error)
    assert "exists" in (error.hint or "")
    assert len(harness.requests()) == 1


# -- refusals classified by the OAuth error field ------------------------------------------------


def test_app_without_service_principal_is_rejected_with_7000229_and_az_ad_sp_create(
    make_client: Callable[..., Harness], env_info: EnvInfo, idp: IdpControl
) -> None:
    t = env_info.tenant("contoso")
    idp.update_client(t.tenant_id, t.client_id, set_={"service_principal": False})
    try:
        harness = make_client({"client_secret_file": t.secret_file})
        error = harness.fails(TokenRejected)
    finally:
        idp.update_client(t.tenant_id, t.client_id, unset=["service_principal"])
    assert error.code == 7000229
    assert f"az ad sp create --id {t.client_id}" in error.hint
    assert "admin consent" in error.hint
    assert [(r["status"], r["error_code"]) for r in harness.requests()] == [(400, 7000229)]


@pytest.mark.parametrize(
    "case",
    [
        (700213, "system:serviceaccount:other:mailsyncd", ""),
        (700211, FEDERATED_SUBJECT, "https://oidc.elsewhere.test/"),
    ],
    ids=["subject", "issuer"],
)
def test_federated_mismatch_is_rejected_with_the_presented_iss_and_sub_never_the_token(
    make_client: Callable[..., Harness],
    env_info: EnvInfo,
    idp: IdpControl,
    tmp_path: Path,
    case: tuple[int, str, str],
) -> None:
    code, subject, issuer = case
    t = env_info.tenant("fabrikam")
    token_file = projected_token_file(
        env_info, tmp_path, subject=subject, issuer=issuer or FEDERATED_ISSUER
    )
    idp.update_client(t.tenant_id, t.client_id, set_={"federated_detail": True})
    try:
        harness = make_client({"federated_token_file": str(token_file)}, tenant="fabrikam")
        harness.extra_secrets.append(token_file.read_text())
        error = harness.fails(TokenRejected)
    finally:
        idp.update_client(t.tenant_id, t.client_id, unset=["federated_detail"])
    assert error.code == code
    assert f"sub {subject}" in error.hint
    assert f"iss {issuer or FEDERATED_ISSUER}" in error.hint
    assert f"az ad app federated-credential list --id {t.client_id}" in error.hint


def test_unknown_code_with_a_refusal_error_is_rejected_with_entras_own_description(
    make_client: Callable[..., Harness], env_info: EnvInfo, idp: IdpControl
) -> None:
    # A code no hint of ours knows: the OAuth error decides, and Entra's words are the hint.
    t = env_info.tenant("contoso")
    harness = make_client({"client_secret_file": t.secret_file})
    idp.fail(
        count=1,
        status=400,
        aadsts=7002138,
        error="invalid_client",
        description="No matching federated identity record found for presented assertion "
        "subject. The subject matches with case-insensitive comparison.",
        tenant=t.tenant_id,
    )
    error = harness.fails(TokenRejected)
    assert error.code == 7002138
    assert "invalid_client" in str(error)
    assert error.hint.startswith("AADSTS7002138: No matching federated identity record")
    assert "Trace ID" not in error.hint
    assert error.description == error.hint


@pytest.mark.parametrize(
    ("status", "oauth_error"),
    [(429, "invalid_client"), (400, "temporarily_unavailable"), (400, "server_error")],
)
def test_throttling_and_unavailable_answers_stay_transient_whatever_the_code(
    make_client: Callable[..., Harness],
    env_info: EnvInfo,
    idp: IdpControl,
    status: int,
    oauth_error: str,
) -> None:
    t = env_info.tenant("contoso")
    harness = make_client({"client_secret_file": t.secret_file})
    idp.fail(count=1, status=status, aadsts=7000215, error=oauth_error, tenant=t.tenant_id)
    harness.fails(TokenUnavailable)
