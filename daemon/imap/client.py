"""The IMAP adapter: imapclient over implicit TLS, SASL XOAUTH2, folders opened read-only.

Every library error is translated in one place, ``_translate`` (as httpx's
``map_httpcore_exceptions``), into ``daemon.errors``: socket and TLS failures, imaplib's
``abort``/``error``, imapclient's ``LoginError``, and the responses Exchange Online is known
for (throttling, ``AccessTokenExpired``, ``User is authenticated but not connected``). An
access token exists only inside ``login_xoauth2``; exception text that contains it (or the
XOAUTH2 string) is redacted before anything is chained to it.

FETCH, SEARCH and EXAMINE go through the imaplib connection imapclient wraps: imapclient's
``fetch`` turns the message set back into ints (so no ``a:b`` ranges, no ``1:*``) and its
``select_folder`` hides the NO that means "no such folder".
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import imaplib
import io
import re
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from imapclient import IMAPClient, imap_utf7
from imapclient.datetime_util import format_criteria_date
from imapclient.exceptions import LoginError

from daemon.auth.hints import mailbox_grant_hint, token_object_id
from daemon.errors import (
    AuthFailed,
    CapabilityMissing,
    FolderMissing,
    ImapConnectionError,
    ImapError,
    ImapProtocolError,
    ImapTimeout,
    MailboxAccessDenied,
    Throttled,
    TlsVerifyError,
    TokenExpiredOnServer,
)
from daemon.imap import fetch_reader
from daemon.imap.fetch_parser import general_entries, parse_records
from daemon.imap.parse import FETCH_ITEMS
from daemon.ports import IdleStart
from daemon.sync.algorithm import ServerFolder
from daemon.sync.model import Flags, MessageRecord, normalize_flags

FLAG_ITEMS: Final = "(UID FLAGS)"
LOGOUT_TIMEOUT: Final = 2.0
REEXAMINE_AFTER: Final = 300.0
"""A NOOP stands in for EXAMINE of the same folder for at most this long (see ``examine``)."""
_CHANGES: Final = ("EXISTS", "EXPUNGE", "FETCH", "RECENT", "UIDVALIDITY", "VANISHED")
KEEPALIVE: Final = {"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 15, "TCP_KEEPCNT": 4}
"""First probe after 60 s of silence, then every 15 s: a dead peer is found within 2 minutes."""
_MAX_DETAIL: Final = 300  # server text in messages: enough to diagnose, never message data
_THROTTLED: Final = re.compile(r"Suggested Backoff Time:\s*(\d+)\s*milli", re.IGNORECASE)
_TRANSLATED: Final = (imaplib.IMAP4.error, OSError, EOFError, ValueError)
_LOST: Final = (imaplib.IMAP4.abort, OSError, EOFError)
_CONNECT_HINT: Final = "check imap.host and imap.port, and that the server is reachable"


def uid_set(uids: Iterable[int]) -> str:
    """A compact IMAP UID set: ``[1, 2, 3, 7, 9, 10]`` -> ``"1:3,7,9:10"``."""
    ordered = sorted(set(uids))
    if not ordered or ordered[0] < 1:
        raise ValueError("a UID set needs at least one UID, each at least 1")
    parts: list[str] = []
    start = previous = ordered[0]
    for uid in ordered[1:]:
        if uid != previous + 1:
            parts.append(f"{start}:{previous}" if previous != start else str(start))
            start = uid
        previous = uid
    parts.append(f"{start}:{previous}" if previous != start else str(start))
    return ",".join(parts)


class ImapMailbox:
    """One IMAP session on one mailbox; not thread-safe.

    Implements ``daemon.ports.Session``: every
    method raises only ``daemon.errors.ImapError`` subclasses, except ``logout``.
    """

    def __init__(self, client: IMAPClient, *, timeout: float) -> None:
        """Wrap a connected client; use ``connect`` or ``open_mailbox`` instead."""
        self._client = client
        self._imap: imaplib.IMAP4 = client._imap
        self._timeout = timeout
        self._closed = False
        self._completed = 0
        self._idling = False
        self._selected: tuple[str, ServerFolder, float] | None = None
        """The examined folder, what EXAMINE said, and when (monotonic)."""
        self._exists_at_examine: int | None = None
        self._user: str | None = None
        """The mailbox logged in as, for the hint of a refused mailbox."""
        self._object_id: str | None = None
        """The token's ``oid`` (the service principal), for the same hint."""
        with self._guard("connect"):
            self._capabilities = _capability_names(client.capabilities())

    @classmethod
    def connect(
        cls, host: str, port: int, ssl_context: ssl.SSLContext, timeout: float
    ) -> ImapMailbox:
        """Connect with implicit TLS (certificate and host name verified), read the greeting."""
        if ssl_context.verify_mode != ssl.CERT_REQUIRED or not ssl_context.check_hostname:
            raise ValueError("the IMAP TLS context must verify the certificate and host name")
        with _mapped("connect"):
            client = IMAPClient(host, port=port, ssl=True, ssl_context=ssl_context, timeout=timeout)
        try:
            with _mapped("connect"):
                # Small writes (AUTHENTICATE sends its response and CRLF separately) must not
                # wait for delayed ACKs: about 40 ms per exchange otherwise.
                client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _keepalive(client.socket())
            return cls(client, timeout=timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise

    # -- session ---------------------------------------------------------------------------
    def login_xoauth2(self, user: str, token: str) -> None:
        """Authenticate with SASL XOAUTH2, re-read CAPABILITY (it changes after login), and
        send one more command so that a mailbox the app may not open fails here.

        Exchange Online accepts AUTHENTICATE for a mailbox without the app's FullAccess grant
        and refuses only the next command (``BAD User is authenticated but not connected.``,
        then ``* BYE``; team notes, "Exchange Online IMAP behaviour"). ENABLE, where the server
        has it, is that command; elsewhere (Exchange has no ENABLE) NAMESPACE, or ``LIST ""
        ""`` on a server without NAMESPACE: both are cheap and change nothing.
        """
        auth = f"user={user}\x01auth=Bearer {token}\x01\x01"
        secrets = (token, auth, base64.b64encode(auth.encode()).decode("ascii"))
        self._user, self._object_id = user, token_object_id(token)
        with self._guard("login", secrets=secrets):
            self._client.oauth2_login(user, token)
        with self._guard("login"):
            self._capabilities = _capability_names(self._client.capabilities())
            if {"CONDSTORE", "ENABLE"} <= self._capabilities:
                # Without it Dovecot leaves HIGHESTMODSEQ out of EXAMINE.
                self._client.enable("CONDSTORE")
            elif "NAMESPACE" in self._capabilities:
                _checked(*self._imap.namespace())
            else:
                _checked(*self._imap.list('""', '""'))

    @property
    def capabilities(self) -> frozenset[str]:
        """Upper-case capability names (re-read after login)."""
        return self._capabilities

    @property
    def condstore(self) -> bool:
        """Whether the server advertises CONDSTORE (Dovecot does, Exchange Online does not)."""
        return "CONDSTORE" in self._capabilities

    def noop(self) -> None:
        """Send NOOP (keeps the session alive; the server may report changes or say BYE)."""
        with self._guard("noop"):
            self._client.noop()

    @property
    def commands_completed(self) -> int:
        """Commands that got their tagged answer on this session so far."""
        return self._completed

    def has_unread_input(self) -> bool:
        """Whether the server sent something since the last answer (BYE, EOF, an update).

        Looks without reading: data already decrypted in the TLS layer, or a readable socket.
        A session that sat idle and has nothing waiting is still open as far as we can tell
        without a round trip.
        """
        if self._closed:
            return True
        sock = self._client.socket()
        try:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return True
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True  # closed under us
        return bool(readable)

    def logout(self) -> None:
        """Log out and close the connection. Never raises; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client.socket().settimeout(min(self._timeout, LOGOUT_TIMEOUT))
            if self._idling:
                self._idling = False
                self._client.idle_done()
            self._client.logout()
        except Exception:  # noqa: BLE001 - a session that ends badly is still ended
            with contextlib.suppress(Exception):
                self._client.shutdown()

    # -- IDLE (RFC 2177) -------------------------------------------------------------------
    @property
    def idling(self) -> bool:
        return self._idling

    def socket(self) -> socket.socket:
        sock: socket.socket = self._client.socket()
        return sock

    def start_idle(self, folder: str) -> IdleStart:
        """Start IDLE on ``folder`` (examined first unless it is the examined one).

        What the server sent together with ``+ idling`` already sits in the client's buffers,
        where a wait on the socket would never see it: when anything is there, the IDLE ends
        again at once and the answer is ``changed`` (the caller polls).
        """
        if "IDLE" not in self._capabilities:
            return "unsupported"
        if self._selected is None or self._selected[0] != folder:
            self.examine(folder)
        with self._guard("idle", folder=folder):
            self._client.idle()
        self._idling = True
        if self._buffered_input():
            self.end_idle()
            self._selected = None
            return "changed"
        return "idling"

    def idle_news(self) -> bool:
        """The socket of this session in IDLE became readable: read it without blocking.

        True when the server reported a change, said BYE, or closed the connection (the
        caller polls); False for a keepalive (Dovecot's ``* OK Still here``): IDLE goes on.
        """
        try:
            responses = self._client.idle_check(timeout=0)
        except Exception:  # noqa: BLE001 - a broken session is news: the poll replaces it
            return True
        if not responses:
            return True  # readable but no line: EOF (or a line cut short)
        if any(_is_change(response) for response in responses):
            self._selected = None  # read outside imaplib's untagged responses
            return True
        return False

    def _buffered_input(self) -> bool:
        """Whether a reply waits in the TLS layer or imaplib's buffer (no blocking read)."""
        sock = self._client.socket()
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        sock.setblocking(False)
        try:
            # A buffered reader returns what it holds without touching the socket; when it
            # holds nothing, its one read of the non-blocking socket finds data or fails.
            reader: io.BufferedReader = self._imap.file  # type: ignore[assignment]
            return bool(reader.peek(1))
        except (OSError, ValueError):
            return False
        finally:
            sock.settimeout(self._timeout)

    def end_idle(self) -> None:
        """DONE, and read until IDLE's tagged answer; news makes the next EXAMINE a real one."""
        if not self._idling:
            return
        self._idling = False
        with self._guard("idle"):
            _, responses = self._client.idle_done()
        if any(_is_change(response) for response in responses):
            self._selected = None

    # -- folders ---------------------------------------------------------------------------
    def list_folders(self) -> list[str]:
        """Selectable folder names (decoded from modified UTF-7), in server order."""
        with self._guard("list"):
            entries = self._client.list_folders()
        names: list[str] = []
        for flags, _delimiter, name in entries:
            lowered = {_text(flag).lower() for flag in flags}
            if "\\noselect" in lowered or "\\nonexistent" in lowered:
                continue
            names.append(_text(name))
        return names

    def examine(self, folder: str) -> ServerFolder:
        """EXAMINE ``folder`` (read-only: never changes ``\\Seen``). FolderMissing on NO.

        ``highest_modseq`` is None unless the server has CONDSTORE (enabled at login).

        When ``folder`` is still the examined folder of this session (a persistent session
        polling a one-folder mailbox), a NOOP stands in for the EXAMINE: the server reports
        every change to the selected folder as untagged EXISTS, EXPUNGE or FETCH (RFC 3501
        6.1.2, "NOOP ... as a periodic poll for new messages"), so if none came since the last
        EXAMINE the folder is as it was. A real EXAMINE runs at least every
        ``REEXAMINE_AFTER`` seconds regardless. NOOP costs about a fifth of a re-EXAMINE on
        both sides (measured against Dovecot: 0.39 ms vs 2.0 ms).
        """
        selected = self._selected
        if (
            selected is not None
            and selected[0] == folder
            and time.monotonic() - selected[2] < REEXAMINE_AFTER
        ):
            with self._guard("noop", folder=folder):
                self._imap.noop()
            untagged = self._imap.untagged_responses
            if not any(key in untagged for key in _CHANGES):
                untagged.clear()  # nothing about the folder: do not let it pile up
                return selected[1]
        self._selected = None
        with self._guard("examine", folder=folder):
            typ, data = self._imap.select(_quote_folder(folder), True)
            if typ != "OK":
                detail = _detail(_response_text(data))
                raise _by_text(detail, "examine") or FolderMissing(
                    f"cannot open folder {folder!r}: {detail}", folder=folder
                )
            untagged = self._imap.untagged_responses
            server = ServerFolder(
                uidvalidity=_number(untagged, "UIDVALIDITY"),
                uidnext=_optional_number(untagged, "UIDNEXT"),
                highest_modseq=_optional_number(untagged, "HIGHESTMODSEQ"),
                exists=_number(untagged, "EXISTS"),
            )
        # From here on, any of these in the untagged responses is news about the folder; the
        # rest (FLAGS, PERMANENTFLAGS...) is not needed and costs memory in an idle session.
        untagged.clear()
        self._exists_at_examine = server.exists
        self._selected = (folder, server, time.monotonic())
        return server

    # -- messages --------------------------------------------------------------------------
    def uids_from(self, uid: int) -> list[int]:
        """UIDs >= ``uid`` in the examined folder, ascending.

        ``UID SEARCH UID n:*`` also returns the highest UID when ``n`` is above it (``*`` is
        always in the range), so the result is filtered.
        """
        return self._search_from(uid)

    def uids_since(self, uid: int, since: dt.date) -> list[int]:
        """UIDs >= ``uid`` of messages received (INTERNALDATE) on or after ``since``."""
        return self._search_from(uid, "SINCE", format_criteria_date(since).decode("ascii"))

    def fetch_records(self, uids: Sequence[int]) -> list[MessageRecord]:
        """Metadata of ``uids`` in one UID FETCH, ascending; expunged UIDs are left out.

        The caller keeps batches to a few hundred UIDs: Exchange rejects long command lines.
        """
        if not uids:
            return []
        wanted = set(uids)
        with self._guard("fetch"):
            response = fetch_reader.uid_fetch(self._imap, f"{uid_set(wanted)} {FETCH_ITEMS}")
        return parse_records(response, wanted)

    def fetch_all_flags(self) -> dict[int, Flags]:
        """Flags of every message of the examined folder, by UID (``UID FETCH 1:*``)."""
        if self._exists() == 0:
            return {}  # no FETCH of 1:* in an empty folder: not every server accepts it
        response = self._uid_fetch("1:*", FLAG_ITEMS, op="fetch flags")
        return {uid: normalize_flags(data.get(b"FLAGS", ())) for uid, data in response.items()}

    def fetch_flags_changed_since(self, modseq: int) -> dict[int, Flags]:
        """Flags of the messages changed after ``modseq`` (CONDSTORE ``CHANGEDSINCE``)."""
        if not self.condstore:
            raise CapabilityMissing(
                "the server does not advertise CONDSTORE",
                hint="scan all flags (fetch_all_flags) on servers without CONDSTORE",
            )
        if self._exists() == 0:
            return {}
        response = self._uid_fetch(
            "1:*", FLAG_ITEMS, op="fetch changed flags", modifiers=f"(CHANGEDSINCE {int(modseq)})"
        )
        return {uid: normalize_flags(data.get(b"FLAGS", ())) for uid, data in response.items()}

    # -- internals -------------------------------------------------------------------------
    def _uid_fetch(
        self, uids: str, items: str, *, op: str, modifiers: str | None = None
    ) -> dict[int, dict[bytes, Any]]:
        """UID FETCH; the data of each message that came with its UID, by UID."""
        args = (uids, items) if modifiers is None else (uids, items, modifiers)
        with self._guard(op):
            typ, data = self._imap.uid("FETCH", *args)
            if typ != "OK":
                raise imaplib.IMAP4.error(f"UID FETCH returned {typ}: {_response_text(data)}")
            return general_entries(data)

    def _search_from(self, uid: int, *criteria: str) -> list[int]:
        low = max(int(uid), 1)
        with self._guard("search"):
            typ, data = self._imap.uid("SEARCH", "UID", f"{low}:*", *criteria)
            if typ != "OK":
                raise imaplib.IMAP4.error(f"UID SEARCH returned {typ}: {_response_text(data)}")
            found = [int(word) for word in _response_text(data).split()]
        return sorted({u for u in found if u >= low})

    def _exists(self) -> int | None:
        """The message count as last reported (EXAMINE, then EXISTS updates)."""
        values = self._imap.untagged_responses.get("EXISTS")
        if not values:
            return self._exists_at_examine
        last = values[-1]
        try:
            return int(last) if isinstance(last, bytes) else None
        except ValueError:
            return None

    def _farewell(self) -> str:
        """What the server said with BYE, if it did (imaplib keeps it, then reports EOF)."""
        return _response_text(self._imap.untagged_responses.get("BYE"))

    @contextlib.contextmanager
    def _guard(
        self, op: str, *, folder: str | None = None, secrets: Sequence[str] = ()
    ) -> Iterator[None]:
        try:
            with _mapped(op, folder=folder, secrets=secrets, farewell=self._farewell):
                yield
        except MailboxAccessDenied as exc:
            if self._user is not None:  # the fix with this mailbox and principal filled in
                exc.hint = mailbox_grant_hint(self._user, self._object_id)
            raise
        self._completed += 1


_IDLE_NEWS: Final = frozenset({b"EXISTS", b"EXPUNGE", b"FETCH", b"RECENT", b"VANISHED", b"BYE"})


def _is_change(response: object) -> bool:
    """An untagged response of IDLE that says the folder changed (or the session ends)."""
    words = response if isinstance(response, tuple) else (response,)
    return any(isinstance(word, bytes) and word.upper() in _IDLE_NEWS for word in words)


def _keepalive(sock: socket.socket) -> None:
    """TCP keepalive, so that a connection the network dropped is noticed while it sits idle."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in KEEPALIVE.items():
        option = getattr(socket, name, None)
        if option is not None:  # Linux names; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def open_mailbox(
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    timeout: float,
    user: str,
    token: str,
) -> ImapMailbox:
    """Connect and log in; the connection is closed again if the login fails."""
    mailbox = ImapMailbox.connect(host, port, ssl_context, timeout)
    try:
        mailbox.login_xoauth2(user, token)
    except BaseException:
        mailbox.logout()
        raise
    return mailbox


# -- error translation ---------------------------------------------------------------------
@contextlib.contextmanager
def _mapped(
    op: str,
    *,
    folder: str | None = None,
    secrets: Sequence[str] = (),
    farewell: Callable[[], str] | None = None,
) -> Iterator[None]:
    """Translate what the block raises into ``daemon.errors``, secrets redacted."""
    try:
        yield
    except ImapError:
        raise
    except _TRANSLATED as exc:
        _redact_chain(exc, secrets)
        said = farewell() if farewell is not None else ""
        raise _translate(exc, op=op, folder=folder, farewell=said) from exc


def _translate(exc: BaseException, *, op: str, folder: str | None, farewell: str) -> ImapError:
    """The one place where library errors become ``daemon.errors``."""
    where = f"{op} of {folder!r}" if folder is not None else op
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TlsVerifyError(f"TLS certificate verification failed: {exc.verify_message}")
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return ImapTimeout(f"IMAP {where} timed out")
    detail = _detail(str(exc) or type(exc).__name__)
    if farewell:
        detail = f"{detail} (server said BYE {_detail(farewell)})"
    by_text = _by_text(detail, where)
    if by_text is not None:
        return by_text
    lost = isinstance(exc, _LOST) or (
        isinstance(exc, LoginError) and isinstance(exc.__context__, _LOST)
    )
    if lost:
        hint = _CONNECT_HINT if op == "connect" else None
        return ImapConnectionError(f"IMAP connection failed during {where}: {detail}", hint=hint)
    if isinstance(exc, LoginError):
        return AuthFailed(f"XOAUTH2 login rejected: {detail}")
    return ImapProtocolError(f"IMAP {where} failed: {detail}")


def _by_text(detail: str, where: str) -> ImapError | None:
    """The responses that mean the same on any command (Exchange Online's wording)."""
    lowered = detail.lower()
    throttle = _THROTTLED.search(detail)
    if throttle or "request is throttled" in lowered:
        retry_after = int(throttle.group(1)) / 1000 if throttle else None
        return Throttled(f"IMAP {where} throttled: {detail}", retry_after=retry_after)
    if "accesstokenexpired" in lowered:
        return TokenExpiredOnServer(f"the server ended the session ({where}): token expired")
    if "authenticated but not connected" in lowered:
        return MailboxAccessDenied(f"IMAP {where}: token accepted, mailbox refused: {detail}")
    if "server unavailable" in lowered or "[unavailable]" in lowered:
        return ImapConnectionError(f"IMAP server unavailable ({where}): {detail}")
    return None


def _redact_chain(exc: BaseException, secrets: Sequence[str]) -> None:
    """Remove every secret from the messages of ``exc`` and the exceptions behind it."""
    wanted = [s for s in secrets if s]
    seen: set[int] = set()
    current: BaseException | None = exc
    while wanted and current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(_scrub(arg, wanted) for arg in current.args)
        current = current.__cause__ or current.__context__


def _scrub(value: object, secrets: Sequence[str]) -> object:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "[redacted]")
    elif isinstance(value, bytes):
        for secret in secrets:
            value = value.replace(secret.encode(), b"[redacted]")
    elif isinstance(value, tuple | list):
        return type(value)(_scrub(item, secrets) for item in value)
    return value


# -- small helpers -------------------------------------------------------------------------
def _checked(typ: str, data: Sequence[Any]) -> None:
    """Raise for a NO that means the same on any command (a BAD raises in imaplib already)."""
    if typ != "OK":
        detail = _detail(_response_text(data))
        error = _by_text(detail, "login")
        if error is not None:
            raise error


def _quote_folder(folder: str) -> str:
    """The folder as an IMAP quoted string of its modified UTF-7 name (always ASCII)."""
    encoded = str(imap_utf7.encode(folder).decode("ascii"))
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _capability_names(raw: Iterable[bytes | str]) -> frozenset[str]:
    return _shared_capabilities(tuple(raw))


@functools.lru_cache(maxsize=64)
def _shared_capabilities(raw: tuple[bytes | str, ...]) -> frozenset[str]:
    # Every session of a server reports the same list: one shared set instead of a copy per
    # session (about 4 KB each, times 10,000 open sessions).
    return frozenset(_text(item).upper() for item in raw)


def _number(untagged: dict[str, list[Any]], key: str) -> int:
    value = _optional_number(untagged, key)
    if value is None:
        raise ImapProtocolError(f"EXAMINE response lacks {key}")
    return value


def _optional_number(untagged: dict[str, list[Any]], key: str) -> int | None:
    values = untagged.get(key)
    if not values or values[-1] is None:
        return None
    try:
        return int(_text(values[-1]).split()[0])
    except (ValueError, IndexError):
        raise ImapProtocolError(f"EXAMINE response has a malformed {key}") from None


def _response_text(data: Sequence[Any] | None) -> str:
    return " ".join(_text(item) for item in data or () if isinstance(item, bytes | str))


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _detail(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"
