"""The exceptions of mailsyncd: one root, a transient branch and a permanent branch.

The scheduler decides retry and backoff from the branch, never from message text. Every error
carries three things a caller reads as attributes, never with ``getattr``:

- ``reason`` (class attribute, one of :data:`REASONS`): the label of
  ``mailsyncd_poll_failures_total`` and the ``reason`` field of a failure's log line;
- ``hint``: the likely fix where one is known (the class's ``default_hint`` unless the raiser
  gives one), else None;
- ``retry_after``: seconds the other side asked us to wait, if it said.

Adapters translate library errors into this tree in one place each, and messages carry what
happened, never a secret or message data.

    MailsyncError                 reason "other"
    ├── TransientError            retry with backoff; reason "other"
    │   ├── DatabaseError         database unreachable, locked, connection lost; "database"
    │   ├── LeaseLost             another replica holds the mailbox's lease now: the write
    │   │                         was refused (fenced); "database"
    │   ├── TokenUnavailable      the identity platform could not answer now (network, 5xx,
    │   │                         429 with ``retry_after``); "token"
    │   ├── ImapTimeout           an IMAP connect or read timed out; "timeout"
    │   ├── ImapConnectionError   refused, reset, TLS failure, dropped mid-response; "connect"
    │   ├── Throttled             Exchange asked to back off (``retry_after``); "throttled"
    │   ├── TokenExpiredOnServer  the server ended the session: token expired; "token"
    │   └── ImapProtocolError     any other IMAP error or unparseable response; "protocol"
    └── PermanentError            retrying the same thing will fail the same way; "other"
        ├── DatabaseRejectedError the database refused a statement or the schema; "database"
        ├── AlreadyRunning        another mailsyncd run holds this SQLite file; "database"
        ├── UnknownFolder         the store has no folder with the id a call names; "database"
        ├── TokenRejected         the identity platform refused this configuration
        │                         (``code``: the AADSTS number, with its hint); "token"
        ├── SecretReadError       a secret file or variable cannot be read (``key``); "token"
        ├── TlsVerifyError        the server certificate did not verify; "connect"
        ├── AuthFailed            the server rejected the token; "auth"
        │   └── MailboxAccessDenied  token accepted, no rights on the mailbox; "auth"
        ├── FolderMissing         EXAMINE failed: the folder does not exist; "protocol"
        └── CapabilityMissing     the server lacks an extension the call needs; "protocol"

``ImapError`` is mixed into every IMAP class above, so ``except ImapError`` catches whatever an
IMAP session raised, transient or permanent.
"""

from __future__ import annotations

import typing
from typing import ClassVar, Final, Literal

Reason = Literal[
    "token", "auth", "connect", "timeout", "throttled", "protocol", "database", "other"
]
"""The class of a failure: a label value of ``mailsyncd_poll_failures_total`` (SPEC "Metrics")."""

REASONS: Final[tuple[Reason, ...]] = typing.get_args(Reason)
"""Every :data:`Reason`, in the SPEC's order."""


