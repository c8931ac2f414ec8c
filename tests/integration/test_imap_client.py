"""The IMAP adapter against the real local Dovecot, a relay that breaks connections, and a
scripted server that answers the way Exchange Online is known to."""

from __future__ import annotations

import contextlib
import datetime as dt
import select
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.errors import (
    AuthFailed,
    CapabilityMissing,
    FolderMissing,
    ImapConnectionError,
    ImapError,
    ImapTimeout,
    MailboxAccessDenied,
    PermanentError,
    Throttled,
    TlsVerifyError,
    TokenExpiredOnServer,
    TransientError,
)
from daemon.imap.client import ImapMailbox, open_mailbox, uid_set
from daemon.sync.model import MessageRecord
from daemon.tls import make_ssl_context
from localenv.env import EnvInfo, LocalEnv
from localenv.imap import FixtureImap
from localenv.seed import ANY_TEXT, MB, Expected, OneOf, hostile_messages, realistic_messages

BATCH = 100
Login = Callable[..., ImapMailbox]
OpenFixture = Callable[[str], FixtureImap]


@pytest.fixture
def login(local_env: LocalEnv, env_info: EnvInfo) -> Iterator[Login]:
    """Returns a function that logs into a mailbox with XOAUTH2; every session ends after."""
    opened: list[ImapMailbox] = []

    def open_(
        mailbox: str, *, host: str | None = None, port: int | None = None, timeout: float = 10
    ) -> ImapMailbox:
        session = open_mailbox(
            host=host or env_info.imap_host,
            port=port or env_info.imap_port,
            ssl_context=make_ssl_context(env_info.ca_file),
            timeout=timeout,
            user=mailbox,
            token=local_env.mint_token("contoso"),
        )
        opened.append(session)
        return session

    yield open_
    for session in opened:
        session.logout()


def seed(fixture_imap: OpenFixture, mailbox: str, count: int, folder: str = "INBOX") -> list[int]:
    return fixture_imap(mailbox).append(folder, realistic_messages(count, max_size=MB))


# -- records ---------------------------------------------------------------------------------
def mismatches(label: str, record: MessageRecord, expected: Expected) -> list[str]:
    got = {
        "message_id": record.message_id,
        "subject": record.subject,
        "from_address": record.from_address,
        "to_addresses": list(record.to_addresses),
        "cc_addresses": list(record.cc_addresses),
        "in_reply_to": record.in_reply_to,
        "references": record.references,
        "sent_at": record.sent_at,
        "received_at": record.received_at,
        "size_bytes": record.size_bytes,
        "flags": list(record.flags),
    }
    problems = []
    for name, value in got.items():
        want = getattr(expected, name)
        if want is ANY_TEXT:
            ok = value is None or isinstance(value, str)
        elif isinstance(want, OneOf):
            ok = want.matches(value)
        else:
            ok = value == want  # datetimes compare as instants
        if isinstance(value, dt.datetime) and value.utcoffset() != dt.timedelta(0):
            ok = False
        if not ok:
            problems.append(f"{label}.{name}: got {value!r:.120} want {want!r:.120}")
    return problems


def test_fetched_records_match_the_expected_rows(
    login: Login, fixture_imap: OpenFixture, new_mailbox: Callable[..., str]
) -> None:
    mailbox = new_mailbox()
    messages = [
        *realistic_messages(300, seed=7, big_every=60, max_size=3 * MB),
        *hostile_messages(),
    ]
    uids = fixture_imap(mailbox).append("INBOX", messages)
    session = login(mailbox)
    status = session.examine("INBOX")
    assert status.exists == len(messages)
    found = session.uids_from(1)
    assert found == uids

    records: list[MessageRecord] = []
    for start in range(0, len(found), BATCH):
        batch = found[start : start + BATCH]
        fetched = session.fetch_records(batch)
        assert [r.uid for r in fetched] == batch
        records += fetched

    problems: list[str] = []
    for record, message in zip(records, messages, strict=True):
        problems += mismatches(message.label, record, message.expected)
    assert problems == []


