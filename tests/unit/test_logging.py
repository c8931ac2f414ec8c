"""Log lines are JSON with level/timestamp/event, and no secret reaches them by any path."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from daemon.logging import (
    NOISY_LOGGERS,
    REDACTED,
    Logger,
    SecretRegistry,
    configure_logging,
    get_logger,
)

JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJhdWQiOiJodHRwczovL291dGxvb2sub2ZmaWNlMzY1LmNvbSIsInJvbGVzIjpbIklNQVAiXX0"
    ".c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1xdWl0ZS1sb25n"
)
OPAQUE_TOKEN = "EwBwA8l6BAAUopaque0access0token0value"
CLIENT_SECRET = "Qx8Q~s3cr3t.from-a-file_0123456789abcdefgh"
XOAUTH2 = f"user=support@contoso.com\x01auth=Bearer {OPAQUE_TOKEN}\x01\x01"
XOAUTH2_B64 = base64.b64encode(XOAUTH2.encode()).decode()


class Output:
    """What configure_logging wrote, with the registry it scrubs."""

    def __init__(self, stream: io.StringIO, secrets: SecretRegistry) -> None:
        self.stream = stream
        self.secrets = secrets

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]


@pytest.fixture
def configure() -> Iterator[Callable[..., Output]]:
    """Returns a function configuring logging into a StringIO; global state restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level

    def make(level: str = "info", fmt: str = "json") -> Output:
        stream, secrets = io.StringIO(), SecretRegistry()
        secrets.register_secret(CLIENT_SECRET + "\n")  # as read from a secret file
        configure_logging(level, fmt, stream=stream, secrets=secrets)
        return Output(stream, secrets)

    yield make
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    for handler in saved_handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(saved_level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    structlog.reset_defaults()


def _assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked into the log"


def test_every_line_is_json_with_level_utc_timestamp_and_event(
    configure: Callable[..., Output],
) -> None:
    out = configure()
    log = structlog.get_logger("daemon.test")

    log.info("poll", mailbox="a@contoso.com", new=1)
    log.warning("slow poll", duration_s=12.5)
    logging.getLogger("alembic.runtime.migration").info("Running upgrade -> 0001")
    logging.getLogger("sqlalchemy.pool").error("connection %s lost", "#3")

    records = out.records()
    assert [r["event"] for r in records] == [
        "poll",
        "slow poll",
        "Running upgrade -> 0001",
        "connection #3 lost",
    ]
    assert [r["level"] for r in records] == ["info", "warning", "info", "error"]
    for record in records:
        stamp = datetime.fromisoformat(record["timestamp"])
        assert stamp.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=1)
    assert records[2]["logger"] == "alembic.runtime.migration"


def test_get_logger_names_the_logger_and_keeps_initial_and_bound_fields(
    configure: Callable[..., Output],
) -> None:
    out = configure()
    log: Logger = get_logger("daemon.runtime", replica="r1")

    log.bind(tenant="contoso").info("poll", mailbox="a@contoso.com")
    log.error("stopped")

    first, second = out.records()
    assert (first["event"], first["logger"], first["level"]) == ("poll", "daemon.runtime", "info")
    assert (first["replica"], first["tenant"], first["mailbox"]) == (
        "r1",
        "contoso",
        "a@contoso.com",
    )
    assert (second["event"], second["replica"], second["level"]) == ("stopped", "r1", "error")
    assert "tenant" not in second


def test_level_filters_structlog_and_noisy_libraries_until_debug(
    configure: Callable[..., Output],
) -> None:
    out = configure(level="info")
    structlog.get_logger("daemon.test").debug("idle poll")
    logging.getLogger("apscheduler.executors.default").info("Running job")
    logging.getLogger("apscheduler.scheduler").warning("job missed")
    assert [r["event"] for r in out.records()] == ["job missed"]

    out = configure(level="debug")
    structlog.get_logger("daemon.test").debug("idle poll")
    logging.getLogger("apscheduler.executors.default").info("Running job")
    assert [r["event"] for r in out.records()] == ["idle poll", "Running job"]


def test_reconfiguring_replaces_the_handler_instead_of_doubling_lines(
    configure: Callable[..., Output],
) -> None:
    configure()
    out = configure()

    structlog.get_logger().info("once")
    logging.getLogger("msal").warning("once too")

    assert [r["event"] for r in out.records()] == ["once", "once too"]


