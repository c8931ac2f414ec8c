"""Token lifecycle of the real `mailsyncd run` against the local identity platform and Dovecot.

Scale of token requests, outages before and past a token's expiry, certificate and federated
credentials, secret rotation without restart, and no secret in a whole debug run (SPEC "What it
is", "Scale targets", "Logs"; shared notes "Tokens").

The refresher's arithmetic that the bounds below come from (daemon/auth/refresher.py):
a token obtained at t with lifetime L is renewed at t + 2L/3 and handed out until
t + L - min(60, L/10). A failed renewal while the token is valid is retried after
uniform(0.5, 1) * 2**(n-1) s; once no valid token remains the cap is poll_interval / 2.
The daemon owns MSAL's HTTP cache and empties it before every request, so MSAL never
replays an old 5xx/429/400 answer: every failure counted is a request the platform answered.

The platform is shared by every test of the worker: each test that changes it (lifetime,
failures, registered secrets or audience) restores it, and reads the request log filtered by
client id and time window.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from localenv import pki
from localenv.client import IdpControl
from localenv.env import EnvInfo, LocalEnv
from localenv.imap import FixtureImap
from localenv.seed import realistic_messages
from support.daemon import DaemonProcess, MailboxSpec, epoch, events, view_rows, wait_for

pytestmark = pytest.mark.slow

TENANTS = ("contoso", "fabrikam")


# -- helpers ----------------------------------------------------------------------------------


def token_requests(
    idp: IdpControl,
    info: EnvInfo,
    tenant: str,
    since: float,
    *,
    until: float | None = None,
    status: int | None = None,
) -> list[dict[str, Any]]:
    """The platform's log of a tenant's token requests in [since, until]."""
    client_id = info.tenant(tenant).client_id
    return [
        r
        for r in idp.requests()
        if r["client_id"] == client_id
        and r["time"] >= since
        and (until is None or r["time"] <= until)
        and (status is None or r["status"] == status)
    ]


def run_until(daemon: DaemonProcess, when: float) -> None:
    """Let the daemon run until the wall-clock time ``when``, failing early if it exits."""
    while (left := when - time.time()) > 0:
        daemon.running()
        time.sleep(min(left, 1.0))
    daemon.running()


def first_token_time(idp: IdpControl, info: EnvInfo, tenants: Iterable[str], since: float) -> float:
    """When the daemon's first token request of each tenant succeeded (the latest of them)."""
    times = []
    for tenant in tenants:
        ok = wait_for(
            lambda t=tenant: token_requests(idp, info, t, since, status=200),
            timeout=60,
            what=f"first token of {tenant}",
        )
        times.append(ok[0]["time"])
    return max(times)


def copy_secret(info: EnvInfo, tenant: str, directory: Path) -> Path:
    path = directory / f"{tenant}-client-secret"
    pki.write_private(path, Path(info.tenant(tenant).secret_file).read_bytes())
    return path


# -- a. scale: one token request per 2/3 lifetime per tenant, whatever the mailbox count --------

RUN_A = 300.0
LIFETIME_A = 60