def test_examine_and_fetch_leave_seen_unset(
    login: Login, fixture_imap: OpenFixture, new_mailbox: Callable[..., str]
) -> None:
    mailbox = new_mailbox()
    uids = seed(fixture_imap, mailbox, 10)
    fixture = fixture_imap(mailbox)
    fixture.client.select_folder("INBOX")
    fixture.client.remove_flags(uids, ["\\Seen"])
    session = login(mailbox)
    session.examine("INBOX")
    session.fetch_records(uids)
    assert all("\\Seen" not in flags for flags in session.fetch_all_flags().values())
    fixture.client.select_folder("INBOX", readonly=True)
    seen = [uid for uid, flags in fixture.client.get_flags(uids).items() if b"\\Seen" in flags]
    assert seen == []


def test_examine_reports_uidvalidity_uidnext_modseq_and_count(
    login: Login, fixture_imap: OpenFixture, new_mailbox: Callable[..., str]
) -> None:
    mailbox = new_mailbox()
    uids = seed(fixture_imap, mailbox, 5)
    session = login(mailbox)
    status = session.examine("INBOX")
    assert status.uidvalidity == fixture_imap(mailbox).uidvalidity("INBOX")
    assert (status.uidnext, status.exists) == (max(uids) + 1, 5)
    assert isinstance(status.highest_modseq, int)
    assert session.condstore


def test_uids_from_filters_the_highest_uid_the_server_adds(
    login: Login, fixture_imap: OpenFixture, new_mailbox: Callable[..., str]
) -> None:
    mailbox = new_mailbox()
    uids = seed(fixture_imap, mailbox, 3)
    session = login(mailbox)
    session.examine("INBOX")
    assert session.uids_from(uids[1]) == uids[1:]
    assert session.uids_from(max(uids) + 1) == []
    assert session.uids_from(10_000) == []


def test_uids_since_filters_by_internaldate(
    login: Login, fixture_imap: OpenFixture, new_mailbox: Callable[..., str]
) -> None:
    mailbox = new_mailbox()
    messages = list(realistic_messages(20, max_size=MB))
    uids = fixture_imap(mailbox).append("INBOX", messages)
    cutoff = sorted(m.internaldate for m in messages)[10].date()
    # SEARCH SINCE compares dates in the server's zone; stay a day clear of the boundary.
    recent = [u for u, m in zip(uids, messages, strict=True) if m.internaldate.date() > cutoff]
    old = [u for u, m in zip(uids, messages, strict=True) if m.internaldate.date() < cutoff]
    session = login(mailbox)
    session.examine("INBOX")
    found = session.uids_since(1, cutoff)
    assert set(recent) <= set(found)
    assert not set(old) & set(found)


def test_non_ascii_folder_is_listed_decoded_and_opens(
    login: Login, fixture_imap: OpenFixture, new_mailbox: Callable[..., str]
) -> None:
    mailbox = new_mailbox()
    uids = seed(fixture_imap, mailbox, 2, folder="Entwürfe/Ärger")
    session = login(mailbox)
    folders = session.list_folders()
    assert "Entwürfe/Ärger" in folders
    assert "Entwürfe" not in folders  # a \Noselect parent
    assert session.examine("Entwürfe/Ärger").exists == 2
    assert [r.uid for r in session.fetch_records(uids)] == uids


def test_missing_folder_raises_folder_missing_and_the_session_goes_on(
    login: Login, fixture_imap: OpenFixture, new_mailbox: Callable[..., str]
) -> None:
    mailbox = new_mailbox()
    seed(fixture_imap, mailbox, 1)
    session = login(mailbox)
    with pytest.raises(FolderMissing) as caught:
        session.examine("Gone Ä")
    assert caught.value.folder == "Gone Ä"
    assert isinstance(caught.value, PermanentError)
    assert caught.value.reason == "protocol"
    assert session.examine("INBOX").exists == 1


def test_condstore_changed_since_returns_only_changed_flags(
    login: Login, fixture_imap: OpenFixture, new_mailbox: Callable[..., str]
) -> None:
    mailbox = new_mailbox()
    uids = seed(fixture_imap, mailbox, 6)
    session = login(mailbox)
    before = session.examine("INBOX").highest_modseq
    assert before is not None
    assert session.fetch_flags_changed_since(before) == {}
    fixture_imap(mailbox).set_flags("INBOX", [uids[1], uids[4]], ["\\Flagged", "Work"])
    changed = session.fetch_flags_changed_since(before)
    assert changed == {uids[1]: ("Work", "\\Flagged"), uids[4]: ("Work", "\\Flagged")}