@pytest.mark.parametrize(
    ("emit", "secrets"),
    [
        pytest.param(
            lambda log: log.info(
                "config", tenants=[{"name": "c", "credential": {"client_secret": "inline-val"}}]
            ),
            ["inline-val"],
            id="nested-secret-key",
        ),
        pytest.param(
            lambda log: log.info("request", headers={"Authorization": "Basic dXNlcjpwdw=="}),
            ["dXNlcjpwdw=="],
            id="authorization-header-key",
        ),
        pytest.param(
            lambda log: log.info("token", access_token=OPAQUE_TOKEN, client_assertion=JWT),
            [OPAQUE_TOKEN, JWT],
            id="token-and-assertion-keys",
        ),
        pytest.param(
            lambda log: log.info(f"got token {JWT} for contoso"),  # noqa: G004 - the point
            [JWT],
            id="jwt-in-event-text",
        ),
        pytest.param(
            lambda log: log.info("claims", detail={"values": ["x", JWT]}),
            [JWT],
            id="jwt-nested-under-innocent-key",
        ),
        pytest.param(
            lambda log: log.info("http", line=f"Authorization: Bearer {OPAQUE_TOKEN}"),
            [OPAQUE_TOKEN],
            id="bearer-header-text",
        ),
        pytest.param(lambda log: log.info("sasl", data=XOAUTH2), [OPAQUE_TOKEN], id="xoauth2-raw"),
        pytest.param(
            lambda log: log.info("sasl", data=XOAUTH2.encode()),
            [OPAQUE_TOKEN],
            id="xoauth2-bytes",
        ),
        pytest.param(
            lambda log: log.info("sasl", data=repr(XOAUTH2.encode())),
            [OPAQUE_TOKEN],
            id="xoauth2-repr",
        ),
        pytest.param(
            lambda log: log.info(f"> AUTHENTICATE XOAUTH2 {XOAUTH2_B64}"),  # noqa: G004 - the point
            [XOAUTH2_B64, OPAQUE_TOKEN],
            id="xoauth2-base64-in-event",
        ),
        pytest.param(
            lambda log: log.info("read", value=CLIENT_SECRET, url=f"x?s={CLIENT_SECRET}"),
            [CLIENT_SECRET],
            id="registered-literal",
        ),
        pytest.param(
            lambda log: log.info("failed: %s", CLIENT_SECRET),
            [CLIENT_SECRET],
            id="registered-literal-positional",
        ),
        pytest.param(
            lambda log: log.info("error", error=ValueError(f"bad {JWT}")),
            [JWT],
            id="exception-object-as-value",
        ),
    ],
)
def test_secret_never_appears_in_structlog_output(
    configure: Callable[..., Output],
    emit: Callable[[Any], None],
    secrets: list[str],
) -> None:
    out = configure()

    emit(structlog.get_logger("daemon.test"))

    assert len(out.records()) == 1
    assert REDACTED in out.text
    _assert_no_secret(out.text, *secrets)


def _raise(exc: BaseException) -> None:
    raise exc


def _raise_chained() -> None:
    try:
        _raise(ConnectionError(f"server said: auth=Bearer {OPAQUE_TOKEN}"))
    except ConnectionError as exc:
        raise RuntimeError(f"login failed with {XOAUTH2!r} and {CLIENT_SECRET}") from exc


def test_tracebacks_are_scrubbed_from_structlog_exception(configure: Callable[..., Output]) -> None:
    out = configure()
    jwt = JWT  # the local appears in the source line of the traceback
    try:
        _raise(PermissionError(f"token {jwt} rejected"))
    except PermissionError:
        structlog.get_logger("daemon.test").exception("token rejected")
    try:
        _raise_chained()
    except RuntimeError:
        structlog.get_logger("daemon.test").exception("login failed")

    records = out.records()
    assert len(records) == 2
    assert all("Traceback" in r["exception"] for r in records)
    _assert_no_secret(out.text, JWT, OPAQUE_TOKEN, CLIENT_SECRET)


def test_stdlib_lines_are_json_and_scrubbed_including_tracebacks(
    configure: Callable[..., Output],
) -> None:
    out = configure()
    library = logging.getLogger("imapclient.imaplib")
    library.warning("> %s", f"AUTHENTICATE XOAUTH2 {XOAUTH2_B64}")
    logging.getLogger("urllib3.connectionpool").error("header Authorization: Bearer %s", JWT)
    try:
        _raise_chained()
    except RuntimeError:
        logging.getLogger("msal.application").exception("acquire failed")

    records = out.records()
    assert [r["logger"] for r in records] == [
        "imapclient.imaplib",
        "urllib3.connectionpool",
        "msal.application",
    ]
    assert "Traceback" in records[2]["exception"]
    _assert_no_secret(out.text, XOAUTH2_B64, JWT, OPAQUE_TOKEN, CLIENT_SECRET)


def test_secret_registered_after_configuration_is_scrubbed(
    configure: Callable[..., Output],
) -> None:
    out = configure()
    late = "late-registered-secret-42"

    assert out.secrets.register_secret(late)
    structlog.get_logger().info(f"loaded {late}", path="/run/secrets/x")

    _assert_no_secret(out.text, late)
    assert out.records()[0]["path"] == "/run/secrets/x"


def test_too_short_values_are_not_registered_as_secrets() -> None:
    secrets = SecretRegistry()

    assert not secrets.register_secret("  \n")
    assert not secrets.register_secret("abc")
    assert secrets.scrub("abc and more") == "abc and more"


def test_console_format_renders_text_and_still_scrubs(configure: Callable[..., Output]) -> None:
    out = configure(fmt="console")
    try:
        _raise_chained()
    except RuntimeError:
        structlog.get_logger("daemon.test").exception("login failed", token=OPAQUE_TOKEN)

    assert "login failed" in out.text
    assert "Traceback" in out.text
    assert not out.text.lstrip().startswith("{")
    _assert_no_secret(out.text, JWT, OPAQUE_TOKEN, CLIENT_SECRET)


def test_auto_format_writes_json_when_the_stream_is_not_a_terminal(
    configure: Callable[..., Output],
) -> None:
    out = configure(fmt="auto")

    structlog.get_logger().info("hello")

    assert out.records()[0]["event"] == "hello"


def test_ordinary_values_pass_through_unchanged(configure: Callable[..., Output]) -> None:
    out = configure()

    structlog.get_logger().info(
        "poll",
        mailbox="support@contoso.com",
        folder="Sent Items",
        new=3,
        duration_s=0.25,
        hint="grant the app IMAP.AccessAsApp and check the bearer token audience",
    )

    record = out.records()[0]
    assert record["mailbox"] == "support@contoso.com"
    assert record["folder"] == "Sent Items"
    assert record["new"] == 3
    assert record["duration_s"] == 0.25
    assert record["hint"].endswith("bearer token audience")


@pytest.mark.parametrize(("level", "fmt"), [("loud", "json"), ("info", "xml")])
def test_unknown_level_or_format_is_rejected(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(level, fmt, stream=io.StringIO())