@pytest.mark.timeout(RUN_A + 240)
def test_200_mailboxes_on_60s_tokens_make_one_token_request_per_40s_per_tenant(
    mailsyncd: Callable[..., DaemonProcess],
    make_pg_url: Callable[[], str],
    new_mailbox: Callable[..., str],
    env_info: EnvInfo,
    idp: IdpControl,
) -> None:
    idp.set_token_lifetime(LIFETIME_A)
    mailboxes = [
        MailboxSpec(new_mailbox(f"{tenant}.test", "scale"), tenant=tenant)
        for tenant in TENANTS
        for _ in range(100)
    ]
    started = time.time()
    daemon = mailsyncd(
        database_url=make_pg_url(),
        mailboxes=mailboxes,
        poll_interval="5s",
        # 200 mailboxes every 5 s is 40 polls/s; a poll on loopback takes tens of ms, so these
        # bounds leave every poll a slot the moment it is due.
        extra={"limits": {"max_concurrent_polls": 64, "max_concurrent_polls_per_tenant": 32}},
    )
    daemon.wait_ready()
    ready = time.time()
    run_until(daemon, started + RUN_A)
    polls_ok = daemon.metric("mailsyncd_polls_total", outcome="success")
    polls_failed = daemon.metric("mailsyncd_polls_total", outcome="failure")
    token_failures = daemon.metric("mailsyncd_poll_failures_total", reason="token")
    token_request_failures = daemon.metric("mailsyncd_token_requests_total", outcome="failure")
    assert daemon.stop() == 0
    stopped = time.time()

    counts = {}
    for tenant in TENANTS:
        log = token_requests(idp, env_info, tenant, started, until=stopped)
        assert all(r["status"] == 200 for r in log), log
        assert all(r["expires_in"] == LIFETIME_A for r in log)
        counts[tenant] = len(log)
        gaps = [round(b["time"] - a["time"], 1) for a, b in itertools.pairwise(log)]
        print(f"{tenant}: {len(log)} token requests in {stopped - started:.0f} s, gaps {gaps}")
        # Renewed at 2/3 of 60 s: gaps of 40 s plus the refresher's wake-up latency.
        assert all(39.5 <= gap <= 42 for gap in gaps), gaps
    # 1 at start + one per 40 s over the ~300 s run: 1 + 300/40 = 8.5, so 8 or 9; 7..10 allows
    # for a slow start and the stop. 200 mailboxes at 5 s without a shared token would be
    # 12,000 requests.
    assert all(7 <= n <= 10 for n in counts.values()), counts

    nominal = len(mailboxes) * (stopped - ready) / 5.0
    print(
        f"polls: {polls_ok:.0f} succeeded, {polls_failed:.0f} failed, nominal {nominal:.0f} "
        f"({polls_ok / nominal:.0%}); token failures {token_failures:.0f}"
    )
    assert token_failures == 0
    assert token_request_failures == 0
    # The polls really happened at (nearly) the configured rate: the first ones spread over
    # 2.5 s and intervals jitter by 2%, so 90% of nominal is a floor a healthy run clears.
    assert polls_ok >= 0.9 * nominal


# -- b. an outage that spans a scheduled refresh, while the token is still valid --------------

# 120 s tokens cannot absorb a 30 s outage reliably: renewal at 80 s, usable until 108 s, and
# a renewal failing at ~95-100 s waits 8-32 s for its next try (see the bug report on
# refresher backoff). 180 s tokens: renewal due at 120 s, outage from 105 s to 135 s, usable
# until 162 s. The 6th try comes at 120 + 15.5..31 s, after the outage and before 162 s,
# whatever the jitter.
LIFETIME_B = 180
OUTAGE_B = (105.0, 135.0)


