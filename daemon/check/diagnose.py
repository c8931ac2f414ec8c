"""The pure part of ``mailsyncd check``: what a token, a refusal or an error most likely means.

Nothing here opens a socket or reads a file: each function turns what a step saw (a token's
claims, an exception, a folder list) into a :class:`Finding` whose fix names the portal step,
``az`` command or Exchange Online PowerShell command with the configuration's values filled in.
A token's claims are read without verifying its signature: the IMAP server verifies it; the
check only wants to know what the identity platform put into it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import jwt

from daemon.auth.hints import FEDERATED_MISMATCH_CODES, hint_for
from daemon.check.model import Finding
from daemon.config import Tenant
from daemon.errors import (
    AuthFailed,
    ImapConnectionError,
    ImapError,
    ImapTimeout,
    MailboxAccessDenied,
    MailsyncError,
    Throttled,
    TokenExpiredOnServer,
    TokenRejected,
    TokenUnavailable,
)

IMAP_ROLE: Final = "IMAP.AccessAsApp"
EXCHANGE_RESOURCE: Final = "https://outlook.office365.com"
EXCHANGE_SCOPE: Final = f"{EXCHANGE_RESOURCE}/.default"
# Both name the Office 365 Exchange Online resource: Microsoft Learn, "Authenticate an IMAP,
# POP or SMTP connection using OAuth" (learn.microsoft.com/exchange/client-developer/
# legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth) uses
# https://outlook.office.com/... scopes in its examples against outlook.office365.com and
# https://outlook.office365.com/.default for client credentials.
EXCHANGE_RESOURCES: Final = frozenset({EXCHANGE_RESOURCE, "https://outlook.office.com"})
EXCHANGE_APP_ID: Final = "00000002-0000-0ff1-ce00-000000000000"  # Office 365 Exchange Online
EXCHANGE_IMAP_HOST: Final = "outlook.office365.com"
OID_PLACEHOLDER: Final = "<object id of the Enterprise application>"

_AADSTS_NAMES: Final = {
    7000215: "invalid client secret",
    7000222: "client secret expired",
    700016: "application not found in the tenant",
    90002: "tenant not found",
    700027: "certificate assertion rejected",
    50012: "certificate assertion rejected",
    700024: "client assertion outside its validity window",
    70021: "no matching federated identity credential",
    70011: "invalid scope",
    1002012: "invalid scope",
    500011: "resource principal not found in the tenant",
    7000112: "application disabled",
    53003: "blocked by Conditional Access",
    90055: "tenant throttled",
    7000229: "no service principal in the tenant",
    700211: "federated credential issuer does not match",
    700212: "federated credential audience does not match",
    700213: "federated credential subject does not match",
}


@dataclass(frozen=True, slots=True)
class Claims:
    """The claims of an access token that tell whether IMAP will accept it."""

    audiences: tuple[str, ...]
    roles: tuple[str, ...]
    expires_at: float | None
    appid: str | None
    oid: str | None
    tid: str | None


def decode_claims(token: str) -> Claims | None:
    """Read a JWT's claims WITHOUT verifying it; None if it is not a readable JWT."""
    try:
        raw = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    aud = raw.get("aud")
    audiences = (aud,) if isinstance(aud, str) else tuple(str(a) for a in aud or ())
    roles = raw.get("roles")
    exp = raw.get("exp")
    return Claims(
        audiences=audiences,
        roles=tuple(str(r) for r in roles) if isinstance(roles, list) else (),
        expires_at=float(exp) if isinstance(exp, int | float) else None,
        appid=_text(raw.get("appid") or raw.get("azp")),
        oid=_text(raw.get("oid")),
        tid=_text(raw.get("tid")),
    )


def _text(value: object) -> str | None:
    return str(value) if value else None


def scope_resource(scope: str) -> str:
    """``https://outlook.office365.com/.default`` -> ``https://outlook.office365.com``."""
    return scope.removesuffix("/.default").rstrip("/")


def consent_fix(tenant: Tenant) -> str:
    """How to add the IMAP.AccessAsApp application permission and grant admin consent."""
    role_query = f"appRoles[?value=='{IMAP_ROLE}'].id"
    return (
        f"add the application permission {IMAP_ROLE} and grant admin consent: Entra admin "
        f"center > App registrations > {tenant.client_id} > API permissions > Add a permission"
        " > APIs my organization uses > Office 365 Exchange Online > Application permissions >"
        f" {IMAP_ROLE}, then 'Grant admin consent' (a delegated IMAP.AccessAsUser.All does not"
        " count). With the az CLI:\n"
        f"az ad app permission add --id {tenant.client_id} --api {EXCHANGE_APP_ID}"
        f' --api-permissions "$(az ad sp show --id {EXCHANGE_APP_ID}'
        f' --query "{role_query}" -o tsv)=Role"\n'
        f"az ad app permission admin-consent --id {tenant.client_id}"
    )