def test_flag_scan_of_an_empty_folder_is_empty(
    login: Login, fixture_imap: OpenFixture, new_mailbox: Callable[..., str]
) -> None:
    mailbox = new_mailbox()
    fixture_imap(mailbox).ensure_folder("Empty")
    session = login(mailbox)
    assert session.examine("Empty").exists == 0
    assert session.uids_from(1) == []
    assert session.fetch_all_flags() == {}


# -- failures against the real server --------------------------------------------------------
def test_untrusted_certificate_is_a_tls_verify_error(env_info: EnvInfo) -> None:
    with pytest.raises(TlsVerifyError) as caught:
        ImapMailbox.connect(env_info.imap_host, env_info.imap_port, make_ssl_context(), 5)
    assert isinstance(caught.value, PermanentError)
    assert caught.value.reason == "connect"
    assert caught.value.hint is not None
    assert "tls.ca_file" in caught.value.hint


def test_context_without_verification_is_refused(env_info: EnvInfo) -> None:
    context = make_ssl_context(env_info.ca_file)
    context.check_hostname = False
    with pytest.raises(ValueError, match="verify"):
        ImapMailbox.connect(env_info.imap_host, env_info.imap_port, context, 5)


def test_closed_port_is_a_connection_error(env_info: EnvInfo) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ImapConnectionError) as caught:
        ImapMailbox.connect("127.0.0.1", port, make_ssl_context(env_info.ca_file), 5)
    assert isinstance(caught.value, TransientError)
    assert caught.value.reason == "connect"


def every_text_of(exc: BaseException) -> str:
    """str, repr and formatted traceback of the exception and all behind it."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def test_expired_token_is_auth_failed_and_the_token_appears_nowhere(
    local_env: LocalEnv, env_info: EnvInfo, new_mailbox: Callable[..., str]
) -> None:
    token = local_env.mint_token("contoso", lifetime=-60)
    session = ImapMailbox.connect(
        env_info.imap_host, env_info.imap_port, make_ssl_context(env_info.ca_file), 10
    )
    try:
        with pytest.raises(AuthFailed) as caught:
            session.login_xoauth2(new_mailbox(), token)
    finally:
        session.logout()
    assert caught.value.reason == "auth"
    assert caught.value.hint is not None
    assert "IMAP.AccessAsApp" in caught.value.hint
    text = every_text_of(caught.value)
    assert "AUTHENTICATIONFAILED" in text  # the chain is there, only without the secret
    for secret in (token, token[-40:], "auth=Bearer"):
        assert secret not in text


# -- a relay that cuts or stalls the connection ---------------------------------------------
RELAY_HOLDS_FOR = 120.0  # seconds a relayed connection lasts at most, stalled or not


class Relay:
    """A TCP relay to the server (TLS passes through) that can cut or stall the downstream."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(10)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._down = 0
        self._cut_at: int | None = None
        self._stalled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def cut_after(self, more_bytes: int) -> None:
        with self._lock:
            self._cut_at = self._down + more_bytes

    def stall(self) -> None:
        with self._lock:
            self._stalled = True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._listener.close()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self._listener.accept()
            with client, socket.create_connection(self._target, timeout=10) as upstream:
                self._pump(client, upstream)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        deadline = time.monotonic() + RELAY_HOLDS_FOR
        while not self._stop.is_set() and time.monotonic() < deadline:
            ready, _, _ = select.select([client, upstream], [], [], 0.05)
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                if sock is client:
                    upstream.sendall(data)
                    continue
                with self._lock:
                    if self._stalled:
                        continue
                    if self._cut_at is not None and self._down + len(data) >= self._cut_at:
                        client.sendall(data[: self._cut_at - self._down])
                        return
                    self._down += len(data)
                client.sendall(data)


@pytest.fixture
def relay(env_info: EnvInfo) -> Iterator[Relay]:
    proxy = Relay((env_info.imap_host, env_info.imap_port))
    yield proxy
    proxy.close()


