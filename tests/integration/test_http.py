"""The real HTTP server on a free port: /metrics, /healthz, /readyz, /status, 404, shutdown."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector

from daemon.http import READINESS_FAILED, STATUS_FAILED, HealthServer
from daemon.metrics import Metrics


@dataclass
class Response:
    status: int
    headers: Message
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def request(server: HealthServer, path: str, method: str = "GET", **headers: str) -> Response:
    host = server.host if ":" not in server.host else f"[{server.host}]"
    url = f"http://{host}:{server.port}{path}"
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - http://
            return Response(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Response(exc.code, exc.headers, exc.read())


def port_is_closed(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return False
    return True


@pytest.fixture
def start_server() -> Iterator[Callable[..., HealthServer]]:
    """Returns a function starting a HealthServer on a free port; every one stopped after."""
    started: list[HealthServer] = []

    def start(
        health: Callable[[], bool] = lambda: True,
        readiness: Callable[[], list[str]] = list,
        listen: str = "127.0.0.1:0",
        registry: CollectorRegistry | None = None,
        status: Callable[[], Mapping[str, object]] | None = None,
    ) -> HealthServer:
        if registry is None:
            registry = CollectorRegistry()
            Metrics(registry, ["contoso", "fabrikam"], version="9.9.9")
        server = HealthServer(listen, registry, health=health, readiness=readiness, status=status)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_metrics_serves_prometheus_text_with_the_spec_names(
    start_server: Callable[..., HealthServer],
) -> None:
    server = start_server()

    resp = request(server, "/metrics")

    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = resp.body.decode()
    for name in (
        "mailsyncd_polls_total",
        "mailsyncd_poll_failures_total",
        "mailsyncd_poll_duration_seconds_bucket",
        "mailsyncd_schedule_delay_seconds_bucket",
        "mailsyncd_messages_synced_total",
        "mailsyncd_sync_lag_seconds_bucket",
        "mailsyncd_token_requests_total",
        "mailsyncd_token_expiry_timestamp_seconds",
        "mailsyncd_imap_logins_total",
        "mailsyncd_mailboxes",
        "mailsyncd_oldest_successful_poll_timestamp_seconds",
        "mailsyncd_db_write_duration_seconds_bucket",
        "mailsyncd_imap_sessions_open",
    ):
        assert f"\n{name}" in text, name
    assert 'mailsyncd_build_info{version="9.9.9"} 1.0' in text
    assert 'mailsyncd_polls_total{outcome="failure",tenant="fabrikam"} 0.0' in text


def test_metrics_serves_the_process_and_platform_collectors_and_no_created_series(
    start_server: Callable[..., HealthServer],
) -> None:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # as the composition root registers it
    metrics = Metrics(registry, ["contoso"], version="9.9.9")
    metrics.poll_finished("contoso", "success", 0.2)
    server = start_server(registry=registry)

    text = request(server, "/metrics").body.decode()

    assert "\nprocess_resident_memory_bytes " in text
    assert "\nprocess_start_time_seconds " in text
    assert "\npython_info{" in text
    assert 'mailsyncd_polls_total{outcome="success",tenant="contoso"} 1.0' in text
    assert "_created" not in text


def test_metrics_is_gzipped_when_the_scraper_accepts_it(
    start_server: Callable[..., HealthServer],
) -> None:
    server = start_server()

    resp = request(server, "/metrics", **{"Accept-Encoding": "gzip"})

    assert resp.headers["Content-Encoding"] == "gzip"
    assert b"mailsyncd_polls_total" in gzip.decompress(resp.body)


@pytest.mark.parametrize(("alive", "status"), [(True, 200), (False, 503)])
def test_healthz_follows_the_liveness_callable(
    start_server: Callable[..., HealthServer], alive: bool, status: int
) -> None:
    server = start_server(health=lambda: alive)

    resp = request(server, "/healthz")

    assert (resp.status, resp.json()) == (status, {"alive": alive})


def test_healthz_is_503_when_the_liveness_check_raises(
    start_server: Callable[..., HealthServer],
) -> None:
    def broken() -> bool:
        raise RuntimeError("scheduler gone")

    assert request(start_server(health=broken), "/healthz").status == 503


def test_readyz_is_200_when_there_is_no_reason_to_wait(
    start_server: Callable[..., HealthServer],
) -> None:
    resp = request(start_server(readiness=list), "/readyz")

    assert (resp.status, resp.json()) == (200, {"ready": True})
    assert resp.headers["Content-Type"] == "application/json"


def test_readyz_is_503_with_the_reasons(start_server: Callable[..., HealthServer]) -> None:
    reasons = ["database unreachable", "schema not at head"]

    resp = request(start_server(readiness=lambda: reasons), "/readyz")

    assert (resp.status, resp.json()) == (503, {"ready": False, "reasons": reasons})


def test_readyz_turns_a_failing_check_into_503(start_server: Callable[..., HealthServer]) -> None:
    def broken() -> list[str]:
        raise ConnectionError("db")

    resp = request(start_server(readiness=broken), "/readyz")

    assert (resp.status, resp.json()) == (503, {"ready": False, "reasons": [READINESS_FAILED]})


STATUS_DOCUMENT: dict[str, object] = {
    "replica": "pod-a",
    "mailboxes": [
        {
            "mailbox": "zoë@contoso.test",
            "tenant": "contoso",
            "state": "backoff",
            "owner": "pod-a",
            "last_poll_at": "2024-05-01T12:00:00+00:00",
            "last_success_at": None,
            "consecutive_failures": 2,
            "last_error_reason": "connect",
            "last_error": "connection refused",
            "hint": None,
            "initial_sync_remaining": 0,
        }
    ],
}


def test_status_returns_the_document_of_the_status_callable(
    start_server: Callable[..., HealthServer],
) -> None:
    calls: list[int] = []

    def status() -> Mapping[str, object]:
        calls.append(1)
        return STATUS_DOCUMENT

    server = start_server(status=status)

    first = request(server, "/status")
    second = request(server, "/status?mailbox=x")

    assert (first.status, first.json()) == (200, STATUS_DOCUMENT)
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["Cache-Control"] == "no-store"
    assert second.json() == STATUS_DOCUMENT
    assert len(calls) == 2  # asked afresh on every request, never cached


def test_status_is_404_when_the_daemon_gives_no_status(
    start_server: Callable[..., HealthServer],
) -> None:
    server = start_server()

    assert request(server, "/status").status == 404
    assert request(server, "/status", method="HEAD").status == 404


def test_status_head_answers_without_a_body(start_server: Callable[..., HealthServer]) -> None:
    resp = request(start_server(status=lambda: STATUS_DOCUMENT), "/status", method="HEAD")

    assert resp.status == 200
    assert resp.body == b""
    assert int(resp.headers["Content-Length"]) > 0


def test_status_is_gzipped_when_the_client_accepts_it(
    start_server: Callable[..., HealthServer],
) -> None:
    server = start_server(status=lambda: STATUS_DOCUMENT)

    resp = request(server, "/status", **{"Accept-Encoding": "gzip"})

    assert resp.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(resp.body)) == STATUS_DOCUMENT


def test_status_is_500_when_the_callable_fails_and_the_server_keeps_serving(
    start_server: Callable[..., HealthServer],
) -> None:
    def broken() -> Mapping[str, object]:
        raise RuntimeError("runtime gone")

    server = start_server(status=broken)

    resp = request(server, "/status")

    assert (resp.status, resp.json()) == (500, {"error": STATUS_FAILED})
    assert request(server, "/healthz").status == 200


def test_status_that_is_not_json_is_500(start_server: Callable[..., HealthServer]) -> None:
    server = start_server(status=lambda: {"replica": object()})
    assert request(server, "/status").status == 500


@pytest.mark.parametrize("path", ["/", "/metricsx", "/healthz/extra", "/favicon.ico"])
def test_unknown_path_is_404(start_server: Callable[..., HealthServer], path: str) -> None:
    assert request(start_server(), path).status == 404


def test_query_string_does_not_change_the_route(
    start_server: Callable[..., HealthServer],
) -> None:
    assert request(start_server(), "/healthz?verbose=1").status == 200


def test_head_answers_without_a_body(start_server: Callable[..., HealthServer]) -> None:
    resp = request(start_server(), "/metrics", method="HEAD")

    assert resp.status == 200
    assert resp.body == b""
    assert int(resp.headers["Content-Length"]) > 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
@pytest.mark.parametrize("path", ["/metrics", "/status"])
def test_only_get_and_head_are_allowed(
    start_server: Callable[..., HealthServer], method: str, path: str
) -> None:
    resp = request(start_server(status=lambda: STATUS_DOCUMENT), path, method=method)

    assert resp.status == 405
    assert resp.headers["Allow"] == "GET, HEAD"


def test_requests_are_not_logged_to_stderr(
    start_server: Callable[..., HealthServer], capfd: pytest.CaptureFixture[str]
) -> None:
    server = start_server()

    for path in ("/metrics", "/healthz", "/nope"):
        request(server, path)

    assert capfd.readouterr().err == ""


def test_stop_returns_quickly_closes_the_port_and_is_idempotent(
    start_server: Callable[..., HealthServer],
) -> None:
    server = start_server()
    assert request(server, "/healthz").status == 200
    # An idle keep-alive-style client must not hold shutdown up.
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)

    started = time.monotonic()
    server.stop()
    elapsed = time.monotonic() - started
    server.stop()
    idle.close()

    assert elapsed < 2.0
    assert not server.running
    assert port_is_closed("127.0.0.1", server.port)


def test_start_twice_serves_once_on_the_same_port(
    start_server: Callable[..., HealthServer],
) -> None:
    server = start_server()
    port = server.port

    server.start()

    assert server.port == port
    assert server.running


def test_listen_on_ipv6_loopback(start_server: Callable[..., HealthServer]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        server = start_server(listen="[::1]:0")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")

    assert server.host == "::1"
    assert request(server, "/healthz").status == 200


def test_server_refuses_a_listen_address_the_configuration_refuses() -> None:
    """The server parses ``http.listen`` with the configuration's parser, never its own."""
    with pytest.raises(ValueError, match="host:port"):
        HealthServer("::1:9464", CollectorRegistry(), health=lambda: True, readiness=list)
