"""MSAL adapter: one ConfidentialClientApplication and one shared token per tenant.

MSAL serves tokens from its own cache until five minutes before expiry; the SPEC wants a new
token once 2/3 of the lifetime has passed, so the daemon keeps the token itself (see
``refresher.py``) and this adapter empties MSAL's cache (``remove_tokens_for_client``) before
every request. Every MSAL failure shape is translated here, in one place:
error dicts (AADSTS codes), ``MsalServiceError`` (5xx), ``requests`` exceptions (network), and
the ``ValueError`` that OIDC discovery raises for an unknown tenant. An error dict is a refusal
(``TokenRejected``: the tenant's mailboxes park as ``auth_failed``) or transient
(``TokenUnavailable``) by its OAuth ``error`` field and HTTP status (``hints.is_refusal``),
never by a list of AADSTS codes.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from requests.adapters import HTTPAdapter

from daemon.auth import AccessToken
from daemon.auth.hints import (
    FEDERATED_MISMATCH_CODES,
    assertion_claims,
    entra_description,
    federated_hint,
    hint_for,
    is_refusal,
)
from daemon.config import Tenant
from daemon.errors import SecretReadError, TokenRejected, TokenUnavailable
from daemon.tls import make_ssl_context

HTTP_TIMEOUT = 15.0
# Hosts of Microsoft's clouds, where MSAL's instance discovery works; elsewhere it is off.
MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
    }
)

TokenObserver = Callable[[str, bool, AccessToken | None], None]
"""Called after every token request: (tenant name, succeeded, token)."""


class _TrustAdapter(HTTPAdapter):
    """HTTPS through the daemon's own verifying SSL context."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


def _thumbprint(certificate_pem: str) -> str:
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha1(der).hexdigest().upper()  # noqa: S324 - the thumbprint Entra expects


def _aadsts_code(result: dict[str, Any]) -> int | None:
    codes = result.get("error_codes") or []
    return int(codes[0]) if codes else None


def _first_aadsts_in_chain(exc: BaseException) -> int | None:
    for seen in _chain(exc):
        text = str(seen)
        marker = text.find("AADSTS")
        if marker >= 0:
            digits = "".join(ch for ch in text[marker + 6 : marker + 16] if ch.isdigit())
            if digits:
                return int(digits)
    return None


def _network_in_chain(exc: BaseException) -> bool:
    return any(isinstance(seen, requests.RequestException | OSError) for seen in _chain(exc))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _fingerprint(credential: Any) -> str:
    """A digest that changes when the credential does (the value itself is never kept)."""
    if isinstance(credential, dict) and "client_assertion" in credential:
        return "federated"  # the callable reads the file for every request
    material = credential if isinstance(credential, str) else repr(sorted(credential.items()))
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass
class _TenantState:
    tenant: Tenant
    lock: threading.Lock = field(default_factory=threading.Lock)
    app: Any = None
    fingerprint: str = ""
    thumbprint: str = ""
    rotated: bool = False
    retry_after: float | None = None
    """The platform's Retry-After of the last answer (429, 503), in seconds."""
    last_status: int | None = None
    """The HTTP status of the platform's last answer (an error dict does not carry it)."""
    throttled_until: float = 0.0
    """No request before this time (epoch s): the platform's Retry-After."""
    http_cache: dict[str, Any] = field(default_factory=dict)
    """MSAL's HTTP cache, owned here and emptied before every request: MSAL would otherwise
    replay a 5xx/429 answer for seconds and a 400 for a minute without asking again, while
    the refresher already decides when to retry."""


