"""What an operator should do about a refused token request or a refused mailbox.

A refusal is recognised by the OAuth ``error`` field of the answer (RFC 6749 section 5.2),
not by a list of AADSTS codes: Entra ID adds codes over time, and every code comes with one of
a few ``error`` values. AADSTS codes only choose the hint; a code without one gets Entra's own
``error_description``. Facts: the team's Exchange Online notes and Microsoft Learn, "Microsoft
Entra authentication and authorization error codes"
(https://learn.microsoft.com/entra/identity-platform/reference-error-codes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

import jwt

REFUSAL_ERRORS: Final = frozenset(
    {
        # RFC 6749 5.2: an administrator must change the app, its credential or its consent.
        "invalid_client",
        "unauthorized_client",
        "invalid_request",
        "invalid_scope",
        "invalid_grant",
        "unsupported_grant_type",
        # Entra ID's own: unknown tenant, resource not in the tenant, Conditional Access.
        "invalid_tenant",
        "invalid_resource",
        "access_denied",
    }
)
"""OAuth ``error`` values that no retry fixes: the daemon parks the tenant's mailboxes."""

TRANSIENT_ERRORS: Final = frozenset({"temporarily_unavailable", "server_error"})
"""OAuth ``error`` values that mean "try again later" (RFC 6749 5.2; Entra's 90055)."""

TRANSIENT_CODES: Final = frozenset({90055})
"""AADSTS codes that are transient whatever ``error`` says (tenant throttled)."""

FEDERATED_MISMATCH_CODES: Final = frozenset({70021, 700211, 700212, 700213})
"""No federated credential matches the presented assertion (any / issuer / audience /
subject): Microsoft Learn, "Workload identity federation: troubleshooting"."""

PERMANENT_CODES: Final = frozenset(
    {
        7000215,
        7000222,
        7000229,
        700016,
        90002,
        700027,
        50012,
        700024,
        70021,
        700211,
        700212,
        700213,
        70011,
        1002012,
        500011,
        7000112,
        53003,
        7000216,
        70003,
    }
)
"""Codes known to need a change; used where an answer has no ``error`` field (OIDC discovery)."""


def is_refusal(error: str | None, code: int | None, status: int | None) -> bool:
    """Whether a token error answer is a refusal that needs an administrator (not transient).

    HTTP 429 and 5xx are transient whatever the body says; so are ``temporarily_unavailable``
    and ``server_error``. Any other OAuth error is a refusal; an answer without one is judged
    by its code (the known permanent ones) and otherwise retried.
    """
    if status is not None and (status == 429 or status >= 500):
        return False
    if code in TRANSIENT_CODES or error in TRANSIENT_ERRORS:
        return False
    if error:
        return True
    return code in PERMANENT_CODES


_TRACE = re.compile(r"\s+(?:Trace ID|Correlation ID|Timestamp):.*\Z", re.DOTALL)
_MAX_DESCRIPTION = 400


def entra_description(description: object) -> str | None:
    """Entra's ``error_description`` on one line, without its trace and correlation ids.

    The ids change with every answer; without them the text is the same for every retry, so
    the refusal is logged once.
    """
    if not isinstance(description, str) or not description.strip():
        return None
    text = _TRACE.sub("", " ".join(description.split()))
    if len(text) > _MAX_DESCRIPTION:
        text = text[: _MAX_DESCRIPTION - 1] + "…"
    return text


def assertion_claims(assertion: str) -> Mapping[str, str]:
    """``iss``, ``sub`` and ``aud`` of a federated assertion (read, NOT verified).

    These name the workload, not a secret; the assertion itself is never shown.
    """
    try:
        raw = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    aud = raw.get("aud")
    audience = aud if isinstance(aud, str) else ", ".join(str(a) for a in aud or ())
    found = {"iss": raw.get("iss"), "sub": raw.get("sub"), "aud": audience}
    return {key: str(value) for key, value in found.items() if value}


def token_object_id(token: str) -> str | None:
    """The ``oid`` claim of an access token (read, NOT verified): the service principal's
    object id, which Exchange's ``Add-MailboxPermission -User`` wants."""
    try:
        raw = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    oid = raw.get("oid")
    return str(oid) if oid else None


def mailbox_grant_hint(mailbox: str, object_id: str | None) -> str:
    """The fix for "User is authenticated but not connected": the FullAccess grant."""
    user = object_id or "<object id of the Enterprise application>"
    return (
        "the token was accepted but the application has no rights on this mailbox: in "
        f"Exchange Online PowerShell, Add-MailboxPermission -Identity {mailbox} -User {user} "
        "-AccessRights FullAccess (-User is the service principal's object id from Enterprise "
        "applications), then wait a few minutes for Exchange to apply it; the same answer also "
        "comes when too many sessions are open on the mailbox"
    )


def federated_hint(client_id: str, claims: Mapping[str, str]) -> str:
    """The fix for a federated credential that matches no record of the app."""
    shown = ", ".join(f"{key} {claims[key]}" for key in ("iss", "sub", "aud") if key in claims)
    presented = f"the projected token presents {shown}" if shown else "the projected token"
    return (
        f"no federated credential of application {client_id} matches {presented}: compare with "
        f"az ad app federated-credential list --id {client_id} (issuer must be the cluster's "
        "OIDC issuer URL, subject system:serviceaccount:<namespace>:<service account>, audience "
        "api://AzureADTokenExchange; all compared case-sensitively)"
    )


_HINTS = {
    7000215: "the client secret is wrong: use the secret's Value (shown once when it was "
    "created), not its Secret ID, in {secret_source}",
    7000222: "the client secret has expired: add a new one under App registrations > "
    "Certificates & secrets and write it to {secret_source}",
    700016: "application {client_id} is not known in tenant {tenant_id}: check client_id and "
    "tenant_id, and grant admin consent in this tenant",
    90002: "tenant {tenant_id} was not found: check tenant_id (directory GUID or verified "
    "domain) and authority_host (sovereign clouds have their own)",
    700027: "the certificate assertion was rejected: upload the certificate with thumbprint "
    "{thumbprint} to the app registration (Certificates & secrets), or send only the leaf",
    50012: "the certificate assertion was rejected: upload the certificate with thumbprint "
    "{thumbprint} to the app registration, or send only the leaf certificate",
    700024: "the client assertion is outside its validity window: check this host's clock (NTP)",
    70021: "no federated credential matches the presented token: check the federated "
    "credential's issuer and subject (system:serviceaccount:<namespace>:<name>)",
    70011: "invalid scope: it must be <resource>/.default, e.g. "
    "https://outlook.office365.com/.default",
    1002012: "invalid scope: it must be <resource>/.default, e.g. "
    "https://outlook.office365.com/.default",
    500011: "the resource of the scope is not in the tenant: use "
    "https://outlook.office365.com/.default",
    7000112: "the application is disabled in this tenant: enable it under Enterprise "
    "applications > Properties",
    53003: "blocked by Conditional Access: exclude this workload identity from the policy",
    7000229: "application {client_id} has no service principal in tenant {tenant_id}: grant "
    "admin consent in this tenant (Entra admin center > Enterprise applications, or the "
    "admin-consent URL), or create it: az ad sp create --id {client_id}",
    90055: "Entra ID is throttling the tenant; requests are retried with backoff",
}


def hint_for(code: int | None, **values: str) -> str | None:
    """The hint for an AADSTS code, with the configuration's values filled in."""
    if code is None or code not in _HINTS:
        return None
    template = _HINTS[code]
    for key in ("secret_source", "client_id", "tenant_id", "thumbprint"):
        values.setdefault(key, f"<{key}>")
    return template.format(**values)
