"""Exchange mode: a TLS-terminating, IMAP-aware proxy that makes the local Dovecot answer like
Exchange Online where the two differ (facts from the team's exchange-online.md notes):

- **Token expiry**: Exchange ends an open session when the XOAUTH2 token it logged in with
  expires, "during any command or IDLE", with ``* BYE Session invalidated -
  AccessTokenExpired``; Dovecot keeps such a session open. The proxy reads ``exp`` from the JWT
  in ``AUTHENTICATE XOAUTH2`` (no signature check: Dovecot verifies it) and, once logged in and
  past ``exp + expiry_grace``, answers the next command with that BYE instead of forwarding it
  and also ends idle sessions (checked every ``TICK``; ``expire_idle=False`` turns that off).
- **Capabilities**: Exchange has no CONDSTORE, QRESYNC or ENABLE, and MOVE only after login
  (``idle=False`` also leaves out IDLE, for a server without push).
  Every ``* CAPABILITY`` line and ``[CAPABILITY ...]`` code becomes Exchange's list; ``ENABLE``
  gets Exchange's generic ``BAD Command Argument Error. 11`` and is not forwarded.
- **Missing FullAccess grant** (``deny_mailbox``): AUTHENTICATE succeeds, the next command gets
  ``BAD User is authenticated but not connected.`` then ``* BYE Connection closed. 14``.
- **Faults**: ``stall()`` (the server stops answering), ``drop_all()`` / ``drop_idle()`` (a
  network drop, TCP RST, of every connection / of those without a command in flight),
  ``throttle_next(n, ms)`` (``NO Request is throttled. Suggested Backoff Time: <ms>
  milliseconds``; LOGOUT and ENABLE are not throttled).

One selector thread serves every connection with non-blocking TLS on both sides. Both byte
streams are split into lines and literals (``{n}``, ``{n+}``): literal bytes pass untouched,
only the first line of a command or response is looked at, and text the proxy makes up is sent
at a response boundary. ``python -m localenv.exchange_proxy --env-dir DIR --port-file F`` runs
one until SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import heapq
import itertools
import json
import re
import resource
import selectors
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from localenv.env import EnvInfo, LocalEnv

PRE_LOGIN_CAPS = (
    b"IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE "
    b"NAMESPACE LITERAL+"
)
POST_LOGIN_CAPS = (
    b"IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT CHILDREN IDLE "
    b"NAMESPACE LITERAL+"
)
EXPIRED_BYE = b"* BYE Session invalidated - AccessTokenExpired\r\n"
NOT_CONNECTED = b" BAD User is authenticated but not connected.\r\n* BYE Connection closed. 14\r\n"
ARGUMENT_ERROR = b" BAD Command Argument Error. 11\r\n"
THROTTLED = " NO Request is throttled. Suggested Backoff Time: {} milliseconds\r\n"
NEVER_THROTTLED = (b"LOGOUT", b"ENABLE")
TICK = 0.1  # expiry and shutdown checks
HIGH_WATER = 1 << 20  # stop reading one side while this much waits to be sent to the other
CHUNK = 1 << 16
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE

LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r?\n\Z")
UNTAGGED_CAPS = re.compile(rb"\* CAPABILITY\b", re.IGNORECASE)
STATUS_CAPS = re.compile(rb"(\S+ (?:OK|NO|BAD|PREAUTH|BYE) \[CAPABILITY)[^\]]*\]", re.IGNORECASE)
TAGGED = re.compile(rb"(\S+) (OK|NO|BAD)\b", re.IGNORECASE)


def token_claims(initial_response: bytes) -> tuple[str | None, float | None]:
    """(user, exp) from a base64 XOAUTH2 response ``user=..\\x01auth=Bearer <jwt>\\x01\\x01``."""
    try:
        fields = base64.b64decode(initial_response.strip()).split(b"\x01")
        user = next(f[5:] for f in fields if f.startswith(b"user=")).decode()
        token = next(f[12:] for f in fields if f.startswith(b"auth=Bearer ")).decode()
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return user, float(claims["exp"])
    except (ValueError, KeyError, IndexError, StopIteration, TypeError):
        return None, None


class _Stream:
    """One direction of IMAP split into whole lines and literal bytes."""

    def __init__(self) -> None:
        self.buf = b""  # an incomplete line
        self.literal = 0  # literal bytes still to come
        self.cont = False  # the next line continues the current command or response

    def at_boundary(self) -> bool:
        return not self.literal and not self.cont

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bool]]:
        """Yield (piece, first): literal bytes, or a line and whether it starts a command or
        response. The literal it announces is counted before the line is yielded."""
        buf, pos = self.buf + data, 0
        while pos < len(buf):
            if self.literal:
                n = min(self.literal, len(buf) - pos)
                self.literal, pos = self.literal - n, pos + n
                yield buf[pos - n : pos], False
                continue
            eol = buf.find(b"\n", pos)
            if eol < 0:
                break
            line, pos, first = buf[pos : eol + 1], eol + 1, not self.cont
            found = LITERAL.search(line)
            self.cont, self.literal = found is not None, int(found[1]) if found else 0
            yield line, first
        self.buf = buf[pos:]


class _End:
    """One socket of a proxied connection and the bytes waiting to be sent on it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ready = self.closed = False  # ready: TLS handshake done
        self.out = bytearray()
        self.want = 0  # events the last TLS operation waits for