class MsalTokenClient:
    """Asks the identity platform for a new token of a tenant, every time it is called.

    The caller (``TokenRefresher``) keeps the token and makes sure one request per tenant is
    in flight. Credentials are read again for every request: a rotated secret or certificate
    file, or a new projected federated token, takes effect without a restart.
    """

    def __init__(
        self,
        tenants: Sequence[Tenant],
        *,
        ca_file: str | None = None,
        observer: TokenObserver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tenants = {t.name: _TenantState(t) for t in tenants}
        self._ca_file = ca_file
        self._observer = observer
        self._clock = clock

    @property
    def tenant_names(self) -> tuple[str, ...]:
        return tuple(self._tenants)

    def set_tenants(self, tenants: Sequence[Tenant]) -> None:
        """The tenants changed while running: a changed tenant gets a new MSAL app."""
        current = self._tenants
        self._tenants = {
            t.name: current[t.name]
            if t.name in current and current[t.name].tenant == t
            else _TenantState(t)
            for t in tenants
        }

    def acquire(self, tenant: str) -> AccessToken:
        """A new token from the platform; raises TokenUnavailable or TokenRejected."""
        state = self._tenants.get(tenant)
        if state is None:
            raise TokenUnavailable(f"tenant {tenant} is no longer configured")
        with state.lock:
            return self._request(state)

    # -- MSAL -----------------------------------------------------------------------------
    def _session(self, state: _TenantState) -> requests.Session:
        session = requests.Session()

        def remember_retry_after(response: requests.Response, **_kwargs: Any) -> None:
            state.last_status = response.status_code
            value = response.headers.get("Retry-After")
            state.retry_after = float(value) if value and value.isdigit() else None
            if state.retry_after is not None:
                state.throttled_until = self._clock() + state.retry_after

        session.hooks["response"].append(remember_retry_after)
        if self._ca_file:
            # tls.ca_file is an *extra* CA: the system roots stay trusted (a plain
            # `verify=<file>` would trust that file alone).
            session.mount("https://", _TrustAdapter(make_ssl_context(self._ca_file)))
            # Otherwise REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE silently override the trust.
            session.trust_env = False
        return session

    def _credential(self, state: _TenantState) -> Any:
        credential = state.tenant.credential
        if credential.certificate is not None:
            cert_pem = credential.certificate.read_certificate()
            state.thumbprint = _thumbprint(cert_pem)
            value: dict[str, Any] = {
                "private_key": credential.certificate.read_private_key().get_secret_value(),
                "thumbprint": state.thumbprint,
            }
            if credential.certificate.send_certificate_chain:
                value["public_certificate"] = cert_pem
            return value
        if credential.federated_token_file is not None:
            # Re-read for every request: the platform rotates the projected token file.
            return {
                "client_assertion": lambda: credential.read_federated_token().get_secret_value()
            }
        return credential.read_client_secret().get_secret_value()

    def _app(self, state: _TenantState) -> Any:
        tenant = state.tenant
        try:
            credential = self._credential(state)
        except SecretReadError as exc:
            raise TokenRejected(
                f"tenant {tenant.name}: cannot read the credential ({exc})",
                code=None,
                hint="check that the credential file exists and is readable by the daemon's user",
            ) from None
        fingerprint = _fingerprint(credential)
        if state.app is not None and fingerprint == state.fingerprint:
            return state.app
        if state.app is not None:
            # A rotated secret or certificate: a new app, so MSAL's cached errors go too.
            state.rotated = True
        host = tenant.authority_host.removeprefix("https://")
        try:
            state.app = msal.ConfidentialClientApplication(
                tenant.client_id,
                client_credential=credential,
                authority=tenant.authority,
                instance_discovery=host in MICROSOFT_AUTHORITY_HOSTS,
                http_client=self._session(state),
                http_cache=state.http_cache,
                timeout=HTTP_TIMEOUT,
            )
        except ValueError as exc:
            # OIDC discovery failed while building the app: unknown tenant or no network.
            code = _first_aadsts_in_chain(exc)
            if code is None and _network_in_chain(exc):
                raise TokenUnavailable(
                    f"tenant {tenant.name}: identity platform unreachable at {tenant.authority}",
                    hint=self._tls_hint(exc),
                ) from None
            raise self._rejected(state, code, "authority discovery failed") from None
        state.fingerprint = fingerprint
        return state.app

    def _request(self, state: _TenantState) -> AccessToken:
        tenant = state.tenant
        wait = state.throttled_until - self._clock()
        if wait > 0:
            raise TokenUnavailable(
                f"tenant {tenant.name}: the identity platform asked to wait {wait:.0f} s",
                retry_after=wait,
            )
        state.retry_after = state.last_status = None
        try:
            app = self._app(state)
            app.remove_tokens_for_client()
            state.http_cache.clear()
            started = self._clock()
            result = app.acquire_token_for_client(scopes=[tenant.scope])
        except (TokenUnavailable, TokenRejected):
            self._observe(tenant.name, ok=False)
            raise
        except SecretReadError as exc:
            # The federated token file is read inside MSAL, for every request.
            self._observe(tenant.name, ok=False)
            raise TokenRejected(
                f"tenant {tenant.name}: cannot read the credential ({exc})",
                code=None,
                hint="check that the credential file exists and is readable by the daemon's "
                "user (for workload identity: the projected service account token)",
            ) from None
        except msal.exceptions.MsalServiceError as exc:
            self._observe(tenant.name, ok=False)
            raise TokenUnavailable(
                f"tenant {tenant.name}: identity platform error ({type(exc).__name__})",
                retry_after=state.retry_after,
            ) from None
        except requests.RequestException as exc:
            self._observe(tenant.name, ok=False)
            raise TokenUnavailable(
                f"tenant {tenant.name}: token request failed: {type(exc).__name__}",
                hint=self._tls_hint(exc),
            ) from None
        if "access_token" not in result:
            self._observe(tenant.name, ok=False)
            code = _aadsts_code(result)
            error = str(result.get("error") or "") or None
            if is_refusal(error, code, state.last_status):
                raise self._rejected(
                    state, code, error or "refused", description=result.get("error_description")
                )
            raise TokenUnavailable(
                f"tenant {tenant.name}: token request failed: {error or 'no error field'}"
                + (f" (AADSTS{code})" if code else "")
                + (f" (HTTP {state.last_status})" if state.last_status else ""),
                hint=hint_for(code),
                retry_after=state.retry_after,
            )
        expires_in = float(result.get("expires_in") or 3600)
        token = AccessToken(
            value=result["access_token"], expires_at=started + expires_in, obtained_at=started
        )
        self._observe(tenant.name, ok=True, token=token)
        return token

    def _rejected(
        self, state: _TenantState, code: int | None, what: str, *, description: object = None
    ) -> TokenRejected:
        tenant = state.tenant
        credential = tenant.credential
        source = (
            f"credential.client_secret_env ({credential.client_secret_env})"
            if credential.client_secret_env
            else f"credential.client_secret_file ({credential.client_secret_file})"
        )
        hint = hint_for(
            code,
            secret_source=source,
            client_id=tenant.client_id,
            tenant_id=tenant.tenant_id,
            thumbprint=state.thumbprint or "<thumbprint>",
        )
        if code in FEDERATED_MISMATCH_CODES and credential.federated_token_file is not None:
            hint = federated_hint(tenant.client_id, self._presented(state))
        entra = entra_description(description)
        label = f"AADSTS{code}" if code else "no AADSTS code"
        return TokenRejected(
            f"tenant {tenant.name}: {what} ({label})",
            code=code,
            # A code without a hint of ours: Entra's own words are the best advice there is.
            hint=hint or entra,
            description=entra,
        )

    @staticmethod
    def _presented(state: _TenantState) -> dict[str, str]:
        """What the projected federated token claims to be (iss, sub, aud), never the token."""
        try:
            assertion = state.tenant.credential.read_federated_token().get_secret_value()
        except SecretReadError:
            return {}
        return dict(assertion_claims(assertion))

    def _tls_hint(self, exc: BaseException) -> str | None:
        if any(isinstance(seen, requests.exceptions.SSLError) for seen in _chain(exc)):
            return "TLS verification of the identity platform failed: set tls.ca_file"
        return None

    def _observe(self, tenant: str, *, ok: bool, token: AccessToken | None = None) -> None:
        if self._observer is not None:
            self._observer(tenant, ok, token)