def check_audience(claims: Claims, tenant: Tenant, key: str) -> Finding:
    """The token must be for the IMAP server's resource (``aud``)."""
    resource = scope_resource(tenant.scope)
    accepted = {resource, f"{resource}/"}
    if resource in EXCHANGE_RESOURCES:
        accepted.add(EXCHANGE_APP_ID)
    shown = ", ".join(claims.audiences) or "none"
    if not accepted & set(claims.audiences):
        if resource != EXCHANGE_RESOURCE:
            cause = f"{key}.scope asks for a token for {resource}, which IMAP does not accept"
        else:
            cause = (
                f"the identity platform issued a token for {shown} although the scope asks for"
                f" {resource}"
            )
        if tenant.scope == EXCHANGE_SCOPE:
            fix = (
                f"{key}.scope must be {EXCHANGE_SCOPE}, and it is: so the token came from the "
                f"wrong place; make {key}.authority_host ({tenant.authority_host}) Entra ID of "
                "the tenant's cloud (https://login.microsoftonline.com for the commercial "
                "cloud) and remove any proxy that rewrites token requests"
            )
        else:
            fix = f"set {key}.scope to {EXCHANGE_SCOPE} (now {tenant.scope})"
        return Finding.failed(
            f"token audience is {shown}, not {resource}", cause=cause, fix=fix, aud=shown
        )
    if resource not in EXCHANGE_RESOURCES and tenant.imap.host.lower() == EXCHANGE_IMAP_HOST:
        return Finding.failed(
            f"token audience is {shown}",
            cause=f"{EXCHANGE_IMAP_HOST} accepts only tokens for Exchange Online "
            f"({EXCHANGE_RESOURCE})",
            fix=f"set {key}.scope to {EXCHANGE_SCOPE} (now {tenant.scope})",
            aud=shown,
        )
    if resource != EXCHANGE_RESOURCE and tenant.imap.host.lower() == EXCHANGE_IMAP_HOST:
        # Not a failure: nothing Microsoft documents says outlook.office365.com refuses other
        # audiences, and its own examples use https://outlook.office.com scopes against it
        # (see EXCHANGE_RESOURCES). The login step shows whether the server accepts it.
        warning = (
            f"{key}.scope asks for {resource}, not the documented {EXCHANGE_SCOPE}; if "
            f"imap.login fails, set {key}.scope to {EXCHANGE_SCOPE}"
        )
        return Finding.passed(f"audience {shown} (warning: {warning})", aud=shown, warning=warning)
    return Finding.passed(f"audience {shown}", aud=shown)


def check_roles(claims: Claims, tenant: Tenant) -> Finding:
    """The token must carry the application role IMAP.AccessAsApp (``roles``)."""
    shown = ", ".join(claims.roles) or "none"
    if IMAP_ROLE in claims.roles:
        return Finding.passed(f"roles {shown}", roles=shown)
    return Finding.failed(
        f"the token has no {IMAP_ROLE} role (roles: {shown})",
        cause=f"the application permission {IMAP_ROLE} is not granted to application "
        f"{tenant.client_id} in tenant {tenant.tenant_id}, or admin consent is missing",
        fix=consent_fix(tenant),
        roles=shown,
    )