@pytest.mark.timeout(LIFETIME_B + 180)
def test_503_for_30s_spanning_a_scheduled_refresh_fails_no_poll_and_the_refresh_succeeds_after(
    mailsyncd: Callable[..., DaemonProcess],
    make_sqlite_url: Callable[[], str],
    new_mailbox: Callable[..., str],
    env_info: EnvInfo,
    idp: IdpControl,
) -> None:
    idp.set_token_lifetime(LIFETIME_B)
    mailboxes = [
        MailboxSpec(new_mailbox(f"{tenant}.test", "outage"), tenant=tenant)
        for tenant in TENANTS
        for _ in range(3)
    ]
    started = time.time()
    daemon = mailsyncd(database_url=make_sqlite_url(), mailboxes=mailboxes, poll_interval="2s")
    t0 = first_token_time(idp, env_info, TENANTS, started)
    run_until(daemon, t0 + OUTAGE_B[0])
    polls_before = daemon.metric("mailsyncd_polls_total", outcome="success")
    outage_start = time.time()
    idp.fail(seconds=OUTAGE_B[1] - OUTAGE_B[0], status=503)
    outage_end = outage_start + OUTAGE_B[1] - OUTAGE_B[0]
    run_until(daemon, outage_end)
    polls_during = daemon.metric("mailsyncd_polls_total", outcome="success") - polls_before

    renewed = {}
    for tenant in TENANTS:
        ok = wait_for(
            lambda t=tenant: token_requests(idp, env_info, t, outage_start, status=200),
            timeout=40,
            what=f"renewal of {tenant} after the outage",
        )
        renewed[tenant] = ok[0]["time"]
    # Some polls on the renewed tokens.
    run_until(daemon, max(renewed.values()) + 5)
    failed_requests = {
        t: daemon.metric("mailsyncd_token_requests_total", tenant=t, outcome="failure")
        for t in TENANTS
    }
    polls_failed = daemon.metric("mailsyncd_polls_total", outcome="failure")
    expiry = {
        t: daemon.metric("mailsyncd_token_expiry_timestamp_seconds", tenant=t) for t in TENANTS
    }
    assert daemon.stop() == 0

    for tenant in TENANTS:
        answered_503 = token_requests(
            idp, env_info, tenant, outage_start, until=outage_end, status=503
        )
        print(
            f"{tenant}: renewal due at t0+{LIFETIME_B * 2 / 3:.0f} s, outage "
            f"t0+{outage_start - t0:.1f}..{outage_end - t0:.1f} s, {len(answered_503)} requests "
            f"answered 503, {failed_requests[tenant]:.0f} failures counted, renewed at "
            f"t0+{renewed[tenant] - t0:.1f} s (token usable until t0+162 s)"
        )
        # The scheduled renewal fell inside the outage, was retried, and was counted.
        assert answered_503
        assert answered_503[0]["time"] >= t0 + LIFETIME_B * 2 / 3 - 1
        # Every failure counted is a request the platform answered (no MSAL replays).
        assert failed_requests[tenant] == len(answered_503)
        # Renewed after the platform recovered, before the old token ran out.
        assert outage_end - 1 <= renewed[tenant] <= t0 + LIFETIME_B - 18
        assert expiry[tenant] >= renewed[tenant] + LIFETIME_B - 5
    print(f"polls during the outage: {polls_during:.0f} succeeded; failures overall {polls_failed}")
    assert polls_failed == 0
    assert polls_during >= len(mailboxes) * (outage_end - outage_start) / 2.0 * 0.8
    warnings = events(daemon, "token request failed")
    assert warnings
    # Logged as warnings that say the current token is still valid for a while.
    assert all(w["level"] == "warning" and w["valid_for_s"] > 0 for w in warnings)
    assert not events(daemon, "mailbox poll failed")


# -- c. an outage past the token's expiry ----------------------------------------------------

LIFETIME_C = 60
POLL_C = 5.0
OUTAGE_C = (30.0, 100.0)  # the token is usable until 54 s: 46 s without a token
MAILBOXES_C = 20
WAKE_SPREAD_S = 2.0  # scheduler.wake_tenant spreads the woken polls over this long


