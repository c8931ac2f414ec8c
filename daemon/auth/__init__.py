"""App-only tokens: the token value type, the MSAL adapter and the background refresher.

The ports (``TokenProvider``, ``TokenSource``) are in ``daemon.ports``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
