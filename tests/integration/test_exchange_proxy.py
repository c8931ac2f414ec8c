"""Exchange mode (``localenv.exchange_proxy``): the real Dovecot behind a proxy that answers
the way Exchange Online does, seen by plain imaplib and imapclient clients."""

from __future__ import annotations

import base64
import contextlib
import imaplib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from imapclient import IMAPClient

from localenv.env import EnvInfo, LocalEnv
from localenv.exchange_proxy import (
    EXPIRED_BYE,
    POST_LOGIN_CAPS,
    PRE_LOGIN_CAPS,
    ExchangeProxy,
    _Conn,
    _Stream,
    token_claims,
)
from localenv.imap import FixtureImap
from localenv.seed import hostile_messages, realistic_messages

Connect = Callable[..., imaplib.IMAP4_SSL]
MakeProxy = Callable[..., ExchangeProxy]
OpenFixture = Callable[[str], FixtureImap]

DEADLINE = 15.0


def wait_for(condition: Callable[[], object], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture
def make_proxy(env_info: EnvInfo) -> Iterator[MakeProxy]:
    proxies: list[ExchangeProxy] = []

    def make(**kwargs: object) -> ExchangeProxy:
        proxy = ExchangeProxy(env_info, **kwargs).start()  # type: ignore[arg-type]
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def proxy(make_proxy: MakeProxy) -> ExchangeProxy:
    return make_proxy()


@pytest.fixture
def connect(env_info: EnvInfo) -> Iterator[Connect]:
    """Returns a function opening an imaplib session (TLS verified); all closed after."""
    opened: list[imaplib.IMAP4_SSL] = []

    def open_(port: int, timeout: float = 10) -> imaplib.IMAP4_SSL:
        context = ssl.create_default_context(cafile=env_info.ca_file)
        imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=timeout)
        opened.append(imap)
        return imap

    yield open_
    for imap in opened:
        with contextlib.suppress(Exception):
            imap.shutdown()


def xoauth2(imap: imaplib.IMAP4, mailbox: str, token: str, *, initial: bool = True) -> str:
    """AUTHENTICATE XOAUTH2, with the response on the command line (SASL-IR) or after ``+``."""
    sasl = f"user={mailbox}\x01auth=Bearer {token}\x01\x01".encode()
    if initial:
        typ, data = imap._simple_command("AUTHENTICATE", "XOAUTH2", base64.b64encode(sasl))
        assert typ == "OK", data
        imap.state = "AUTH"
    else:
        typ, data = imap.authenticate("XOAUTH2", lambda _: sasl)
    return typ


def capabilities(imap: imaplib.IMAP4) -> bytes:
    typ, data = imap.capability()
    assert typ == "OK"
    return data[-1]


SERVER_STREAM = (
    b"* 1 FETCH (UID 7 BODY[HEADER] {31}\r\n* CAPABILITY IMAP4rev1 ENABLE\r\n"
    b" BODY[] {0}\r\n FLAGS ())\r\n"
    b"A1 OK [CAPABILITY IMAP4rev1 CONDSTORE] done\r\n"
)


@pytest.mark.parametrize("chunk", [1, 2, 7, len(SERVER_STREAM)])
def test_stream_splits_lines_and_literals_in_any_chunking(chunk: int) -> None:
    stream, pieces = _Stream(), []
    for i in range(0, len(SERVER_STREAM), chunk):
        pieces += stream.feed(SERVER_STREAM[i : i + chunk])
    assert b"".join(p for p, _ in pieces) == SERVER_STREAM
    lines = [p for p, first in pieces if first]
    assert lines == [
        b"* 1 FETCH (UID 7 BODY[HEADER] {31}\r\n",
        b"A1 OK [CAPABILITY IMAP4rev1 CONDSTORE] done\r\n",
    ]
    assert stream.at_boundary()


def test_made_up_replies_wait_for_a_response_boundary(env_info: EnvInfo) -> None:
    proxy = ExchangeProxy(env_info)  # not started: drives the IMAP layer directly
    a, b = socket.socketpair()
    try:
        conn = _Conn(a, b)
        proxy._from_server(conn, b"* 1 FETCH (BODY[] {10}\r\n01234")
        proxy._reply(conn, b"X1 BAD Command Argument Error. 11\r\n")
        assert bytes(conn.client.out) == b"* 1 FETCH (BODY[] {10}\r\n01234"
        proxy._from_server(conn, b"56789)\r\n* 2 EXISTS\r\n")
        assert bytes(conn.client.out) == (
            b"* 1 FETCH (BODY[] {10}\r\n0123456789)\r\n"
            b"X1 BAD Command Argument Error. 11\r\n* 2 EXISTS\r\n"
        )
        # A literal in a response line that looks like a CAPABILITY response stays untouched.
        proxy._from_server(conn, SERVER_STREAM)
        assert bytes(conn.client.out).endswith(
            b"* CAPABILITY IMAP4rev1 ENABLE\r\n BODY[] {0}\r\n FLAGS ())\r\n"
            b"A1 OK [CAPABILITY " + PRE_LOGIN_CAPS + b"] done\r\n"
        )
    finally:
        a.close()
        b.close()
        proxy.close()


