"""The daemon parks what an administrator has to fix as ``auth_failed`` and retries it slowly:
a mailbox without the application's grant, answered the way Exchange Online answers it (the
local environment's Exchange mode), and a tenant whose token request the identity platform
refuses with a code mailsyncd has no list entry for (no service principal in the tenant, a
federated credential whose subject does not match).
Each failure's hint names the fix with the real values; the mailboxes of others go on."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from daemon.auth.hints import token_object_id
from daemon.backoff import AUTH_RETRY_MIN
from localenv.client import IdpControl
from localenv.env import EnvInfo
from localenv.exchange_proxy import ExchangeProxy
from support.daemon import DaemonProcess, MailboxSpec, events, through, wait_for
from support.federated import projected_token_file

pytestmark = pytest.mark.slow

SETTLE = 60.0
FIRST_AUTH_RETRY = AUTH_RETRY_MIN * 0.8  # backoff.auth_retry_delay: at least this long


def status(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    code, body = daemon.get("/status")
    return {m["mailbox"]: m for m in json.loads(body)["mailboxes"]} if code == 200 else {}


def successes(daemon: DaemonProcess, tenant: str) -> float:
    return daemon.metric("mailsyncd_polls_total", tenant=tenant, outcome="success")


def failures_of(daemon: DaemonProcess, mailbox: str) -> list[dict[str, Any]]:
    return [e for e in events(daemon, "mailbox poll failed") if e.get("mailbox") == mailbox]


@pytest.fixture
def via_exchange(exchange: ExchangeProxy, env_info: EnvInfo) -> tuple[ExchangeProxy, Any]:
    """The Exchange-mode proxy, and the config overrides that send IMAP through it."""
    return exchange, through(env_info, exchange.port)


@pytest.fixture
def contoso_oid(idp: IdpControl, env_info: EnvInfo) -> Callable[[], str | None]:
    """Returns the ``oid`` of the last token issued to contoso's application (its service
    principal's object id), once the daemon has one."""
    client_id = env_info.tenant("contoso").client_id

    def find() -> str | None:
        for token in reversed(idp.issued_secrets()["tokens"]):
            if jwt.decode(token, options={"verify_signature": False}).get("appid") == client_id:
                return token_object_id(token)
        return None

    return find


@dataclass(frozen=True)
class Refusal:
    """A tenant whose token request the identity platform refuses, and how it says so."""

    tenant: str
    other: str
    aadsts: int
    hint: str
    credential: dict[str, str] | None = None


@pytest.fixture(params=["no service principal", "federated subject mismatch"])
def refusal(
    request: pytest.FixtureRequest, idp: IdpControl, env_info: EnvInfo, tmp_path: Path
) -> Iterator[Refusal]:
    """The platform refuses one tenant's application until the test ends."""
    if request.param == "no service principal":
        registered = env_info.tenant("contoso")
        setting: dict[str, bool] = {"service_principal": False}
        made = Refusal(
            "contoso", "fabrikam", 7000229, f"az ad sp create --id {registered.client_id}"
        )
    else:
        registered = env_info.tenant("fabrikam")
        setting = {"federated_detail": True}
        subject = "system:serviceaccount:elsewhere:mailsyncd"
        token_file = projected_token_file(env_info, tmp_path, subject=subject)
        made = Refusal(
            "fabrikam",
            "contoso",
            700213,
            f"sub {subject}",
            {"federated_token_file": str(token_file)},
        )
    idp.update_client(registered.tenant_id, registered.client_id, set_=setting)
    try:
        yield made
    finally:
        idp.update_client(registered.tenant_id, registered.client_id, unset=list(setting))