def test_connection_dropped_mid_fetch_is_a_connection_error(
    login: Login, relay: Relay, fixture_imap: OpenFixture, new_mailbox: Callable[..., str]
) -> None:
    mailbox = new_mailbox()
    uids = seed(fixture_imap, mailbox, 100)
    session = login(mailbox, port=relay.port, timeout=5)
    session.examine("INBOX")
    relay.cut_after(20_000)
    started = time.monotonic()
    with pytest.raises(ImapConnectionError):
        session.fetch_records(uids)
    # A deadline, not a duration: far below the relay's 120 s, far above any loaded machine's
    # delay; the point is that the cut ends the fetch instead of leaving it waiting.
    assert time.monotonic() - started < RELAY_HOLDS_FOR / 2
    session.logout()
    session.logout()  # never raises, also when repeated on a dead connection


def test_stalled_server_is_a_timeout(
    login: Login, relay: Relay, fixture_imap: OpenFixture, new_mailbox: Callable[..., str]
) -> None:
    mailbox = new_mailbox()
    uids = seed(fixture_imap, mailbox, 5)
    session = login(mailbox, port=relay.port, timeout=1)
    session.examine("INBOX")
    relay.stall()
    started = time.monotonic()
    with pytest.raises(ImapTimeout) as caught:
        session.fetch_records(uids)
    elapsed = time.monotonic() - started
    # Not before the 1 s timeout (a load only makes it later), and long before the stalled
    # relay would have let go: a generous deadline, not a measured duration.
    assert elapsed >= 0.9
    assert elapsed < RELAY_HOLDS_FOR / 2
    assert caught.value.reason == "timeout"


# -- a scripted server for what Exchange Online says and Dovecot does not -------------------
EXCHANGE_CAPABILITY = (
    b"* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT "
    b"CHILDREN IDLE NAMESPACE LITERAL+\r\n"
)
Script = dict[bytes, bytes]
"""Replies by command (upper case); ``{tag}`` is replaced; an empty reply closes the link."""


class ScriptedServer:
    """Serves one TLS connection: greeting, CAPABILITY, XOAUTH2, then the script."""

    def __init__(self, tls_dir: Path, script: Script, greeting: bytes) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(tls_dir / "server.crt", tls_dir / "server.key")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(10)
        self.port: int = self._listener.getsockname()[1]
        self._script = {b"CAPABILITY": EXCHANGE_CAPABILITY + b"{tag} OK CAPABILITY completed.\r\n"}
        self._script |= {
            b"LOGOUT": b"* BYE Microsoft Exchange Server IMAP4 server signing off.\r\n"
        }
        self._script |= script
        self._greeting = greeting
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._listener.close()
        self._thread.join(10)

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            raw, _ = self._listener.accept()
            raw.settimeout(10)
            with self._context.wrap_socket(raw, server_side=True) as conn:
                conn.sendall(self._greeting)
                if b"BYE" in self._greeting:
                    return
                lines = conn.makefile("rb")
                while line := lines.readline():
                    tag, _, rest = line.strip().partition(b" ")
                    command = rest.split(b" ", 1)[0].upper()
                    if command == b"UID":
                        command = rest.split(b" ", 2)[1].upper()
                    if command == b"AUTHENTICATE":
                        conn.sendall(b"+ \r\n")
                        lines.readline()  # the XOAUTH2 response
                    reply = self._script.get(command, b"{tag} OK %s completed.\r\n" % command)
                    if not reply:
                        return
                    conn.sendall(reply.replace(b"{tag}", tag))
                    if b"* BYE" in reply:
                        return


GREETING = b"* OK The Microsoft Exchange IMAP4 service is ready.\r\n"


@pytest.fixture
def exchange(env_info: EnvInfo) -> Iterator[Callable[..., ImapMailbox]]:
    """Returns a function connecting to a new scripted server; all closed after the test."""
    servers: list[ScriptedServer] = []
    sessions: list[ImapMailbox] = []

    def connect(script: Script, greeting: bytes = GREETING) -> ImapMailbox:
        server = ScriptedServer(Path(env_info.dir) / "tls", script, greeting)
        servers.append(server)
        context = make_ssl_context(env_info.ca_file)
        sessions.append(ImapMailbox.connect("127.0.0.1", server.port, context, 5))
        return sessions[-1]

    yield connect
    for session in sessions:
        session.logout()
    for server in servers:
        server.close()