@pytest.mark.timeout(OUTAGE_C[1] + 180)
def test_outage_past_expiry_fails_polls_at_a_bounded_rate_and_all_recover_within_an_interval(
    mailsyncd: Callable[..., DaemonProcess],
    make_sqlite_url: Callable[[], str],
    new_mailbox: Callable[..., str],
    env_info: EnvInfo,
    idp: IdpControl,
) -> None:
    idp.set_token_lifetime(LIFETIME_C)
    mailboxes = [
        MailboxSpec(new_mailbox(f"{TENANTS[i % 2]}.test", "expiry"), tenant=TENANTS[i % 2])
        for i in range(MAILBOXES_C)
    ]
    started = time.time()
    daemon = mailsyncd(
        database_url=make_sqlite_url(), mailboxes=mailboxes, poll_interval=f"{POLL_C:.0f}s"
    )
    t0 = first_token_time(idp, env_info, TENANTS, started)
    run_until(daemon, t0 + OUTAGE_C[0])
    outage_start = time.time()
    idp.fail(seconds=OUTAGE_C[1] - OUTAGE_C[0], status=503)
    outage_end = outage_start + OUTAGE_C[1] - OUTAGE_C[0]
    run_until(daemon, outage_end)

    def all_recovered() -> list[dict[str, Any]] | None:
        recovered = [e for e in events(daemon, "mailbox recovered") if epoch(e) >= outage_start]
        return recovered if len({e["mailbox"] for e in recovered}) == MAILBOXES_C else None

    recovered = wait_for(all_recovered, timeout=60, what="every mailbox recovered")
    # The state gauge is refreshed every 5 s by housekeeping.
    wait_for(
        lambda: daemon.metric("mailsyncd_mailboxes", state="ok") == MAILBOXES_C,
        timeout=10,
        what="mailsyncd_mailboxes{state=ok} back to the total",
    )
    token_failures = daemon.metric("mailsyncd_poll_failures_total", reason="token")
    other_failures = daemon.metric("mailsyncd_polls_total", outcome="failure") - token_failures
    counted_request_failures = daemon.metric("mailsyncd_token_requests_total", outcome="failure")
    assert daemon.stop() == 0

    # Token failures: per mailbox, the first poll after the token's end (54 s) fails, then the
    # poll backoff doubles from the interval: retries after >= 2.5, 5, 10, 20 s (cumulative
    # 2.5, 7.5, 17.5, 37.5, 77.5 s), so a ~50 s window without a token allows at most 5.
    per_mailbox = Counter({e["mailbox"]: e["failures"] for e in recovered})
    print(
        f"token failures: {token_failures:.0f} for {MAILBOXES_C} mailboxes "
        f"({token_failures / MAILBOXES_C:.1f} each; per mailbox {sorted(per_mailbox.values())})"
    )
    assert {e["previous_state"] for e in recovered} == {"backoff"}
    assert max(per_mailbox.values()) <= 5
    assert token_failures == sum(per_mailbox.values())
    assert other_failures == 0

    # Token requests during the outage: renewal due at 40 s, backoff from 1 s while the token
    # is valid (<= 5 tries before 54 s), then at most every poll_interval / 2 = 2.5 s with
    # jitter down to 1.25 s.
    outage_s = outage_end - outage_start
    for tenant in TENANTS:
        during = token_requests(idp, env_info, tenant, outage_start, until=outage_end)
        assert all(r["status"] == 503 for r in during)
        print(
            f"{tenant}: {len(during)} token requests reached the platform in the "
            f"{outage_s:.0f} s outage ({len(during) / outage_s * 60:.1f}/min)"
        )
        assert 1 <= len(during) <= outage_s / (POLL_C / 2 / 2) + 5
    print(f"token request failures counted: {counted_request_failures:.0f}")

    # Recovery: the renewal after the outage, then every parked mailbox polled at once.
    renewed = {
        t: token_requests(idp, env_info, t, outage_end, status=200)[0]["time"] for t in TENANTS
    }
    last = {e["mailbox"]: epoch(e) for e in sorted(recovered, key=epoch)}
    delays = sorted(round(ts - outage_end, 1) for ts in last.values())
    print(
        "renewed after the outage at "
        + ", ".join(f"{t} +{ts - outage_end:.1f} s" for t, ts in renewed.items())
        + f"; mailboxes recovered at +{delays[0]}..+{delays[-1]} s: {delays}"
    )
    # The daemon's part: a tenant's renewal wakes its parked mailboxes, spread over 2 s.
    tenant_of = {m.address: m.tenant for m in mailboxes}
    assert all(ts - renewed[tenant_of[m]] <= WAKE_SPREAD_S + 1 for m, ts in last.items())
    # The renewal itself: without a token the refresher retries at most poll_interval / 2
    # apart; then the woken polls are spread over 2 s: back within one poll interval.
    assert all(ts - outage_end <= POLL_C / 2 + 0.5 for ts in renewed.values())
    assert max(last.values()) - outage_end <= POLL_C


# -- d. certificate and federated credentials; a wrong certificate ---------------------------


