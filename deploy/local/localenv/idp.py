"""A small HTTPS identity platform that MSAL accepts as an Entra ID authority.

Serves, per tenant (GUID or one of its domains):
  GET  /<tenant>/v2.0/.well-known/openid-configuration   OIDC discovery
  GET  /<tenant>/discovery/v2.0/keys                      JWKS of the token signing key
  POST /<tenant>/oauth2/v2.0/token                        client credentials: secret,
                                                          certificate assertion, federated assertion
Errors are shaped like Entra's, with AADSTS codes. Test controls live under /_control/ (see
``Controls`` below and ``localenv.client.IdpControl``). A registered client's settings make the
platform refuse it the way Entra does: ``"disabled": true`` (AADSTS7000112),
``"service_principal": false`` (no service principal in the tenant, AADSTS7000229), and
``"federated_detail": true`` (a federated assertion that matches no record gets Entra's current
codes AADSTS700211 / 700212 / 700213 for issuer / audience / subject instead of the older
generic AADSTS70021). Run as
``python -m localenv.idp --config idp.json --port-file idp.port``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import signal
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from localenv.tokens import EXCHANGE_RESOURCE, mint_access_token

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
RECORDED_SECRETS = 5000

AADSTS_MESSAGES: dict[int, tuple[int, str, str]] = {
    # code: (HTTP status, OAuth error, description)
    90002: (
        400,
        "invalid_tenant",
        (
            "Tenant '{tenant}' not found. Check to make sure you have the "
            "correct tenant ID and are signing into the correct cloud."
        ),
    ),
    700016: (
        400,
        "unauthorized_client",
        "Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
    ),
    7000215: (
        401,
        "invalid_client",
        (
            "Invalid client secret provided. Ensure the secret being sent "
            "in the request is the client secret value, not the client secret ID, for a secret "
            "added to app '{client_id}'."
        ),
    ),
    7000222: (
        401,
        "invalid_client",
        (
            "The provided client secret keys for app '{client_id}' are "
            "expired. Visit the Azure portal to create new keys for your app."
        ),
    ),
    7000216: (
        400,
        "invalid_request",
        (
            "'client_assertion', 'client_secret' or 'request' is "
            "required for the 'client_credentials' grant type."
        ),
    ),
    700027: (
        401,
        "invalid_client",
        (
            "Client assertion failed signature validation. Thumbprint of "
            "key used by client: '{detail}'."
        ),
    ),
    700024: (400, "invalid_client", "Client assertion is not within its valid time range."),
    70021: (
        400,
        "invalid_client",
        (
            "No matching federated identity record found for presented "
            "assertion. Assertion Issuer: '{detail}'."
        ),
    ),
    70011: (
        400,
        "invalid_scope",
        (
            "The provided value for the input parameter 'scope' is not "
            "valid. The scope {detail} is not valid."
        ),
    ),
    1002012: (
        400,
        "invalid_scope",
        (
            "The provided value for scope {detail} is not valid. Client "
            "credential flows must have a scope value with /.default suffixed to the resource "
            "identifier (application ID URI)."
        ),
    ),
    500011: (
        400,
        "invalid_resource",
        "The resource principal named {detail} was not found in the tenant named {tenant}.",
    ),
    7000112: (401, "unauthorized_client", "Application '{client_id}' is disabled."),
    # Wording of the next four as Entra answers (public issue threads, see the team's notes).
    7000229: (
        400,
        "invalid_client",
        (
            "The client application {client_id} is missing service principal in the tenant "
            "{tenant}. See instructions here: https://go.microsoft.com/fwlink/?linkid=2225119"
        ),
    ),
    700211: (
        400,
        "invalid_client",
        (
            "No matching federated identity record found for presented assertion issuer "
            "'{detail}'. Please check your federated identity credential Subject, Audience and "
            "Issuer against the presented assertion."
        ),
    ),
    700212: (
        400,
        "invalid_client",
        (
            "No matching federated identity record found for presented assertion audience "
            "'{detail}'. Please check your federated identity credential Subject, Audience and "
            "Issuer against the presented assertion."
        ),
    ),
    700213: (
        400,
        "invalid_client",
        (
            "No matching federated identity record found for presented assertion subject "
            "'{detail}'. Check your federated identity credential Subject, Audience and Issuer "
            "against the presented assertion."
        ),
    ),
    70003: (400, "unsupported_grant_type", "The app requested an unsupported grant type."),
    90055: (429, "temporarily_unavailable", "The tenant is throttled."),
    53003: (400, "access_denied", "Access has been blocked by Conditional Access policies."),
}


def _b64url_sha1(der: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()  # noqa: S324


class TokenError(Exception):
    """An Entra error answer (a code not in AADSTS_MESSAGES: ``invalid_client``, no text)."""

    def __init__(self, code: int, *, tenant: str, client_id: str = "", detail: str = "") -> None:
        self.code = code
        status, error, text = AADSTS_MESSAGES.get(code, (400, "invalid_client", "{detail}"))
        self.status = status
        self.error = error
        self.description = f"AADSTS{code}: " + text.format(
            tenant=tenant, client_id=client_id, detail=detail
        )
        super().__init__(self.description)


@dataclass
class Failure:
    """An injected failure of the token endpoint."""

    count: int | None  # remaining requests to fail; None: until `until`
    until: float | None  # monotonic deadline; None: by count only
    status: int = 503
    aadsts: int | None = None
    delay: float = 0.0
    retry_after: int | None = None
    tenant: str | None = None
    error: str | None = None  # the OAuth error of the answer (default: the code's own)
    description: str | None = None  # the text after "AADSTS<code>: " (default: the code's own)

    def active(self, now: float) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        return not (self.until is not None and now >= self.until)


@dataclass
class State:
    """Everything the platform knows; guarded by ``lock``."""

    config: dict[str, Any]
    signing_key: Any
    kid: str
    token_lifetime: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    failures: list[Failure] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Every access token issued and client assertion received, so that tests can search a
    # daemon's output for them (bounded: the newest RECORDED_SECRETS of each).
    issued: list[str] = field(default_factory=list)
    assertions: list[str] = field(default_factory=list)

    def tenant(self, name: str) -> tuple[str, dict[str, Any]] | None:
        tenants: dict[str, dict[str, Any]] = self.config["tenants"]
        if name in tenants:
            return name, tenants[name]
        for tenant_id, tenant in tenants.items():
            if name.lower() in (d.lower() for d in tenant.get("domains", [])):
                return tenant_id, tenant
        return None


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silence per-request stderr lines; the request log is at /_control/requests."""

    # -- plumbing -------------------------------------------------------------------------
    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"https://{host}:{port}"

    def _entra_error(self, err: TokenError, headers: dict[str, str] | None = None) -> None:
        self._send_json(
            err.status,
            {
                "error": err.error,
                "error_description": err.description,
                "error_codes": [err.code],
                "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                "trace_id": str(uuid.uuid4()),
                "correlation_id": str(uuid.uuid4()),
                "error_uri": f"{self._base()}/error?code={err.code}",
            },
            headers,
        )

    # -- routes ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["_control"]:
            self._control("GET", parts[1:], b"")
            return
        if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            self._discovery(parts[0])
            return
        if len(parts) == 4 and parts[1:] == ["discovery", "v2.0", "keys"]:
            self._jwks()
            return
        self._send_json(404, {"error": "not_found"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        parts = [p for p in path.split("/") if p]
        body = self._body()
        if parts[:1] == ["_control"]:
            self._control("POST", parts[1:], body)
            return
        if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            self._token(parts[0], body)
            return
        self._send_json(404, {"error": "not_found"})

    def do_DELETE(self) -> None:
        parts = [p for p in urlsplit(self.path).path.split("/") if p]
        if parts[:1] == ["_control"]:
            self._control("DELETE", parts[1:], b"")
            return
        self._send_json(404, {"error": "not_found"})

    def _discovery(self, tenant_name: str) -> None:
        state = self.server.state
        found = state.tenant(tenant_name)
        if found is None:
            self._entra_error(TokenError(90002, tenant=tenant_name))
            return
        tenant_id, _ = found
        base = f"{self._base()}/{tenant_id}"
        self._send_json(
            200,
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token", "token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "tenant_region_scope": "EU",
            },
        )

    def _jwks(self) -> None:
        state = self.server.state
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(state.signing_key.public_key()))
        jwk.update({"kid": state.kid, "use": "sig", "alg": "RS256"})
        self._send_json(200, {"keys": [jwk]})

    # -- token endpoint -------------------------------------------------------------------
    def _token(self, tenant_name: str, body: bytes) -> None:
        state = self.server.state
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        client_id = form.get("client_id", "")
        entry: dict[str, Any] = {
            "time": time.time(),
            "tenant": tenant_name,
            "client_id": client_id,
            "grant_type": form.get("grant_type"),
            "scope": form.get("scope"),
            "credential": (
                "secret"
                if "client_secret" in form
                else "assertion"
                if "client_assertion" in form
                else None
            ),
        }
        if "client_assertion" in form:
            with state.lock:
                state.assertions = [
                    *state.assertions[-RECORDED_SECRETS + 1 :],
                    form["client_assertion"],
                ]
        failure = self._take_failure(tenant_name)
        if failure is not None:
            if failure.delay:
                time.sleep(failure.delay)
            headers = (
                {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
            )
            entry.update(status=failure.status, injected=True, error_code=failure.aadsts)
            self._log(entry)
            if failure.aadsts is not None:
                err = TokenError(
                    failure.aadsts,
                    tenant=tenant_name,
                    client_id=client_id,
                    detail=failure.description or "",
                )
                err.status = failure.status
                if failure.error is not None:
                    err.error = failure.error
                if failure.description is not None:
                    err.description = f"AADSTS{failure.aadsts}: {failure.description}"
                self._entra_error(err, headers)
            else:
                self._send_json(
                    failure.status,
                    {"error": "server_error", "error_description": "injected"},
                    headers,
                )
            return
        try:
            tenant_id, client, credential = self._authenticate(tenant_name, form)
        except TokenError as err:
            entry.update(status=err.status, error_code=err.code)
            self._log(entry)
            self._entra_error(err)
            return
        lifetime = float(client.get("token_lifetime") or state.token_lifetime)
        token = mint_access_token(
            key=state.signing_key,
            kid=state.kid,
            tenant_id=tenant_id,
            client_id=client_id,
            lifetime=lifetime,
            audience=client.get("audience", EXCHANGE_RESOURCE),
            roles=client.get("roles"),
        )
        entry.update(status=200, credential=credential, expires_in=int(lifetime))
        self._log(entry)
        with state.lock:
            state.issued = [*state.issued[-RECORDED_SECRETS + 1 :], token]
        self._send_json(
            200,
            {
                "token_type": "Bearer",
                "expires_in": int(lifetime),
                "ext_expires_in": int(lifetime),
                "access_token": token,
            },
        )

    def _take_failure(self, tenant_name: str) -> Failure | None:
        state = self.server.state
        now = time.monotonic()
        with state.lock:
            state.failures = [f for f in state.failures if f.active(now)]
            for failure in state.failures:
                if failure.tenant in (None, tenant_name):
                    if failure.count is not None:
                        failure.count -= 1
                    return failure
        return None

    def _log(self, entry: dict[str, Any]) -> None:
        with self.server.state.lock:
            self.server.state.requests.append(entry)

    def _authenticate(
        self, tenant_name: str, form: dict[str, str]
    ) -> tuple[str, dict[str, Any], str]:
        state = self.server.state
        found = state.tenant(tenant_name)
        if found is None:
            raise TokenError(90002, tenant=tenant_name)
        tenant_id, tenant = found
        if form.get("grant_type") != "client_credentials":
            raise TokenError(70003, tenant=tenant_name)
        client_id = form.get("client_id", "")
        client = tenant["clients"].get(client_id)
        if client is None:
            raise TokenError(700016, tenant=tenant_name, client_id=client_id)
        if client.get("service_principal") is False:
            raise TokenError(7000229, tenant=tenant_name, client_id=client_id)
        if client.get("disabled"):
            raise TokenError(7000112, tenant=tenant_name, client_id=client_id)
        scope = form.get("scope", "")
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise TokenError(1002012, tenant=tenant_name, client_id=client_id, detail=scope)
        if scopes[0].removesuffix("/.default") != EXCHANGE_RESOURCE:
            raise TokenError(500011, tenant=tenant_name, detail=scopes[0].removesuffix("/.default"))
        if "client_secret" in form:
            self._check_secret(tenant_name, client_id, client, form["client_secret"])
            return tenant_id, client, "secret"
        if "client_assertion" in form:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise TokenError(7000216, tenant=tenant_name, client_id=client_id)
            kind = self._check_assertion(tenant_id, tenant_name, client_id, client, form)
            return tenant_id, client, kind
        raise TokenError(7000216, tenant=tenant_name, client_id=client_id)

    @staticmethod
    def _check_secret(tenant: str, client_id: str, client: dict[str, Any], secret: str) -> None:
        for registered in client.get("secrets", []):
            if registered["value"] == secret:
                expires = registered.get("expires")
                if expires is not None and expires < time.time():
                    raise TokenError(7000222, tenant=tenant, client_id=client_id)
                return
        raise TokenError(7000215, tenant=tenant, client_id=client_id)

    def _check_assertion(
        self,
        tenant_id: str,
        tenant_name: str,
        client_id: str,
        client: dict[str, Any],
        form: dict[str, str],
    ) -> str:
        assertion = form["client_assertion"]
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise TokenError(700027, tenant=tenant_name, client_id=client_id, detail="") from exc
        if "x5t" in header or "x5t#S256" in header or "x5c" in header:
            return self._check_certificate_assertion(
                tenant_id, tenant_name, client_id, client, assertion, header
            )
        issuer = str(unverified.get("iss", ""))
        if client.get("federated_detail"):
            self._federated_mismatch(tenant_name, client_id, client, unverified)
        for fed in client.get("federated", []):
            if fed["issuer"] != issuer:
                continue
            try:
                claims = jwt.decode(
                    assertion,
                    fed["public_key"],
                    algorithms=["RS256"],
                    audience=fed.get("audience", FEDERATED_AUDIENCE),
                    issuer=issuer,
                    options={"require": ["exp", "sub", "aud", "iss"]},
                )
            except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError) as exc:
                raise TokenError(700024, tenant=tenant_name, client_id=client_id) from exc
            except jwt.PyJWTError as exc:
                raise TokenError(
                    70021, tenant=tenant_name, client_id=client_id, detail=issuer
                ) from exc
            if claims.get("sub") == fed["subject"]:
                return "federated"
        raise TokenError(70021, tenant=tenant_name, client_id=client_id, detail=issuer)

    @staticmethod
    def _federated_mismatch(
        tenant_name: str, client_id: str, client: dict[str, Any], claims: dict[str, Any]
    ) -> None:
        """Entra's specific refusals: the first of issuer, audience, subject no record has."""
        records = client.get("federated", [])
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else list(aud or [])
        checks = (
            (700211, "iss", lambda fed: fed["issuer"] == claims.get("iss")),
            (
                700212,
                "aud",
                lambda fed: fed.get("audience", FEDERATED_AUDIENCE) in audiences,
            ),
            (700213, "sub", lambda fed: fed["subject"] == claims.get("sub")),
        )
        for code, claim, matches in checks:
            records = [fed for fed in records if matches(fed)]
            if not records:
                shown = claims.get(claim)
                detail = ", ".join(map(str, shown)) if isinstance(shown, list) else str(shown)
                raise TokenError(code, tenant=tenant_name, client_id=client_id, detail=detail)

    def _check_certificate_assertion(  # noqa: PLR0917 - one call site, all context it needs
        self,
        tenant_id: str,
        tenant_name: str,
        client_id: str,
        client: dict[str, Any],
        assertion: str,
        header: dict[str, Any],
    ) -> str:
        # MSAL pads x5t with '='; compare the unpadded base64url form.
        presented = str(header.get("x5t") or "").rstrip("=")
        if not presented and header.get("x5c"):
            leaf = base64.b64decode(header["x5c"][0])
            presented = _b64url_sha1(leaf)
        for pem in client.get("certificates", []):
            cert = x509.load_pem_x509_certificate(pem.encode())
            der = cert.public_bytes(serialization.Encoding.DER)
            if header.get("x5t#S256"):
                if (
                    header["x5t#S256"]
                    != base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
                ):
                    continue
            elif _b64url_sha1(der) != presented:
                continue
            audiences = [
                f"{self._base()}/{tenant_name}/oauth2/v2.0/token",
                f"{self._base()}/{tenant_id}/oauth2/v2.0/token",
            ]
            try:
                jwt.decode(
                    assertion,
                    cert.public_key(),  # type: ignore[arg-type]
                    algorithms=["RS256", "PS256"],
                    audience=audiences,
                    issuer=client_id,
                    options={"require": ["exp", "aud", "iss", "sub"]},
                )
            except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError) as exc:
                raise TokenError(700024, tenant=tenant_name, client_id=client_id) from exc
            except jwt.PyJWTError as exc:
                raise TokenError(
                    700027, tenant=tenant_name, client_id=client_id, detail=presented
                ) from exc
            return "certificate"
        raise TokenError(700027, tenant=tenant_name, client_id=client_id, detail=presented)

    # -- controls -------------------------------------------------------------------------
    def _control(self, method: str, parts: list[str], body: bytes) -> None:
        state = self.server.state
        data = json.loads(body) if body else {}
        route = "/".join(parts)
        with state.lock:
            if method == "GET" and route == "requests":
                self._send_json(200, list(state.requests))
                return
            if method == "DELETE" and route == "requests":
                state.requests.clear()
                self._send_json(200, {"ok": True})
                return
            if method == "GET" and route == "secrets":
                self._send_json(
                    200, {"tokens": list(state.issued), "assertions": list(state.assertions)}
                )
                return
            if method == "GET" and route == "settings":
                self._send_json(200, {"token_lifetime": state.token_lifetime})
                return
            if method == "POST" and route == "settings":
                if "token_lifetime" in data:
                    state.token_lifetime = float(data["token_lifetime"])
                self._send_json(200, {"token_lifetime": state.token_lifetime})
                return
            if method == "POST" and route == "fail":
                seconds = data.get("seconds")
                failure = Failure(
                    count=data.get("count"),
                    until=time.monotonic() + float(seconds) if seconds is not None else None,
                    status=int(data.get("status", 503)),
                    aadsts=data.get("aadsts"),
                    delay=float(data.get("delay", 0)),
                    retry_after=data.get("retry_after"),
                    tenant=data.get("tenant"),
                    error=data.get("error"),
                    description=data.get("description"),
                )
                if failure.count is None and failure.until is None:
                    failure.count = 1
                state.failures.append(failure)
                self._send_json(200, {"ok": True})
                return
            if method == "DELETE" and route == "fail":
                state.failures.clear()
                self._send_json(200, {"ok": True})
                return
            if method == "POST" and route == "client":
                found = state.tenant(data["tenant"])
                if found is None:
                    self._send_json(404, {"error": "unknown tenant"})
                    return
                clients = found[1]["clients"]
                client = clients.setdefault(data["client_id"], {})
                client.update(data.get("set", {}))
                for key in data.get("unset", []):
                    client.pop(key, None)
                self._send_json(200, {"ok": True})
                return
        self._send_json(404, {"error": "unknown control"})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: State, context: ssl.SSLContext) -> None:
        super().__init__(address, Handler)
        self.state = state
        self.context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs in the request's own thread, so a slow client blocks nobody.
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_RDWR)


def load_state(config_path: Path) -> tuple[State, ssl.SSLContext, str, int]:
    config = json.loads(config_path.read_text())
    key = serialization.load_pem_private_key(
        Path(config["signing_key_file"]).read_bytes(), password=None
    )
    state = State(
        config=config,
        signing_key=key,
        kid=config["kid"],
        token_lifetime=float(config.get("token_lifetime", 3600)),
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config["cert_file"], config["key_file"])
    return state, context, config.get("host", "127.0.0.1"), int(config.get("port", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    state, context, host, port = load_state(args.config)
    server = Server((host, port), state, context)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.replace(args.port_file)
    stop.wait()
    server.shutdown()
    thread.join()
    server.server_close()


if __name__ == "__main__":
    main()