EMPTY_EXAMINE = (
    b"* 0 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Seen)\r\n"
    b"* OK [UIDVALIDITY 14] UIDVALIDITY value\r\n"
    b"* OK [UIDNEXT 1] The next unique identifier value\r\n"
    b"{tag} OK [READ-ONLY] EXAMINE completed.\r\n"
)


Exchange = Callable[..., ImapMailbox]


def test_exchange_refused_token_is_auth_failed_without_the_token(exchange: Exchange) -> None:
    session = exchange({b"AUTHENTICATE": b"{tag} NO AUTHENTICATE failed.\r\n"})
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl"
    with pytest.raises(AuthFailed) as caught:
        session.login_xoauth2("support@contoso.test", token)
    assert not isinstance(caught.value, MailboxAccessDenied)
    assert "AUTHENTICATE failed" in str(caught.value)
    assert token not in every_text_of(caught.value)


@pytest.mark.parametrize(
    ("script", "call", "expected"),
    [
        (
            {
                b"LIST": b"{tag} BAD User is authenticated but not connected.\r\n"
                b"* BYE Connection closed. 14\r\n"
            },
            lambda s: s.list_folders(),
            (MailboxAccessDenied, "auth"),
        ),
        (
            {
                b"EXAMINE": b"{tag} BAD Request is throttled. Suggested Backoff Time: "
                b"4500 milliseconds\r\n"
            },
            lambda s: s.examine("INBOX"),
            (Throttled, "throttled"),
        ),
        (
            {b"NOOP": b"* BYE Session invalidated - AccessTokenExpired\r\n"},
            lambda s: s.noop(),
            (TokenExpiredOnServer, "token"),
        ),
        (
            {b"EXAMINE": EMPTY_EXAMINE, b"SEARCH": b""},  # the server drops the connection
            lambda s: (s.examine("INBOX"), s.uids_from(1)),
            (ImapConnectionError, "connect"),
        ),
        (
            {b"EXAMINE": b"{tag} NO [NONEXISTENT] The folder does not exist.\r\n"},
            lambda s: s.examine("Archive"),
            (FolderMissing, "protocol"),
        ),
        (
            {b"EXAMINE": b"{tag} NO Server Unavailable. 15\r\n"},
            lambda s: s.examine("INBOX"),
            (ImapConnectionError, "connect"),
        ),
    ],
    ids=["not-connected", "throttled", "token-expired", "dropped", "no-folder", "unavailable"],
)
def test_exchange_responses_become_their_errors(
    exchange: Exchange,
    script: Script,
    call: Callable[[ImapMailbox], object],
    expected: tuple[type[ImapError], str],
) -> None:
    session = exchange(script)
    session.login_xoauth2("support@contoso.test", "token-value")
    error, reason = expected
    with pytest.raises(error) as caught:
        call(session)
    assert type(caught.value) is error
    assert caught.value.reason == reason
    if isinstance(caught.value, Throttled):
        assert caught.value.retry_after == 4.5
    if isinstance(caught.value, MailboxAccessDenied):
        assert caught.value.hint is not None
        assert "Add-MailboxPermission" in caught.value.hint


def test_server_unavailable_greeting_is_a_transient_connection_error(exchange: Exchange) -> None:
    with pytest.raises(ImapConnectionError, match="Server Unavailable"):
        exchange({}, greeting=b"* BYE Server Unavailable. 15\r\n")


def test_without_condstore_flags_need_a_full_scan_and_empty_folders_send_no_fetch(
    exchange: Exchange,
) -> None:
    # Not every server accepts FETCH 1:* in an empty folder: this one fails any FETCH.
    script = {b"EXAMINE": EMPTY_EXAMINE, b"FETCH": b"{tag} BAD Command Argument Error. 11\r\n"}
    session = exchange(script)
    session.login_xoauth2("support@contoso.test", "token-value")
    assert not session.condstore
    status = session.examine("INBOX")
    assert (status.uidvalidity, status.uidnext, status.highest_modseq) == (14, 1, None)
    assert session.fetch_all_flags() == {}
    with pytest.raises(CapabilityMissing):
        session.fetch_flags_changed_since(1)


def test_uid_set_is_compact() -> None:
    assert uid_set([9, 1, 2, 3, 7, 10, 3]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"
    with pytest.raises(ValueError, match="UID"):
        uid_set([])