@pytest.mark.timeout(180)
def test_certificate_and_federated_credentials_sync_and_a_wrong_certificate_gives_700027(
    *,
    mailsyncd: Callable[..., DaemonProcess],
    make_sqlite_url: Callable[[], str],
    new_mailbox: Callable[..., str],
    fixture_imap: Callable[[str], FixtureImap],
    env_info: EnvInfo,
    local_env: LocalEnv,
    idp: IdpControl,
    tmp_path: Path,
) -> None:
    contoso, fabrikam = env_info.tenant("contoso"), env_info.tenant("fabrikam")
    local_env.write_federated_token("fabrikam")  # fresh, whatever ran before
    seeded = {new_mailbox("contoso.test", "cert"): 7, new_mailbox("fabrikam.test", "fed"): 5}
    for seed, (mailbox, count) in enumerate(seeded.items()):
        fixture_imap(mailbox).append("INBOX", realistic_messages(count, seed=40 + seed))
    started = time.time()
    database_url = make_sqlite_url()
    good = mailsyncd(
        database_url=database_url,
        mailboxes=[MailboxSpec(m, tenant=m.split("@")[1].split(".")[0]) for m in seeded],
        poll_interval="2s",
        extra={
            "tenants": [
                env_info.tenant_config(
                    "contoso",
                    credential={
                        "certificate": {
                            "private_key_file": contoso.private_key_file,
                            "certificate_file": contoso.certificate_file,
                        }
                    },
                ),
                env_info.tenant_config(
                    "fabrikam", credential={"federated_token_file": fabrikam.federated_token_file}
                ),
            ]
        },
    )

    key, cert = pki.self_signed("mailsyncd-unknown")
    key_file = pki.write_private(tmp_path / "unknown-key.pem", pki.key_pem(key))
    cert_file = tmp_path / "unknown-cert.pem"
    cert_file.write_bytes(pki.cert_pem(cert))
    rejected_mailbox = new_mailbox("contoso.test", "wrongcert")
    bad = mailsyncd(
        database_url=make_sqlite_url(),
        mailboxes=[MailboxSpec(rejected_mailbox)],
        poll_interval="2s",
        extra={
            "tenants": [
                env_info.tenant_config(
                    "contoso",
                    credential={
                        "certificate": {
                            "private_key_file": str(key_file),
                            "certificate_file": str(cert_file),
                        }
                    },
                )
            ]
        },
    )

    def synced(mailbox: str, count: int) -> bool:
        try:
            return len(view_rows(database_url, mailbox)) == count
        except Exception:  # noqa: BLE001 - the schema may not exist yet while the daemon starts
            return False

    for mailbox, count in seeded.items():
        wait_for(lambda m=mailbox, n=count: synced(m, n), timeout=60, what=f"rows of {mailbox}")
    assert good.metric("mailsyncd_poll_failures_total") == 0
    assert good.stop() == 0
    kinds = {
        tenant: {
            (r["status"], r["credential"]) for r in token_requests(idp, env_info, tenant, started)
        }
        for tenant in TENANTS
    }
    assert (200, "certificate") in kinds["contoso"]
    assert (200, "federated") in kinds["fabrikam"]

    wait_for(
        lambda: bad.metric("mailsyncd_mailboxes", state="auth_failed") == 1,
        timeout=30,
        what="the mailbox of the unknown certificate in auth_failed",
    )
    assert bad.metric("mailsyncd_poll_failures_total", reason="token") >= 1
    assert bad.metric("mailsyncd_token_requests_total", outcome="failure") >= 1
    assert bad.stop() == 0
    rejected = [e for e in bad.log_lines() if e["level"] == "error" and e.get("aadsts") == 700027]
    print(f"log of the wrong certificate: {rejected[0]}")
    assert rejected
    assert pki.thumbprint(cert) in rejected[0]["hint"]
    assert "certificate" in rejected[0]["hint"]
    failed_polls = [e for e in events(bad, "mailbox poll failed") if e["reason"] == "token"]
    assert failed_polls
    assert failed_polls[0]["state"] == "auth_failed"
    assert pki.thumbprint(cert) in failed_polls[0]["hint"]


# -- e. a rotated secret file is picked up without restart -----------------------------------

LIFETIME_E = 30  # renewal every 20 s