class _Conn:
    """A client connection, its Dovecot connection and the session state."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = _End(client), _End(upstream)
        self.c2s, self.s2c = _Stream(), _Stream()
        self.connecting = True  # the TCP connect to Dovecot is in progress
        self.closed = self.finishing = self.ending = self.dropping = False
        self.deadline = 0.0  # an ending connection is closed then, flushed or not
        self.auth_tag: bytes | None = None  # of the running AUTHENTICATE or LOGIN
        self.auth: tuple[bytes, str | None, float | None] = (b"", None, None)  # mech, user, exp
        self.logged_in = False
        self.user: str | None = None
        self.exp: float | None = None
        self.pending = bytearray()  # made-up replies waiting for a response boundary
        self.in_flight = 0  # commands forwarded and not answered yet

    def idle(self) -> bool:
        """No command in flight and nothing buffered: a drop now hits no command."""
        quiet = not self.client.out and not self.upstream.out and not self.c2s.buf
        return not self.in_flight and quiet and self.c2s.at_boundary()


class ExchangeProxy:
    """``ExchangeProxy(env_info).start()``; listens with TLS on ``127.0.0.1:proxy.port``."""

    def __init__(
        self,
        info: EnvInfo,
        *,
        expiry_grace: float = 0.0,
        expire_idle: bool = True,
        port: int = 0,
        idle: bool = True,
    ) -> None:
        """``idle=False`` leaves IDLE out of the capabilities (a server without push)."""
        self.idle = idle
        self.expiry_grace = expiry_grace
        self.expire_idle = expire_idle
        tls = Path(info.dir) / "tls"
        self._server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_ctx.load_cert_chain(tls / "server.crt", tls / "server.key")
        self._client_ctx = ssl.create_default_context(cafile=info.ca_file)
        self._upstream = (info.imap_host, info.imap_port)
        self._listener = socket.create_server(("127.0.0.1", port), backlog=4096)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, READ, "accept")
        self._selector.register(self._wake_r, READ, "wake")
        self._lock = threading.Lock()  # guards what other threads read or set below
        self._calls: list[tuple[Callable[[], object], threading.Event]] = []
        self._conns: set[_Conn] = set()
        self._denied: set[str] = set()
        self._throttle = (0, 0)
        self._counts = {"logins": 0, "expired": 0, "accepted": 0}
        self._logins_of: dict[str, int] = {}  # by lower-case XOAUTH2 user
        self._stalled = False
        self._expiries: list[tuple[float, int, _Conn]] = []  # heap of (exp, sequence, conn)
        self._sequence = itertools.count()
        self._ending: set[_Conn] = set()
        self._next_tick = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="exchange-proxy", daemon=True)

    # -- public API -------------------------------------------------------------------------
    def start(self) -> ExchangeProxy:
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection and join the thread; idempotent."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.ident is not None:
            self._thread.join(timeout)
        else:
            self._shutdown()
        self._wake_w.close()

    def __enter__(self) -> ExchangeProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def deny_mailbox(self, address: str) -> None:
        """Act as if the app had no FullAccess on ``address`` (from its next command on)."""
        with self._lock:
            self._denied.add(address.lower())

    def allow_mailbox(self, address: str) -> None:
        with self._lock:
            self._denied.discard(address.lower())

    def throttle_next(self, n: int, millis: int) -> None:
        """The next ``n`` commands of logged-in sessions get Exchange's throttling NO."""
        with self._lock:
            self._throttle = (n, millis)

    def stall(self) -> None:
        """Stop passing server bytes to clients, on open and new connections."""
        self._stalled = True
        self._call(lambda: [self._update(c) for c in list(self._conns)])

    def unstall(self) -> None:
        self._stalled = False
        self._call(lambda: [self._pump(c) for c in list(self._conns)])

    def drop_all(self) -> int:
        """Reset every open connection (TCP RST); new ones are still accepted. Returns the
        number reset."""
        return self._call(lambda: self._drop(lambda _: True))

    def drop_idle(self) -> int:
        """Reset the connections without a command in flight (a drop between polls)."""
        return self._call(lambda: self._drop(_Conn.idle))

    def expire_all(self) -> int:
        """End every logged-in session now with Exchange's ``AccessTokenExpired`` BYE, as if
        each one's token had run out (during IDLE too). Returns the number ended."""

        def expire() -> int:
            ended = 0
            for conn in list(self._conns):
                if conn.logged_in and not conn.closed and not conn.finishing:
                    self._expire(conn)
                    ended += 1
            return ended

        return int(self._call(expire))

    def _drop(self, which: Callable[[_Conn], bool]) -> int:
        dropped = 0
        for conn in list(self._conns):
            self._pump(conn)  # take in what the client already sent
            if not conn.closed and which(conn):
                self._close(conn, reset=True)
                dropped += 1
        return dropped

    logins = property(lambda self: self._count("logins"), doc="tagged OKs to AUTHENTICATE")
    expired_sessions = property(lambda self: self._count("expired"), doc="AccessTokenExpired")
    connections = property(lambda self: self._count("accepted"), doc="accepted in total")
    open_connections = property(lambda self: self._count("open"), doc="open now")

    def logins_of(self, address: str) -> int:
        """Tagged OKs to AUTHENTICATE XOAUTH2 as ``address`` (case does not matter)."""
        with self._lock:
            return self._logins_of.get(address.lower(), 0)

    def _count(self, name: str) -> int:
        with self._lock:
            return len(self._conns) if name == "open" else self._counts[name]

    def _add(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    # -- the selector thread: the only one that touches sockets ------------------------------
    def _call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ``fn`` on the selector thread, wait for it and return its result."""
        result: list[Any] = [None]
        if not self._thread.is_alive():
            return 0
        done = threading.Event()
        with self._lock:
            self._calls.append((lambda: result.__setitem__(0, fn()), done))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        done.wait(timeout)
        return result[0]

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(TICK):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            while self._wake_r.recv(4096):
                                pass
                        self._run_calls()
                    elif not key.data.closed:
                        self._pump(key.data)
                self._tick()
        finally:
            self._shutdown()

    def _run_calls(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for fn, done in calls:
            try:
                if not self._stop.is_set():
                    fn()
            finally:
                done.set()

    def _shutdown(self) -> None:
        for conn in list(self._conns):
            self._close(conn)
        self._stop.set()
        self._run_calls()
        self._selector.close()
        self._listener.close()
        self._wake_r.close()

    def _tick(self) -> None:
        mono = time.monotonic()
        if mono < self._next_tick:
            return
        self._next_tick, now = mono + TICK, time.time()
        while self.expire_idle and self._expiries:
            exp, _, conn = self._expiries[0]
            if exp + self.expiry_grace > now:
                break
            heapq.heappop(self._expiries)
            if not conn.closed and not conn.finishing and conn.exp == exp:
                self._expire(conn)
                self._pump(conn)
        for conn in [c for c in self._ending if c.deadline < mono]:
            self._close(conn)

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:  # nothing left to accept (or out of descriptors: next event)
                return
            upstream = None
            try:
                upstream = socket.socket()
                for sock in (raw, upstream):
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                upstream.connect_ex(self._upstream)
                client = self._server_ctx.wrap_socket(
                    raw, server_side=True, do_handshake_on_connect=False
                )
            except OSError:
                raw.close()
                if upstream is not None:
                    upstream.close()
                continue
            conn = _Conn(client, upstream)
            with self._lock:
                self._counts["accepted"] += 1
                self._conns.add(conn)
            self._pump(conn)

    def _pump(self, conn: _Conn) -> None:
        """Move every byte that can move now, both ways, without blocking."""
        client, upstream = conn.client, conn.upstream
        client.want = upstream.want = 0
        try:
            if conn.connecting:
                self._connected(conn)
            for end in (client, upstream):
                if not end.ready and not end.closed and not conn.connecting:
                    self._handshake(end)
            progress = True
            while progress and not conn.closed:
                progress = False
                if self._can_read_client(conn):
                    data, eof = self._recv(client)
                    progress = self._from_client(conn, data) or progress
                    if eof:
                        self._close(conn)
                        return
                if self._can_read_server(conn):
                    data, eof = self._recv(upstream)
                    progress = self._from_server(conn, data) or progress
                    if eof:  # Dovecot closed (after LOGOUT, or a fault): pass on what came
                        conn.s2c = _Stream()
                        self._end(conn, b"")
                for end in (client, upstream):
                    if end.ready and end.out and not end.closed:
                        progress = self._send(end) or progress
            if conn.ending and not client.out:
                self._close(conn)
        except OSError:  # ssl.SSLError too: either side failed, the connection ends
            self._close(conn)
        except Exception:  # noqa: BLE001 - a proxy bug costs one connection, not every one
            traceback.print_exc()
            self._close(conn)
        finally:
            self._update(conn)

    def _can_read_client(self, conn: _Conn) -> bool:
        return conn.client.ready and not conn.ending and len(conn.upstream.out) < HIGH_WATER

    def _can_read_server(self, conn: _Conn) -> bool:
        up, backlog = conn.upstream, len(conn.client.out)
        return up.ready and not up.closed and not self._stalled and backlog < HIGH_WATER

    def _update(self, conn: _Conn) -> None:
        """Register each socket for the events its next step waits for."""
        if conn.closed:
            return
        for end, readable in (
            (conn.client, self._can_read_client(conn)),
            (conn.upstream, self._can_read_server(conn)),
        ):
            if end.closed:
                continue
            if end is conn.upstream and conn.connecting:
                events = WRITE
            elif not end.ready:
                events = end.want or READ
            else:
                events = end.want | (READ if readable else 0) | (WRITE if end.out else 0)
            key = self._selector.get_map().get(end.sock)
            if key is None and events:
                self._selector.register(end.sock, events, conn)
            elif key is not None and not events:
                self._selector.unregister(end.sock)
            elif key is not None and key.events != events:
                self._selector.modify(end.sock, events, conn)

    def _connected(self, conn: _Conn) -> None:
        raw = conn.upstream.sock
        try:
            raw.getpeername()
        except OSError:
            if error := raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                raise OSError(error, "connecting to Dovecot failed") from None
            return  # still connecting
        with contextlib.suppress(KeyError):  # not registered when it connected at once
            self._selector.unregister(raw)
        conn.upstream.sock = self._client_ctx.wrap_socket(
            raw, server_hostname=self._upstream[0], do_handshake_on_connect=False
        )
        conn.connecting = False

    @staticmethod
    def _handshake(end: _End) -> None:
        try:
            end.sock.do_handshake()  # type: ignore[attr-defined]
            end.ready = True
        except ssl.SSLWantReadError:
            end.want |= READ
        except ssl.SSLWantWriteError:
            end.want |= WRITE

    @staticmethod
    def _recv(end: _End) -> tuple[bytes, bool]:
        """What is readable now, including what TLS already decrypted; and whether at EOF."""
        chunks: list[bytes] = []
        while len(chunks) < 4:
            try:
                data = end.sock.recv(CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                end.want |= WRITE
                break
            if not data:
                return b"".join(chunks), True
            chunks.append(data)
        return b"".join(chunks), False

    @staticmethod
    def _send(end: _End) -> bool:
        try:  # a retried TLS write must start with the same bytes, never fewer: it does
            sent = end.sock.send(bytes(end.out[:CHUNK]))
        except ssl.SSLWantWriteError:
            end.want |= WRITE
            return False
        except ssl.SSLWantReadError:
            end.want |= READ
            return False
        del end.out[:sent]
        return sent > 0

    def _close(self, conn: _Conn, *, reset: bool = False) -> None:
        if not conn.closed:
            conn.closed = True
            self._close_end(conn.client, reset=reset)
            self._close_end(conn.upstream, reset=reset)
            self._ending.discard(conn)
            with self._lock:
                self._conns.discard(conn)

    def _close_end(self, end: _End, *, reset: bool = False) -> None:
        if not end.closed:
            end.closed = True
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(end.sock)
            if reset:  # SO_LINGER 0: close sends a RST, as a broken network path would show
                with contextlib.suppress(OSError):
                    linger = struct.pack("ii", 1, 0)
                    end.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            end.sock.close()

    # -- IMAP -------------------------------------------------------------------------------
    def _from_client(self, conn: _Conn, data: bytes) -> bool:
        for piece, first in conn.c2s.feed(data):
            if conn.finishing:
                continue  # the session is over: what the client still sends goes nowhere
            if first:
                conn.dropping = not self._client_line(conn, piece)
                found = LITERAL.search(piece) if conn.dropping else None
                if found and not found[2]:  # refused: the client will not send the literal
                    conn.c2s.literal, conn.c2s.cont = 0, False
            if not conn.dropping:
                conn.upstream.out += piece
        return bool(data)

    def _client_line(self, conn: _Conn, line: bytes) -> bool:
        """Look at the first line of a client command; False when it is answered here."""
        if conn.auth_tag is not None:  # a SASL response of the running AUTHENTICATE
            if conn.auth[0] == b"XOAUTH2" and conn.auth[1] is None:
                conn.auth = (b"XOAUTH2", *token_claims(line))
            return True
        if conn.logged_in and conn.exp and time.time() >= conn.exp + self.expiry_grace:
            self._expire(conn)
            return False
        parts = line.split(None, 3)
        if len(parts) < 2:
            return True  # DONE of an IDLE, or garbage for Dovecot to refuse
        tag, command = parts[0], parts[1].upper()
        with self._lock:
            denied = conn.logged_in and (conn.user or "").lower() in self._denied
            throttled, millis = self._throttle
            if not conn.logged_in or command in NEVER_THROTTLED or denied:
                throttled = 0
            elif throttled:
                self._throttle = (throttled - 1, millis)
        if denied:
            self._end(conn, tag + NOT_CONNECTED)
        elif command == b"ENABLE":
            self._reply(conn, tag + ARGUMENT_ERROR)
        elif throttled:
            self._reply(conn, tag + THROTTLED.format(millis).encode())
        else:
            if command in (b"AUTHENTICATE", b"LOGIN"):
                conn.auth_tag = tag
                mechanism = parts[2].upper() if command == b"AUTHENTICATE" and parts[2:] else b""
                conn.auth = (mechanism, None, None)
                if mechanism == b"XOAUTH2" and len(parts) > 3:
                    conn.auth = (mechanism, *token_claims(parts[3]))
            conn.in_flight += 1
            return True
        return False

    def _from_server(self, conn: _Conn, data: bytes) -> bool:
        out = conn.client.out
        for piece, first in conn.s2c.feed(data):
            out += self._server_line(conn, piece) if first else piece
            if conn.pending and conn.s2c.at_boundary():
                self._release(conn)
                if conn.ending:
                    break
        return bool(data)

    def _server_line(self, conn: _Conn, line: bytes) -> bytes:
        """The first line of a server response, with Exchange's capabilities."""
        tagged = TAGGED.match(line)
        if tagged and tagged[1] != b"*":
            conn.in_flight = max(0, conn.in_flight - 1)
        if conn.auth_tag is not None and tagged and tagged[1] == conn.auth_tag:
            conn.auth_tag = None
            if tagged[2].upper() == b"OK":
                mechanism, conn.user, conn.exp = conn.auth
                conn.logged_in = True
                if conn.exp is not None:
                    heapq.heappush(self._expiries, (conn.exp, next(self._sequence), conn))
                if mechanism:  # AUTHENTICATE, not LOGIN
                    self._add("logins")
                    with self._lock:
                        user = (conn.user or "").lower()
                        self._logins_of[user] = self._logins_of.get(user, 0) + 1
        # While AUTHENTICATE runs, Dovecot reports the capabilities after login.
        caps = POST_LOGIN_CAPS if conn.logged_in or conn.auth_tag else PRE_LOGIN_CAPS
        if not self.idle:
            caps = caps.replace(b" IDLE", b"")
        if UNTAGGED_CAPS.match(line):
            return b"* CAPABILITY " + caps + b"\r\n"
        return STATUS_CAPS.sub(lambda m: m[1] + b" " + caps + b"]", line, count=1)

    def _expire(self, conn: _Conn) -> None:
        self._add("expired")
        conn.exp = None
        self._end(conn, EXPIRED_BYE)

    def _reply(self, conn: _Conn, data: bytes) -> None:
        """Send ``data`` to the client at the next response boundary."""
        conn.pending += data
        if conn.s2c.at_boundary():
            self._release(conn)

    def _end(self, conn: _Conn, data: bytes) -> None:
        """Send ``data`` (at a response boundary), then close both sides."""
        conn.finishing = True
        self._reply(conn, data)

    def _release(self, conn: _Conn) -> None:
        conn.client.out += conn.pending
        conn.pending.clear()
        if conn.finishing and not conn.ending:
            conn.ending, conn.deadline = True, time.monotonic() + 5
            self._ending.add(conn)
            self._close_end(conn.upstream)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localenv.exchange_proxy",
        description="Exchange mode in front of a running local environment, until SIGTERM.",
    )
    parser.add_argument("--env-dir", type=Path, required=True, help="where env.json is")
    parser.add_argument("--port-file", type=Path, required=True, help="gets the port")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--expiry-grace", type=float, default=0.0, help="seconds after exp")
    parser.add_argument("--deny", action="append", default=[], help="a mailbox without grant")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # two sockets per session
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    info = LocalEnv.load(args.env_dir.resolve()).info
    with ExchangeProxy(info, expiry_grace=args.expiry_grace, port=args.port) as proxy:
        proxy.start()
        for mailbox in args.deny:
            proxy.deny_mailbox(mailbox)
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(f"{proxy.port}\n")
        tmp.replace(args.port_file)
        print(f"exchange proxy on 127.0.0.1:{proxy.port} -> {info.imap_port}", file=sys.stderr)
        while not stop.wait(0.5):
            pass
        print(
            f"exchange proxy stopping: {proxy.connections} connections, {proxy.logins} logins, "
            f"{proxy.expired_sessions} expired sessions",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