def test_capabilities_are_exchanges_before_and_after_login_and_enable_is_refused(
    local_env: LocalEnv, proxy: ExchangeProxy, connect: Connect, new_mailbox: Callable[..., str]
) -> None:
    direct = connect(local_env.info.imap_port)
    assert b"CONDSTORE" in direct.welcome or b"ENABLE" in direct.welcome

    imap = connect(proxy.port)
    assert imap.welcome.startswith(b"* OK [CAPABILITY " + PRE_LOGIN_CAPS + b"] ")
    assert capabilities(imap) == PRE_LOGIN_CAPS
    xoauth2(imap, new_mailbox(), local_env.mint_token("contoso"), initial=False)
    # Dovecot reports its post-login list with the login; that one is rewritten too.
    assert imap.untagged_responses["CAPABILITY"][-1] == POST_LOGIN_CAPS
    assert capabilities(imap) == POST_LOGIN_CAPS
    for missing in (b"CONDSTORE", b"QRESYNC", b"ENABLE"):
        assert missing not in capabilities(imap).split()

    tag = imap._command("ENABLE", "CONDSTORE")
    assert imap._get_tagged_response(tag) == ("BAD", [b"Command Argument Error. 11"])
    assert imap.noop()[0] == "OK"  # the session goes on
    assert proxy.logins == 1

    with IMAPClient(
        "127.0.0.1",
        port=proxy.port,
        ssl=True,
        ssl_context=ssl.create_default_context(cafile=local_env.info.ca_file),
        timeout=10,
    ) as client:
        assert b"CONDSTORE" not in client.capabilities()
        client.oauth2_login(new_mailbox(), local_env.mint_token("contoso"))
        assert set(client.capabilities()) == set(POST_LOGIN_CAPS.upper().split())
    assert proxy.logins == 2


@pytest.mark.parametrize("idle_command", [False, True], ids=["no-command", "in-IDLE"])
def test_session_is_invalidated_at_token_expiry_while_idle(
    local_env: LocalEnv,
    proxy: ExchangeProxy,
    connect: Connect,
    new_mailbox: Callable[..., str],
    idle_command: bool,
) -> None:
    token = local_env.mint_token("contoso", lifetime=2)
    _, exp = token_claims(base64.b64encode(b"user=x\x01auth=Bearer " + token.encode() + b"\x01"))
    assert exp is not None
    imap = connect(proxy.port)
    xoauth2(imap, new_mailbox(), token)
    imap.select("INBOX")
    if idle_command:
        imap.send(b"I1 IDLE\r\n")
        assert imap.readline().startswith(b"+ ")
    wait_for(lambda: proxy.expired_sessions == 1)
    assert time.time() >= exp
    # What the client reads: exactly Exchange's BYE, then the end of the stream.
    assert imap.readline() == EXPIRED_BYE
    assert imap.readline() == b""
    wait_for(lambda: proxy.open_connections == 0)


def test_command_after_token_expiry_gets_the_bye_instead_of_being_forwarded(
    local_env: LocalEnv,
    make_proxy: MakeProxy,
    connect: Connect,
    new_mailbox: Callable[..., str],
    fixture_imap: OpenFixture,
) -> None:
    proxy = make_proxy(expire_idle=False)  # no timer: the command itself meets the expiry
    mailbox = new_mailbox()
    token = local_env.mint_token("contoso", lifetime=2)
    imap = connect(proxy.port)
    xoauth2(imap, mailbox, token)
    assert imap.noop()[0] == "OK"
    _, exp = token_claims(base64.b64encode(f"user={mailbox}\x01auth=Bearer {token}".encode()))
    assert exp is not None
    wait_for(lambda: time.time() >= exp + 0.05)
    with pytest.raises(imaplib.IMAP4.abort, match="Session invalidated - AccessTokenExpired"):
        imap.create("NotForwarded")
    assert imap.untagged_responses["BYE"] == [b"Session invalidated - AccessTokenExpired"]
    assert proxy.expired_sessions == 1
    assert not fixture_imap(mailbox).client.folder_exists("NotForwarded")