class MailsyncError(Exception):
    """Root of every error mailsyncd raises on purpose."""

    reason: ClassVar[Reason] = "other"
    default_hint: ClassVar[str | None] = None
    """The hint of every instance whose raiser gives none."""

    def __init__(
        self, message: str = "", *, hint: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.hint: str | None = hint if hint is not None else self.default_hint
        """The likely fix, for the log line and ``mailsyncd check``; None when unknown."""
        self.retry_after: float | None = retry_after
        """Seconds the other side asked us to wait before trying again, if it said."""


class TransientError(MailsyncError):
    """A failure that may go away by itself: retry later, with backoff."""


class PermanentError(MailsyncError):
    """A failure that needs a change (configuration, permissions, code) to go away."""


def reason_of(exc: BaseException) -> Reason:
    """The ``reason`` of ``exc``: its class's for a mailsyncd error, else ``"other"``."""
    return exc.reason if isinstance(exc, MailsyncError) else "other"


def error_fields(exc: BaseException) -> dict[str, object]:
    """The log fields of a failure: ``reason``, ``error``, ``error_type``, and ``hint`` if known.

    ``error`` is the message, or the type name for an exception without one; an exception from
    outside the tree (a bug, a library error no adapter translated) has reason ``"other"``.
    """
    fields: dict[str, object] = {
        "reason": reason_of(exc),
        "error": str(exc) or type(exc).__name__,
        "error_type": type(exc).__name__,
    }
    if isinstance(exc, MailsyncError) and exc.hint:
        fields["hint"] = exc.hint
    return fields


# -- database --------------------------------------------------------------------------------


class DatabaseError(TransientError):
    """The database could not be reached or could not complete the transaction right now."""

    reason = "database"


class DatabaseRejectedError(PermanentError):
    """The database refused a statement (constraint, data, schema) or the schema is unknown."""

    reason = "database"


class AlreadyRunning(PermanentError):
    """Another ``mailsyncd run`` holds the SQLite database this one was given."""

    reason = "database"


class LeaseLost(TransientError):
    """The mailbox's lease is no longer this replica's: its write was refused (fenced)."""

    reason = "database"

    def __init__(self, mailbox: str) -> None:
        super().__init__(
            f"the lease of {mailbox} is held by another replica now; nothing was written",
            hint="another replica polls this mailbox now; see mailbox_status.owner",
        )
        self.mailbox = mailbox


class UnknownFolder(PermanentError):
    """A store call named a folder id that has no row (nothing was written)."""

    reason = "database"

    def __init__(self, folder_id: int, *, hint: str | None = None) -> None:
        super().__init__(f"folder {folder_id} does not exist in the database", hint=hint)
        self.folder_id = folder_id


# -- tokens and credentials --------------------------------------------------------------------


class TokenUnavailable(TransientError):
    """No token could be obtained right now; retrying later may succeed."""

    reason = "token"


class TokenRejected(PermanentError):
    """The identity platform rejected the application's configuration."""

    reason = "token"

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        hint: str | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        """The AADSTS error number, when the platform gave one."""
        self.description = description
        """The platform's own ``error_description`` (one line, without trace ids), if any."""


class SecretReadError(PermanentError):
    """A secret file or variable could not be read (its content never appears here).

    Permanent: a token cannot be requested until an operator fixes the file or variable.
    """

    reason = "token"

    def __init__(self, key: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{key}: {message}", hint=hint)
        self.key = key
        """The configuration key that names the secret (``client_secret_file``)."""


# -- IMAP ------------------------------------------------------------------------------------


class ImapError(MailsyncError):
    """An IMAP session failed. Mixed into a transient or permanent class below."""


class ImapTimeout(ImapError, TransientError):
    """Connecting, or waiting for a response, took longer than the configured timeout."""

    reason = "timeout"


class ImapConnectionError(ImapError, TransientError):
    """The connection could not be made or was lost (refused, reset, EOF, TLS failure)."""

    reason = "connect"


class Throttled(ImapError, TransientError):
    """The server asked the client to back off (Exchange: ``Suggested Backoff Time``).

    ``retry_after`` holds the seconds the server suggested waiting, if it said.
    """

    reason = "throttled"


class TokenExpiredOnServer(ImapError, TransientError):
    """The server ended the session because its token expired: log in again, new token."""

    reason = "token"
    default_hint = "re-authenticate long-lived sessions before their token expires"


class ImapProtocolError(ImapError, TransientError):
    """Any other IMAP error: an unexpected BAD/NO, or a response that does not parse."""

    reason = "protocol"


class TlsVerifyError(ImapError, PermanentError):
    """The server certificate did not verify (unknown CA, wrong host name, expired)."""

    reason = "connect"
    default_hint = (
        "the server certificate is not trusted for this host name: set tls.ca_file to the "
        "CA bundle that signed it, or fix the configured IMAP host"
    )


class AuthFailed(ImapError, PermanentError):
    """The server rejected the XOAUTH2 login (``NO AUTHENTICATE failed``)."""

    reason = "auth"
    default_hint = (
        "the token was rejected: check the Exchange service principal (New-ServicePrincipal "
        "with the object id from Enterprise applications), the IMAP.AccessAsApp application "
        "permission with admin consent, the scope https://outlook.office365.com/.default, "
        "and that IMAP is enabled on the mailbox"
    )


class MailboxAccessDenied(AuthFailed):
    """The token is valid but the app has no rights on this mailbox."""

    default_hint = (
        "grant the app access to the mailbox: Add-MailboxPermission -Identity <mailbox> "
        "-User <service principal id> -AccessRights FullAccess"
    )


class FolderMissing(ImapError, PermanentError):
    """EXAMINE failed: the folder does not exist (any more) or cannot be opened."""

    reason = "protocol"

    def __init__(self, message: str, *, folder: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.folder = folder


class CapabilityMissing(ImapError, PermanentError):
    """The call needs an IMAP extension the server does not advertise."""

    reason = "protocol"
