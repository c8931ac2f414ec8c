"""Projected service-account tokens, as the kubelet writes them for workload identity."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import jwt

from localenv import pki
from localenv.env import FEDERATED_AUDIENCE, FEDERATED_ISSUER, FEDERATED_SUBJECT, EnvInfo


def projected_token_file(
    info: EnvInfo,
    directory: Path,
    *,
    subject: str = FEDERATED_SUBJECT,
    issuer: str = FEDERATED_ISSUER,
    lifetime: int = 3600,
) -> Path:
    """A token signed by the local cluster's issuer key, in a new file of ``directory``."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": [FEDERATED_AUDIENCE],
        "iat": now - 5,
        "nbf": now - 5,
        "exp": now + lifetime,
    }
    key = pki.load_key(Path(info.federated_key_file))
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "cluster"})
    return pki.write_private(
        directory / f"azure-identity-token-{uuid.uuid4().hex[:8]}", token.encode()
    )
