"""The operator's HTTP port: ``/metrics``, ``/healthz``, ``/readyz`` and ``/status`` (SPEC
"HTTP endpoints").

A stdlib ``ThreadingHTTPServer`` on a daemon thread: a scrape or a probe never waits for a
poll, and a stuck client never blocks shutdown. The server knows nothing about the daemon:
the composition root passes the registry and the callables that answer liveness, readiness
and, optionally, the status of the mailboxes this replica owns.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any, Final
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from daemon.config import parse_listen
from daemon.logging import get_logger

_log = get_logger(__name__)

READINESS_FAILED: Final = "readiness check failed"
STATUS_FAILED: Final = "status unavailable"
_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"
# serve_forever() checks for shutdown this often; it bounds how long stop() takes.
_POLL_INTERVAL: Final = 0.1
# A client that sends nothing for this long is disconnected; handler threads never pile up.
_CLIENT_TIMEOUT: Final = 10.0


class _WithoutCreated(Collector):
    """The families of a registry without their ``_created`` samples.

    In the text format prometheus_client writes every counter's and histogram's creation time
    as a gauge of its own (``..._created``): one more series per labelled child, which nothing
    reads and every Prometheus stores. Filtering here instead of calling
    ``disable_created_metrics()`` leaves the library's process-wide switch alone.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            created = family.name + "_created"
            if not any(sample.name == created for sample in family.samples):
                yield family
                continue
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = [sample for sample in family.samples if sample.name != created]
            yield kept


