"""The exceptions of mailsyncd: one root, a transient branch and a permanent branch.

The scheduler decides retry and backoff from the branch, never from message text; ``reason``
is the label of ``mailsyncd_poll_failures_total`` (token, auth, connect, timeout, throttled,
protocol, database, other). Adapters translate library errors into this tree in one place
each, and messages carry what happened, never a secret or message data.

    MailsyncError                 reason "other"
    ├── TransientError            retry with backoff; reason "other"
    │   ├── DatabaseError         database unreachable, locked, connection lost; "database"
    │   ├── ImapTimeout           an IMAP connect or read timed out; "timeout"
    │   ├── ImapConnectionError   refused, reset, TLS failure, dropped mid-response; "connect"
    │   ├── Throttled             Exchange asked to back off (``retry_after``); "throttled"
    │   ├── TokenExpiredOnServer  the server ended the session: token expired; "token"
    │   └── ImapProtocolError     any other IMAP error or unparseable response; "protocol"
    └── PermanentError            retrying the same thing will fail the same way; "other"
        ├── DatabaseRejectedError the database refused a statement or the schema; "database"
        ├── TlsVerifyError        the server certificate did not verify; "connect"
        ├── AuthFailed            the server rejected the token; "auth"
        │   └── MailboxAccessDenied  token accepted, no rights on the mailbox; "auth"
        ├── FolderMissing         EXAMINE failed: the folder does not exist; "protocol"
        └── CapabilityMissing     the server lacks an extension the call needs; "protocol"

Every IMAP error (``ImapError``, mixed into the classes above) has ``hint``: the likely fix
where one is known, else None.
"""

from __future__ import annotations


class MailsyncError(Exception):
    """Root of every error mailsyncd raises on purpose."""

    reason: str = "other"


class TransientError(MailsyncError):
    """A failure that may go away by itself: retry later, with backoff."""


class PermanentError(MailsyncError):
    """A failure that needs a change (configuration, permissions, code) to go away."""


class DatabaseError(TransientError):
    """The database could not be reached or could not complete the transaction right now."""

    reason = "database"


class DatabaseRejectedError(PermanentError):
    """The database refused a statement (constraint, data, schema) or the schema is unknown."""

    reason = "database"


# -- IMAP ------------------------------------------------------------------------------------


class ImapError(MailsyncError):
    """An IMAP session failed. Mixed into a transient or permanent class below."""

    default_hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint if hint is not None else self.default_hint


class ImapTimeout(ImapError, TransientError):
    """Connecting, or waiting for a response, took longer than the configured timeout."""

    reason = "timeout"


class ImapConnectionError(ImapError, TransientError):
    """The connection could not be made or was lost (refused, reset, EOF, TLS failure)."""

    reason = "connect"


class Throttled(ImapError, TransientError):
    """The server asked the client to back off (Exchange: ``Suggested Backoff Time``)."""

    reason = "throttled"

    def __init__(
        self, message: str, *, retry_after: float | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after
        """Seconds the server suggested waiting, if it said."""


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
