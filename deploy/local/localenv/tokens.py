"""Entra-shaped app-only access tokens (v1 tokens, as Exchange Online receives them)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

EXCHANGE_RESOURCE = "https://outlook.office365.com"
IMAP_ROLE = "IMAP.AccessAsApp"
# Dovecot checks exp/nbf without leeway; backdating iat/nbf keeps clock skew out of tests.
BACKDATE_SECONDS = 5


def issuer_for(tenant_id: str) -> str:
    return f"https://sts.windows.net/{tenant_id}/"


def mint_access_token(
    *,
    key: rsa.RSAPrivateKey,
    kid: str,
    tenant_id: str,
    client_id: str,
    lifetime: float = 3600,
    audience: str = EXCHANGE_RESOURCE,
    roles: list[str] | None = None,
    issuer: str | None = None,
    now: float | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Return a signed JWT shaped like Entra's app-only token for Exchange Online."""
    issued = int(now if now is not None else time.time())
    object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sp:{tenant_id}:{client_id}"))
    claims: dict[str, Any] = {
        "aud": audience,
        "iss": issuer or issuer_for(tenant_id),
        "iat": issued - BACKDATE_SECONDS,
        "nbf": issued - BACKDATE_SECONDS,
        "exp": issued + int(lifetime),
        "appid": client_id,
        "appidacr": "1",
        "idp": issuer_for(tenant_id),
        "oid": object_id,
        "sub": object_id,
        "tid": tenant_id,
        "roles": [IMAP_ROLE] if roles is None else roles,
        "ver": "1.0",
        "uti": uuid.uuid4().hex[:22],
    }
    if extra:
        claims.update(extra)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, "typ": "JWT"})