def render_text(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry`` as ``/metrics`` serves it."""
    return generate_latest(_WithoutCreated(registry))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        registry: CollectorRegistry,
        health: Callable[[], bool],
        readiness: Callable[[], list[str]],
        *,
        status: Callable[[], Mapping[str, object]] | None,
    ) -> None:
        self.address_family = family
        self.registry = registry
        self.health = health
        self.readiness = readiness
        self.status = status
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup that can stall start().
        if self.address_family == socket.AF_INET6 and self.server_address[0] in ("", "::"):
            with contextlib.suppress(OSError):  # accept IPv4 too where the OS allows it
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002 - stdlib hook
        # The default prints a traceback on stderr; a client hanging up is not worth one.
        _log.debug("http_connection_error", client=str(client_address[0]), exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "mailsyncd"
    sys_version = ""
    timeout = _CLIENT_TIMEOUT

    def do_GET(self) -> None:
        self._route(send_body=True)

    def do_HEAD(self) -> None:
        self._route(send_body=False)

    def do_POST(self) -> None:
        self._not_allowed()

    def do_PUT(self) -> None:
        self._not_allowed()

    def do_DELETE(self) -> None:
        self._not_allowed()

    def do_PATCH(self) -> None:
        self._not_allowed()

    def do_OPTIONS(self) -> None:
        self._not_allowed()

    def _not_allowed(self) -> None:
        body = b"method not allowed\n"
        self._send(405, _TEXT, body, send_body=True, allow="GET, HEAD")

    def _route(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._metrics(send_body)
        elif path == "/healthz":
            alive = self._alive()
            self._send_json(200 if alive else 503, {"alive": alive}, send_body)
        elif path == "/readyz":
            reasons = self._not_ready_reasons()
            body: dict[str, object] = {"ready": not reasons}
            if reasons:
                body["reasons"] = reasons
            self._send_json(503 if reasons else 200, body, send_body)
        elif path == "/status" and self.server.status is not None:
            self._status(self.server.status, send_body)
        else:
            self._send(404, _TEXT, b"not found\n", send_body=send_body)

    def _metrics(self, send_body: bool) -> None:
        try:
            payload = render_text(self.server.registry)
        except Exception:  # noqa: BLE001 - a broken collector must not kill the handler
            _log.exception("metrics_render_failed")
            self._send(500, _TEXT, b"metrics unavailable\n", send_body=send_body)
            return
        self._send_compressible(CONTENT_TYPE_LATEST, payload, send_body)

    def _status(self, status: Callable[[], Mapping[str, object]], send_body: bool) -> None:
        try:
            payload = json.dumps(dict(status())).encode() + b"\n"
        except Exception:  # noqa: BLE001 - a failing callable must not kill the handler
            _log.exception("status_render_failed")
            self._send_json(500, {"error": STATUS_FAILED}, send_body)
            return
        # Thousands of mailboxes make a few megabytes of JSON; gzip takes it to a tenth.
        self._send_compressible(_JSON, payload, send_body)

    def _send_compressible(self, content_type: str, payload: bytes, send_body: bool) -> None:
        encoding = None
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            payload, encoding = gzip.compress(payload), "gzip"
        self._send(200, content_type, payload, send_body=send_body, encoding=encoding)

    def _alive(self) -> bool:
        try:
            return bool(self.server.health())
        except Exception:  # noqa: BLE001 - any failure of the check means "not alive"
            _log.exception("health_check_failed")
            return False

    def _not_ready_reasons(self) -> list[str]:
        try:
            return [str(reason) for reason in self.server.readiness()]
        except Exception:  # noqa: BLE001 - any failure of the check means "not ready"
            _log.exception("readiness_check_failed")
            return [READINESS_FAILED]

    def _send_json(self, status: int, body: dict[str, object], send_body: bool) -> None:
        self._send(status, _JSON, json.dumps(body).encode() + b"\n", send_body=send_body)

    def _send(
        self,
        status: int,
        content_type: str,
        payload: bytes,
        *,
        send_body: bool,
        allow: str | None = None,
        encoding: str | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        if allow is not None:
            self.send_header("Allow", allow)
        if encoding is not None:
            self.send_header("Content-Encoding", encoding)
            self.send_header("Vary", "Accept-Encoding")
        self.end_headers()
        if send_body:
            self.wfile.write(payload)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        _log.debug(
            "http_request",
            method=self.command,
            path=urlsplit(self.path or "").path,
            status=int(code) if isinstance(code, int) else str(code),
            size=size,
        )

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        _log.debug("http_server_message", message=format % args)


class HealthServer:
    """Serves metrics, probes and status on ``listen`` from a daemon thread until ``stop()``."""

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        health: Callable[[], bool],
        readiness: Callable[[], list[str]],
        *,
        status: Callable[[], Mapping[str, object]] | None = None,
    ) -> None:
        """``listen`` is ``http.listen`` as the configuration accepts it (a ValueError
        otherwise); ``status`` returns the JSON document of ``GET /status``, else that is 404."""
        self._host, self._port = parse_listen(listen)  # the configuration's own parser
        self._registry = registry
        self._health = health
        self._readiness = readiness
        self._status = status
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        """The host part of the listen address (empty: every interface)."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port once started (the real one when ``listen`` asked for port 0)."""
        return self._port

    @property
    def running(self) -> bool:
        """True while the serving thread is alive; the composition root can watch it."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Binds and starts serving; a second call does nothing. Bind errors raise OSError."""
        with self._lock:
            if self._server is not None:
                return
            server = _Server(
                (self._host, self._port),
                self._family(),
                self._registry,
                self._health,
                self._readiness,
                status=self._status,
            )
            self._port = server.server_port
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name="mailsyncd-http",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
        _log.info("http_listening", host=self._host or "*", port=self._port)

    def stop(self, timeout: float = 2.0) -> None:
        """Stops serving and closes the port; idempotent, returns within ``timeout``."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None or thread is None:
            return
        # shutdown() waits for serve_forever() with no limit; run it where a hang cannot
        # hold the caller, and close the socket whatever happens.
        deadline = time.monotonic() + timeout
        stopper = threading.Thread(target=server.shutdown, name="mailsyncd-http-stop", daemon=True)
        stopper.start()
        stopper.join(timeout)
        server.server_close()
        thread.join(max(0.0, deadline - time.monotonic()))
        _log.info("http_stopped", port=self._port)

    def _family(self) -> socket.AddressFamily:
        if ":" in self._host:
            return socket.AF_INET6
        if not self._host:
            return socket.AF_INET
        infos = socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        return infos[0][0] if infos else socket.AF_INET