def test_mailbox_without_grant_is_auth_failed_with_the_grant_and_not_retried_soon(
    mailsyncd: Callable[..., DaemonProcess],
    make_sqlite_url: Callable[[], str],
    new_mailbox: Callable[..., str],
    via_exchange: tuple[ExchangeProxy, Any],
    contoso_oid: Callable[[], str | None],
) -> None:
    exchange, extra = via_exchange
    healthy, refused = new_mailbox(), new_mailbox()
    exchange.deny_mailbox(refused)
    daemon = mailsyncd(
        database_url=make_sqlite_url(),
        mailboxes=[MailboxSpec(healthy), MailboxSpec(refused)],
        extra=extra,
    )
    parked = wait_for(
        lambda: (
            status(daemon).get(refused, {}).get("state") == "auth_failed"
            and status(daemon)[refused]
        ),
        timeout=SETTLE,
        what="the refused mailbox in auth_failed",
    )
    oid = contoso_oid()
    assert oid
    assert parked["last_error_reason"] == "auth"
    assert "not connected" in parked["last_error"]
    assert (
        f"Add-MailboxPermission -Identity {refused} -User {oid} -AccessRights FullAccess"
        in parked["hint"]
    )
    [logged] = wait_for(lambda: failures_of(daemon, refused), timeout=10, what="its log line")
    assert logged["state"] == "auth_failed"
    assert logged["reason"] == "auth"
    assert logged["retry_in_s"] >= FIRST_AUTH_RETRY
    assert f"-Identity {refused} -User {oid}" in logged["hint"]
    # Several polls of the healthy mailbox (1 s interval) later: one login for the refused one.
    polled = successes(daemon, "contoso")
    wait_for(
        lambda: successes(daemon, "contoso") >= polled + 5,
        timeout=SETTLE,
        what="five more polls of the healthy mailbox",
    )
    assert exchange.logins_of(refused) == 1
    assert status(daemon)[refused]["consecutive_failures"] == 1
    assert status(daemon)[healthy]["state"] == "ok"
    assert daemon.stop() == 0


def test_refused_token_request_parks_the_tenants_mailboxes_as_auth_failed(
    mailsyncd: Callable[..., DaemonProcess],
    make_sqlite_url: Callable[[], str],
    new_mailbox: Callable[..., str],
    via_exchange: tuple[ExchangeProxy, Any],
    refusal: Refusal,
) -> None:
    exchange, extra = via_exchange
    if refusal.credential is not None:
        for entry in extra["tenants"]:
            if entry["name"] == refusal.tenant:
                entry["credential"] = refusal.credential
    refused, other = new_mailbox(f"{refusal.tenant}.test"), new_mailbox(f"{refusal.other}.test")
    daemon = mailsyncd(
        database_url=make_sqlite_url(),
        mailboxes=[
            MailboxSpec(refused, tenant=refusal.tenant),
            MailboxSpec(other, tenant=refusal.other),
        ],
        extra=extra,
    )
    parked = wait_for(
        lambda: (
            status(daemon).get(refused, {}).get("state") == "auth_failed"
            and status(daemon)[refused]
        ),
        timeout=SETTLE,
        what=f"the {refusal.tenant} mailbox in auth_failed",
    )
    assert parked["last_error_reason"] == "token"
    assert f"AADSTS{refusal.aadsts}" in parked["last_error"]
    assert refusal.hint in parked["hint"]
    [logged] = wait_for(lambda: failures_of(daemon, refused), timeout=10, what="its log line")
    assert logged["retry_in_s"] >= FIRST_AUTH_RETRY
    rejected = [
        e for e in events(daemon, "token request rejected") if e["tenant"] == refusal.tenant
    ]
    assert rejected
    assert rejected[0]["aadsts"] == refusal.aadsts
    polled = successes(daemon, refusal.other)
    wait_for(
        lambda: successes(daemon, refusal.other) >= polled + 5,
        timeout=SETTLE,
        what="five more polls of the other tenant's mailbox",
    )
    assert status(daemon)[refused]["state"] == "auth_failed"
    assert status(daemon)[refused]["consecutive_failures"] == 1
    assert exchange.logins_of(refused) == 0  # no token, no login attempt
    assert status(daemon)[other]["state"] == "ok"
    assert daemon.stop() == 0