@pytest.mark.timeout(180)
def test_rotated_secret_file_is_picked_up_at_the_next_refresh_without_restart(
    *,
    mailsyncd: Callable[..., DaemonProcess],
    make_sqlite_url: Callable[[], str],
    new_mailbox: Callable[..., str],
    env_info: EnvInfo,
    idp: IdpControl,
    tmp_path: Path,
) -> None:
    contoso = env_info.tenant("contoso")
    secret_file = copy_secret(env_info, "contoso", tmp_path)
    new_secret = secrets.token_urlsafe(30)
    idp.set_token_lifetime(LIFETIME_E)
    try:
        started = time.time()
        daemon = mailsyncd(
            database_url=make_sqlite_url(),
            mailboxes=[MailboxSpec(new_mailbox("contoso.test", "rotate")) for _ in range(3)],
            poll_interval="2s",
            level="debug",
            extra={
                "tenants": [
                    env_info.tenant_config(
                        "contoso", credential={"client_secret_file": str(secret_file)}
                    )
                ]
            },
        )
        t0 = first_token_time(idp, env_info, ["contoso"], started)
        wait_for(
            lambda: daemon.metric("mailsyncd_polls_total", outcome="success") >= 3,
            timeout=30,
            what="first polls",
        )
        # The operator's order: add the new secret, deploy the file, delete the old secret.
        idp.update_client(
            contoso.tenant_id,
            contoso.client_id,
            set_={"secrets": [{"value": contoso.secret, "expires": None}, {"value": new_secret}]},
        )
        secret_file.write_text(new_secret + "\n")
        idp.update_client(
            contoso.tenant_id, contoso.client_id, set_={"secrets": [{"value": new_secret}]}
        )
        rotated = time.time()
        assert rotated < t0 + LIFETIME_E * 2 / 3, "rotation must come before the next refresh"
        after = wait_for(
            lambda: token_requests(idp, env_info, "contoso", rotated, status=200),
            timeout=LIFETIME_E,
            what="a token request after the rotation",
        )
        polls_at_refresh = daemon.metric("mailsyncd_polls_total", outcome="success")
        wait_for(
            lambda: (
                daemon.metric("mailsyncd_polls_total", outcome="success") >= polls_at_refresh + 6
            ),
            timeout=20,
            what="polls on the token got with the new secret",
        )
        failures = daemon.metric("mailsyncd_polls_total", outcome="failure")
        token_failures = daemon.metric("mailsyncd_token_requests_total", outcome="failure")
        assert daemon.stop() == 0
    finally:
        idp.update_client(
            contoso.tenant_id,
            contoso.client_id,
            set_={"secrets": [{"value": contoso.secret, "expires": None}]},
        )
    log = token_requests(idp, env_info, "contoso", started)
    timeline = [(round(r["time"] - t0, 1), r["status"]) for r in log]
    print(
        f"rotated at t0+{rotated - t0:.1f} s; first request after it at "
        f"t0+{after[0]['time'] - t0:.1f} s; requests (t0+s, status): {timeline}"
    )
    # The old secret is gone from the platform, so that 200 proves the new file was read.
    assert all(r["status"] == 200 for r in log)
    assert after[0]["time"] >= t0 + LIFETIME_E * 2 / 3 - 1
    assert failures == 0
    assert token_failures == 0
    text = daemon.log_text()
    assert new_secret not in text
    assert contoso.secret not in text


# -- f. no secret in a whole debug run -------------------------------------------------------

LIFETIME_F = 15  # renewed at 10 s


def _xoauth2_forms(mailbox: str, token: str) -> list[str]:
    raw = f"user={mailbox}\x01auth=Bearer {token}\x01\x01"
    return [
        raw,
        json.dumps(raw)[1:-1],  # as a JSON string escapes it
        raw.encode("unicode_escape").decode(),  # as repr() shows it
        base64.b64encode(raw.encode()).decode(),  # as sent in AUTHENTICATE XOAUTH2
    ]


def _jwt_parts(value: str) -> list[str]:
    parts = value.split(".")
    return [p for p in parts[1:] if len(p) >= 16] if len(parts) == 3 else []