def test_grace_keeps_a_session_open_after_exp(
    local_env: LocalEnv, make_proxy: MakeProxy, connect: Connect, new_mailbox: Callable[..., str]
) -> None:
    proxy = make_proxy(expiry_grace=60)
    imap = connect(proxy.port)
    xoauth2(imap, new_mailbox(), local_env.mint_token("contoso", lifetime=1))
    wait_for(lambda: proxy.logins == 1)
    time.sleep(1.5)  # past exp, within the grace
    assert imap.noop()[0] == "OK"
    assert proxy.expired_sessions == 0


TRICKY_BODY = (
    b"* CAPABILITY IMAP4rev1 CONDSTORE\r\n"
    b"* OK [CAPABILITY IMAP4rev1 ENABLE] looks like a response line\r\n"
    b"A1 OK [CAPABILITY X] {5}\r\n"
    b"{12}\r\n"
    b"\x01\xff binary-ish \x80 bytes\r\n"
)


def tricky_message(i: int) -> bytes:
    return (
        b"From: a@contoso.test\r\nTo: b@contoso.test\r\n"
        + f"Subject: [CAPABILITY IMAP4rev1 CONDSTORE] {{{i}}}\r\n".encode()
        + f"Message-ID: <tricky-{i}@contoso.test>\r\n\r\n".encode()
        + TRICKY_BODY * (i + 1)
    )


def test_fetch_and_append_pass_literals_through_intact(
    local_env: LocalEnv,
    proxy: ExchangeProxy,
    connect: Connect,
    new_mailbox: Callable[..., str],
    fixture_imap: OpenFixture,
) -> None:
    mailbox = new_mailbox()
    fixture = fixture_imap(mailbox)
    fixture.append("INBOX", realistic_messages(40, seed=7, max_size=300_000, big_every=10))
    fixture.append("INBOX", hostile_messages())
    for i in range(3):
        fixture.client.append("INBOX", tricky_message(i))

    imap = connect(proxy.port)
    xoauth2(imap, mailbox, local_env.mint_token("contoso"))
    # Client -> server literals: a synchronising one (imaplib waits for "+") and LITERAL+.
    assert imap.append("INBOX", None, None, tricky_message(10))[0] == "OK"
    raw = tricky_message(11)
    imap.send(b"L1 APPEND INBOX {%d+}\r\n" % len(raw) + raw + b"\r\n")
    while not (line := imap.readline()).startswith(b"L1 "):
        pass
    assert line.startswith(b"L1 OK")

    items = "(UID RFC822.SIZE INTERNALDATE ENVELOPE BODY.PEEK[HEADER] BODY.PEEK[])"
    direct = imaplib.IMAP4_SSL(
        local_env.info.imap_host,
        local_env.info.imap_port,
        ssl_context=ssl.create_default_context(cafile=local_env.info.ca_file),
        timeout=30,
    )
    try:
        direct.login(f"{mailbox}*fixture", local_env.info.fixture_password)
        direct.select("INBOX", readonly=True)
        expected = direct.uid("FETCH", "1:*", items)
    finally:
        direct.logout()
    imap.select("INBOX", readonly=True)
    got = imap.uid("FETCH", "1:*", items)
    assert got[0] == expected[0] == "OK"
    assert len(got[1]) > 2 * 50
    assert got[1] == expected[1]
    bodies = [part[1] for part in got[1] if isinstance(part, tuple)]
    assert sum(TRICKY_BODY in body for body in bodies) == 5  # lines that look like responses
    assert tricky_message(11) in bodies


def test_denied_mailbox_authenticates_then_is_not_connected(
    local_env: LocalEnv, proxy: ExchangeProxy, connect: Connect, new_mailbox: Callable[..., str]
) -> None:
    mailbox = new_mailbox()
    proxy.deny_mailbox(mailbox.upper())
    imap = connect(proxy.port)
    assert xoauth2(imap, mailbox, local_env.mint_token("contoso"), initial=False) == "OK"
    assert proxy.logins == 1
    assert proxy.logins_of(mailbox) == 1
    with pytest.raises(imaplib.IMAP4.error, match="User is authenticated but not connected"):
        imap.select("INBOX")
    assert imap.readline() == b"* BYE Connection closed. 14\r\n"
    assert imap.readline() == b""

    other = connect(proxy.port)
    xoauth2(other, new_mailbox(), local_env.mint_token("contoso"))
    assert other.select("INBOX")[0] == "OK"