def check_expiry(claims: Claims, now: float) -> Finding:
    """The token must not be expired already (a clock far off makes it look so)."""
    if claims.expires_at is None:
        return Finding.failed(
            "the token has no expiry (exp)",
            cause="the identity platform issued a token without exp; IMAP servers refuse it",
            fix="check tenants[].authority_host: it must be Entra ID (or a compatible platform)",
        )
    at = dt.datetime.fromtimestamp(claims.expires_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    left = claims.expires_at - now
    if left <= 0:
        return Finding.failed(
            f"the token expired at {at}, {-left:.0f} s before it was checked",
            cause="this host's clock is ahead of the identity platform's",
            fix="synchronise the clock (NTP: timedatectl set-ntp true; chronyc tracking)",
            expires_at=at,
        )
    return Finding.passed(f"expires in {left / 60:.0f} min ({at})", expires_at=at)


def exchange_fix(tenant: Tenant, mailbox: str, oid: str | None, *, registered: bool) -> str:
    """The Exchange Online PowerShell that lets the application open ``mailbox`` over IMAP."""
    object_id = oid or OID_PLACEHOLDER
    # An administrator signs in interactively with -UserPrincipalName; -Organization is for
    # app-only connections (Microsoft Learn, "Connect to Exchange Online PowerShell").
    connect = (
        f"in Exchange Online PowerShell, signed in to tenant {tenant.tenant_id} as an Exchange "
        "administrator (Connect-ExchangeOnline -UserPrincipalName followed by your account):"
    )
    lines = [connect]
    if not registered:
        lines.append(
            f"New-ServicePrincipal -AppId {tenant.client_id} -ObjectId {object_id}"
            "   # once per tenant; the object id of the Enterprise application"
            + (" (the token's oid)" if oid else "")
            + ", not the App registration's"
        )
    lines += [
        f"Add-MailboxPermission -Identity {mailbox} -User {object_id} -AccessRights FullAccess",
        f"Set-CASMailbox -Identity {mailbox} -ImapEnabled $true",
        "then wait a few minutes (Exchange caches permissions) and run check again",
    ]
    if oid is None:
        lines.append(f"(the object id: az ad sp show --id {tenant.client_id} --query id -o tsv)")
    return "\n".join(lines)


def diagnose_login(
    error: ImapError,
    *,
    tenant: Tenant,
    mailbox: str,
    claims: Claims | None,
    claim_failures: Sequence[Finding],
    logged_in_before: str | None,
) -> Finding:
    """Why the XOAUTH2 login of ``mailbox`` failed, judged by the token, not the server's text.

    ``logged_in_before`` is another mailbox of the tenant that logged in with the same token:
    then the service principal is registered and only this mailbox's grant can be missing.
    """
    oid = claims.oid if claims is not None else None
    detail = str(error)
    if isinstance(error, MailboxAccessDenied):
        return Finding.failed(
            detail,
            cause=f"the server accepted the token but application {tenant.client_id} has no "
            f"rights on {mailbox} (or too many sessions are open on it)",
            fix=exchange_fix(tenant, mailbox, oid, registered=True),
        )
    if isinstance(error, AuthFailed):
        if claim_failures:
            problems = "; ".join(f.detail for f in claim_failures)
            return Finding.failed(
                detail,
                cause=f"the token itself is wrong for IMAP: {problems}",
                fix="\n".join(f.fix for f in claim_failures if f.fix),
            )
        if logged_in_before is not None:
            cause = (
                f"the token is right (audience, {IMAP_ROLE}) and {logged_in_before} logged in "
                f"with it, so the service principal is registered: {mailbox} lacks the "
                "FullAccess grant for the application, or IMAP is disabled on it"
            )
        else:
            cause = (
                f"the token is right (audience, {IMAP_ROLE}), so Exchange refused the "
                "application itself: its service principal is not registered in Exchange Online"
                " (or was registered with the App registration's object id instead of the "
                f"Enterprise application's), it has no FullAccess on {mailbox}, or IMAP is "
                "disabled on the mailbox"
            )
        return Finding.failed(
            detail,
            cause=cause,
            fix=exchange_fix(tenant, mailbox, oid, registered=logged_in_before is not None),
        )
    return diagnose_session_error(error, tenant=tenant, what="login")


def diagnose_session_error(error: ImapError, *, tenant: Tenant, what: str) -> Finding:
    """An IMAP failure that is not about permissions: expiry, throttling, network."""
    detail = f"IMAP {what} failed: {error}"
    if isinstance(error, MailboxAccessDenied):
        return Finding.failed(
            detail,
            cause="the server accepted the token but refused the mailbox: the application has "
            "no FullAccess on it (or too many sessions are open on it)",
            fix=error.hint or "grant the application FullAccess on the mailbox",
        )
    if isinstance(error, TokenExpiredOnServer):
        return Finding.failed(
            detail,
            cause="the server says the token has expired although it was just issued",
            fix="synchronise this host's clock (NTP) and run check again",
        )
    if isinstance(error, Throttled):
        wait = f"{error.retry_after:.0f} s" if error.retry_after else "a minute"
        return Finding.failed(
            detail,
            cause="Exchange Online is throttling this application or mailbox",
            fix=f"wait {wait} and run check again; if the daemon runs at the same time, lower "
            "limits.max_concurrent_polls_per_tenant",
        )
    if isinstance(error, ImapTimeout | ImapConnectionError):
        return Finding.failed(
            detail,
            cause="the connection failed or the server stopped answering",
            fix=error.hint
            or f"check the network path to {tenant.imap.host}:{tenant.imap.port} and run check "
            "again; 'Server Unavailable' from Exchange is transient",
        )
    return Finding.failed(
        detail,
        cause="the server answered with an error mailsyncd does not know",
        fix=error.hint or "run check again; if it persists, read the server's answer above",
    )


def diagnose_token_error(
    error: MailsyncError,
    *,
    tenant: Tenant,
    key: str,
    ca_file: str | None = None,
    secret_is_guid: bool = False,
) -> Finding:
    """Why no token came back: the AADSTS code, with the hint and an ``az`` command."""
    hint = error.hint
    if not isinstance(error, TokenRejected) and hint and "TLS" in hint:
        trusted = f"tls.ca_file ({ca_file})" if ca_file else "the system CAs"
        return Finding.failed(
            f"no token: {error}",
            cause=f"the certificate of {tenant.authority_host} did not verify against {trusted}",
            fix=f"set tls.ca_file to a PEM bundle holding the CA that issued the certificate of "
            f"{tenant.authority_host} (behind a TLS-inspecting proxy: the proxy's CA); the "
            "system CAs stay trusted as well",
        )
    if isinstance(error, TokenUnavailable):
        return Finding.failed(
            f"no token: {error}",
            cause="the identity platform could not be reached or did not answer properly",
            fix=hint
            or f"check that this host reaches {tenant.authority_host} over HTTPS (DNS, proxy, "
            "firewall) and run check again; HTTP 5xx and 429 answers are transient",
        )
    if not isinstance(error, TokenRejected) or error.code is None:
        return Finding.failed(
            f"no token: {error}",
            cause="the token request was refused, or could not be made, without an AADSTS code",
            fix=hint
            or f"check {key}.credential (the credential step) and {key}.authority_host, "
            "then run check again",
        )
    code = error.code
    # A code we have no name for: the platform's own words (error_description).
    described = (error.description or "").removeprefix(f"AADSTS{code}:").strip()
    name = _AADSTS_NAMES.get(code) or described or "see the AADSTS reference"
    credential = tenant.credential
    if credential.client_secret_env is not None:
        source = f"the variable {credential.client_secret_env} ({key}.credential.client_secret_env)"
    else:
        source = f"{credential.client_secret_file} ({key}.credential.client_secret_file)"
    # The adapter's hint has the thumbprint it sent; hint_for is the fallback.
    hint = error.hint or hint_for(
        code, secret_source=source, client_id=tenant.client_id, tenant_id=tenant.tenant_id
    )
    if hint is None or hint == error.description:
        # No advice of ours: the cause quotes the platform; point at its page for the code.
        hint = (
            "do what the identity platform's description says; Microsoft's page for the code: "
            f"https://login.microsoftonline.com/error?code={code}"
        )
    cause = f"the identity platform refused the token request: AADSTS{code} ({name})"
    if code == 7000215 and secret_is_guid:
        cause += "; the configured secret has the form of a GUID: that is the secret's ID"
    extra = _az_for(code, tenant, source)
    fix = "\n".join(part for part in (hint, extra) if part) or "see the AADSTS code"
    return Finding.failed(f"AADSTS{code}: {name}", cause=cause, fix=fix, aadsts=code)


def _az_for(code: int, tenant: Tenant, source: str) -> str | None:
    client = tenant.client_id
    if code in (7000215, 7000222):
        return (
            f"a new secret with the az CLI: az ad app credential reset --id {client} --append "
            f"--display-name mailsyncd --years 1 --query password -o tsv; write it to {source}"
        )
    if code in (700027, 50012):
        certificate = tenant.credential.certificate
        path = certificate.certificate_file if certificate is not None else "<certificate.pem>"
        return (
            f"upload it with the az CLI: az ad app credential reset --id {client} "
            f"--cert @{path} --append; the thumbprints Entra ID has: az ad app credential list "
            f"--id {client} --cert --query '[].customKeyIdentifier'"
        )
    if code == 700016:
        return (
            f"look it up: az ad sp show --id {client} (signed in to tenant {tenant.tenant_id}: "
            f"az login --tenant {tenant.tenant_id})"
        )
    if code == 90002:
        return (
            f"look it up: curl -s {tenant.authority}/v2.0/.well-known/openid-configuration "
            "(an answer with an issuer means the tenant exists in this cloud)"
        )
    if code == 7000229:
        return (
            f"check it: az ad sp show --id {client} (signed in to tenant {tenant.tenant_id}); "
            "a multi-tenant app gets its service principal in a customer tenant by admin "
            f"consent: {tenant.authority_host}/{tenant.tenant_id}/adminconsent?client_id={client}"
        )
    if code in FEDERATED_MISMATCH_CODES and tenant.credential.federated_token_file is None:
        return (
            "the federated credentials Entra ID has: "
            f"az ad app federated-credential list --id {client}"
        )
    if code == 70021:
        return (
            "the federated credentials Entra ID has: "
            f"az ad app federated-credential list --id {client}"
        )
    return None


def folder_missing(folder: str, mailbox: str, available: Sequence[str], key: str) -> Finding:
    """EXAMINE said NO: list what the mailbox has, so the name can be corrected."""
    listed = ", ".join(available[:30]) + (", ..." if len(available) > 30 else "")
    return Finding.failed(
        f"folder {folder!r} cannot be opened",
        cause=f"{mailbox} has no folder {folder!r} (names are exact, e.g. 'Sent Items'; "
        "subfolders are written with the server's separator)",
        fix=f"correct {key}; the folders the server lists: {listed or 'none'}",
    )