@pytest.mark.timeout(180)
def test_debug_run_output_contains_no_token_secret_assertion_or_xoauth2_string(
    *,
    mailsyncd: Callable[..., DaemonProcess],
    make_sqlite_url: Callable[[], str],
    new_mailbox: Callable[..., str],
    fixture_imap: Callable[[str], FixtureImap],
    env_info: EnvInfo,
    idp: IdpControl,
) -> None:
    contoso, fabrikam = env_info.tenant("contoso"), env_info.tenant("fabrikam")
    mailboxes = [
        MailboxSpec(new_mailbox(f"{tenant}.test", "leak"), tenant=tenant)
        for tenant in TENANTS
        for _ in range(2)
    ]
    fixture_imap(mailboxes[0].address).append("INBOX", realistic_messages(3, seed=61))
    idp.set_token_lifetime(LIFETIME_F)
    started = time.time()
    daemon = mailsyncd(
        database_url=make_sqlite_url(),
        mailboxes=mailboxes,
        poll_interval="2s",
        level="debug",
        extra={
            "tenants": [
                env_info.tenant_config(
                    "contoso", credential={"client_secret_file": contoso.secret_file}
                ),
                env_info.tenant_config(
                    "fabrikam",
                    credential={
                        "certificate": {
                            "private_key_file": fabrikam.private_key_file,
                            "certificate_file": fabrikam.certificate_file,
                        }
                    },
                ),
            ]
        },
    )
    try:
        first_token_time(idp, env_info, TENANTS, started)
        # From now on fabrikam's tokens name another audience: Dovecot rejects the login with
        # the next token (after the renewal at 10 s), so a bad token crosses AUTHENTICATE.
        idp.update_client(
            fabrikam.tenant_id, fabrikam.client_id, set_={"audience": "https://wrong.example"}
        )
        wait_for(
            lambda: (
                daemon.metric("mailsyncd_imap_logins_total", tenant="fabrikam", outcome="failure")
                >= 1
            ),
            timeout=LIFETIME_F + 15,
            what="a login failed with a bad token",
        )
        wait_for(
            lambda: len(token_requests(idp, env_info, "contoso", started, status=200)) >= 2,
            timeout=LIFETIME_F,
            what="a renewal of contoso's token",
        )
        assert daemon.stop() == 0
    finally:
        idp.update_client(fabrikam.tenant_id, fabrikam.client_id, unset=["audience"])

    text = daemon.log_text()
    lines = daemon.log_lines()
    levels = Counter(line["level"] for line in lines)
    print(f"{len(text)} bytes, {len(lines)} lines by level {dict(levels)}")
    assert levels["debug"] > 0
    assert any(line.get("logger", "").startswith(("msal", "urllib3")) for line in lines), (
        "library debug output was captured too"
    )
    assert any(e["reason"] == "auth" for e in events(daemon, "mailbox poll failed"))

    issued = idp.issued_secrets()
    mine = [
        r for r in idp.requests() if r["time"] >= started and r["status"] == 200
    ]  # this run's tokens are among the newest ones issued
    assert len(issued["tokens"]) >= len(mine) >= 4
    needles: dict[str, str] = {}
    for tenant in env_info.tenants:
        needles[tenant.secret] = f"client secret of {tenant.name}"
        for line in Path(tenant.private_key_file).read_text().splitlines():
            if len(line) >= 16 and not line.startswith("-----"):
                needles[line] = f"private key of {tenant.name}"
    for token in issued["tokens"]:
        needles[token] = "access token"
        for part in _jwt_parts(token):
            needles[part] = "part of an access token"
        for mailbox in mailboxes:
            for form in _xoauth2_forms(mailbox.address, token):
                needles[form] = "XOAUTH2 string"
    for assertion in issued["assertions"]:
        needles[assertion] = "client assertion"
        for part in _jwt_parts(assertion):
            needles[part] = "part of a client assertion"
    found = sorted({what for needle, what in needles.items() if needle in text})
    print(f"searched for {len(needles)} literal values")
    assert found == []