def test_stall_makes_clients_time_out_until_unstalled(
    local_env: LocalEnv, proxy: ExchangeProxy, connect: Connect, new_mailbox: Callable[..., str]
) -> None:
    imap = connect(proxy.port, timeout=1)
    xoauth2(imap, new_mailbox(), local_env.mint_token("contoso"))
    imap.select("INBOX")
    proxy.stall()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        imap.uid("FETCH", "1:*", "(UID FLAGS)")
    assert time.monotonic() - started >= 0.9
    with pytest.raises(TimeoutError):
        connect(proxy.port, timeout=0.5)  # new connections get no greeting either
    proxy.unstall()
    fresh = connect(proxy.port)
    xoauth2(fresh, new_mailbox(), local_env.mint_token("contoso"))
    assert fresh.noop()[0] == "OK"


def test_drop_all_breaks_open_connections_and_new_ones_work(
    local_env: LocalEnv, proxy: ExchangeProxy, connect: Connect, new_mailbox: Callable[..., str]
) -> None:
    sessions = [connect(proxy.port) for _ in range(3)]
    for imap in sessions:
        xoauth2(imap, new_mailbox(), local_env.mint_token("contoso"))
    assert proxy.open_connections == 3
    assert proxy.drop_all() == 3
    assert proxy.open_connections == 0
    for imap in sessions:
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            imap.noop()
    fresh = connect(proxy.port)
    xoauth2(fresh, new_mailbox(), local_env.mint_token("contoso"))
    assert fresh.noop()[0] == "OK"
    assert proxy.connections == 4
    assert proxy.open_connections == 1


def test_drop_idle_resets_only_connections_without_a_command_in_flight(
    local_env: LocalEnv, proxy: ExchangeProxy, connect: Connect, new_mailbox: Callable[..., str]
) -> None:
    idle, busy = connect(proxy.port), connect(proxy.port)
    for imap in (idle, busy):
        xoauth2(imap, new_mailbox(), local_env.mint_token("contoso"))
        imap.select("INBOX")
    busy.send(b"I1 IDLE\r\n")  # a command in flight until DONE
    assert busy.readline().startswith(b"+ ")
    assert proxy.drop_idle() == 1
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        idle.noop()
    busy.send(b"DONE\r\n")
    assert busy.readline().startswith(b"I1 OK")
    assert busy.noop()[0] == "OK"
    assert proxy.open_connections == 1


def test_throttle_next_answers_no_without_forwarding(
    local_env: LocalEnv,
    proxy: ExchangeProxy,
    connect: Connect,
    new_mailbox: Callable[..., str],
    fixture_imap: OpenFixture,
) -> None:
    mailbox = new_mailbox()
    imap = connect(proxy.port)
    proxy.throttle_next(2, 299910)
    xoauth2(imap, mailbox, local_env.mint_token("contoso"))  # before login: not throttled
    throttled = [b"Request is throttled. Suggested Backoff Time: 299910 milliseconds"]
    assert imap.create("Throttled") == ("NO", throttled)
    assert imap.noop() == ("NO", throttled)
    assert imap.noop()[0] == "OK"
    assert not fixture_imap(mailbox).client.folder_exists("Throttled")


def test_hundreds_of_concurrent_sessions(
    local_env: LocalEnv, proxy: ExchangeProxy, connect: Connect, new_mailbox: Callable[..., str]
) -> None:
    token = local_env.mint_token("contoso")

    def session(_: int) -> imaplib.IMAP4_SSL:
        imap = connect(proxy.port, timeout=30)
        xoauth2(imap, new_mailbox(), token)
        imap.select("INBOX")
        return imap

    with ThreadPoolExecutor(16) as pool:
        sessions = list(pool.map(session, range(200)))
        assert proxy.open_connections == 200
        assert all(r[0] == "OK" for r in pool.map(lambda imap: imap.noop(), sessions))
    assert proxy.logins == 200


def test_subprocess_entry_point(local_env: LocalEnv, tmp_path: Path, connect: Connect) -> None:
    port_file = tmp_path / "proxy.port"
    mailbox = "denied@contoso.test"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localenv.exchange_proxy",
            "--env-dir",
            local_env.info.dir,
            "--port-file",
            str(port_file),
            "--deny",
            mailbox,
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "deploy/local")},
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: port_file.exists() or proc.poll() is not None)
        imap = connect(int(port_file.read_text()))
        assert capabilities(imap) == PRE_LOGIN_CAPS
        xoauth2(imap, mailbox, local_env.mint_token("contoso"))
        with pytest.raises(imaplib.IMAP4.error, match="not connected"):
            imap.select("INBOX")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, stderr
        assert b"1 logins" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
