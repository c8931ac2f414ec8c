"""Token errors, in the project's tree (see ``daemon.errors``).

TransientError
└── TokenUnavailable      the identity platform could not answer now (network, 5xx, 429)
PermanentError
└── TokenRejected         the platform refused this configuration (AADSTS code, hint)
"""

from __future__ import annotations

from daemon.errors import PermanentError, TransientError


class TokenUnavailable(TransientError):
    """No token could be obtained right now; retrying later may succeed."""

    reason = "token"

    def __init__(
        self, message: str, *, hint: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.hint = hint
        self.retry_after = retry_after


class TokenRejected(PermanentError):
    """The identity platform rejected the application's configuration."""

    reason = "token"

    def __init__(self, message: str, *, code: int | None, hint: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint
