"""App-only tokens: the port the rest of the daemon uses, and its MSAL adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A bearer token for one tenant; its value never appears in a repr."""

    value: str = field(repr=False)
    expires_at: float
    """Epoch seconds."""
    obtained_at: float
    """Epoch seconds."""

    def refresh_at(self, fraction: float) -> float:
        """When ``fraction`` of the lifetime has passed (the SPEC refreshes at 2/3)."""
        return self.obtained_at + (self.expires_at - self.obtained_at) * fraction


class TokenProvider(Protocol):
    """Gives the current token of a tenant; raises the token errors of ``daemon.errors``."""

    def token(self, tenant: str) -> AccessToken: ...

    def report_expired(self, tenant: str, token: AccessToken) -> None:
        """The server rejected ``token`` as expired: renew it now."""
