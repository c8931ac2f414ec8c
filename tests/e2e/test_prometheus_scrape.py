"""A real Prometheus scrapes a real daemon: metric names, values, alert rules, dashboard queries.

One scenario serves the first tests of this module (module-scoped: a Prometheus and a daemon
that has synced): four tenants, two healthy, one whose client secret is wrong (polls fail with
reason ``token``, the mailbox goes ``auth_failed``), one whose IMAP port is closed (reason
``connect``, ``backoff``). Prometheus scrapes every second and evaluates
``deploy/prometheus/alerts.yaml``; the tests read everything back through its HTTP API, as
a dashboard or an alert would. Prometheus is the Debian package (``make packages``), run on
a free port with its own storage and stopped by PID.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import math
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import daemon
from localenv.env import EnvInfo, LocalEnv, free_port
from localenv.imap import FixtureImap
from localenv.seed import realistic_messages
from support.daemon import DaemonProcess, MailboxSpec, make_config, wait_for

# One worker runs the whole module under xdist, so the module's scenario is built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("prometheus-scrape")]

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "mailsyncd.json"

# SPEC "Metrics": names and types are the contract.
SPEC_METRICS = {
    "mailsyncd_polls_total": "counter",
    "mailsyncd_poll_failures_total": "counter",
    "mailsyncd_poll_duration_seconds": "histogram",
    "mailsyncd_schedule_delay_seconds": "histogram",
    "mailsyncd_messages_synced_total": "counter",
    "mailsyncd_sync_lag_seconds": "histogram",
    "mailsyncd_token_requests_total": "counter",
    "mailsyncd_token_expiry_timestamp_seconds": "gauge",
    "mailsyncd_imap_logins_total": "counter",
    "mailsyncd_mailboxes": "gauge",
    "mailsyncd_oldest_successful_poll_timestamp_seconds": "gauge",
    "mailsyncd_db_write_duration_seconds": "histogram",
    "mailsyncd_build_info": "gauge",
    "mailsyncd_imap_sessions_open": "gauge",
    "mailsyncd_mailboxes_owned": "gauge",
    "mailsyncd_replicas": "gauge",
    "mailsyncd_config_last_reload_successful": "gauge",
    "mailsyncd_config_last_reload_success_timestamp_seconds": "gauge",
}
HISTOGRAMS = [name for name, kind in SPEC_METRICS.items() if kind == "histogram"]
# Messages seeded per healthy mailbox (tenant, count).
SEEDED = {"contoso": (12, 7), "fabrikam": (5,)}
GOOD_TENANTS = ("contoso", "fabrikam", "closedport")  # their token requests succeed
NEW_MAIL = 3  # messages appended to a contoso mailbox after its first sync
PROMETHEUS_START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class PrometheusError(AssertionError):
    """The Prometheus HTTP API answered with an error."""


class Prometheus:
    """A Prometheus server process on 127.0.0.1:<port>, and a client of its HTTP API."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: run `make packages` (Debian package)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._ready, timeout=PROMETHEUS_START_TIMEOUT, what="prometheus /-/ready")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{self.port}/-/ready"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        return False

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL: only this process, by its PID."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a success, else PrometheusError."""
        query = urllib.parse.urlencode(params, doseq=True)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                raise PrometheusError(f"{path} {params}: {exc.code} {exc.read()!r}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        if body.get("warnings"):
            raise PrometheusError(f"{path} {params}: warnings {body['warnings']}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at the current time: the result vector."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def value(self, expr: str) -> float:
        """The single value of ``expr``; NaN when the result is empty."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else math.nan


@dataclass
class Scenario:
    prometheus: Prometheus
    daemon: DaemonProcess
    seeded: dict[str, int]  # new messages per tenant
    mailboxes: dict[str, str]  # tenant -> one of its mailboxes

    def sum(self, expr: str) -> float:
        return self.prometheus.value(f"sum({expr})")


def _start_daemon(workdir: Path, config: dict[str, Any], port: int) -> DaemonProcess:
    path = workdir / "mailsyncd.yaml"
    path.write_text(yaml.safe_dump(config))
    return DaemonProcess(path, workdir / "mailsyncd.log", port).start()


def _stop_daemon(process: DaemonProcess) -> None:
    if process.proc is not None and process.proc.poll() is None:
        process.proc.send_signal(signal.SIGTERM)
        try:
            process.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def scenario(local_env: LocalEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    info = local_env.info
    workdir = tmp_path_factory.mktemp("prometheus-scrape")
    wrong_secret = workdir / "wrong-secret"
    wrong_secret.write_text("a-secret-this-app-never-had-0123456789\n")
    run = uuid.uuid4().hex[:10]

    specs: list[MailboxSpec] = []
    seeded: dict[str, int] = {}
    mailboxes: dict[str, str] = {}
    for tenant, counts in SEEDED.items():
        domain = info.tenant(tenant).domain
        for index, count in enumerate(counts):
            address = f"scrape-{run}-{index}@{domain}"
            with FixtureImap(info, address) as imap:
                imap.append("INBOX", realistic_messages(count, seed=500 + index, big_every=0))
            specs.append(MailboxSpec(address, tenant=tenant))
            seeded[tenant] = seeded.get(tenant, 0) + count
            mailboxes.setdefault(tenant, address)
    for tenant, domain in (("wrongsecret", "fabrikam.test"), ("closedport", "contoso.test")):
        address = f"scrape-{run}-{tenant}@{domain}"
        specs.append(MailboxSpec(address, tenant=tenant))
        mailboxes[tenant] = address

    port = free_port()
    config = make_config(
        info,
        database_url=f"sqlite:///{workdir / 'db' / 'mailsyncd.db'}",
        mailboxes=specs,
        http_port=port,
        extra={
            "tenants": [
                info.tenant_config("contoso", like="contoso"),
                info.tenant_config("fabrikam", like="fabrikam"),
                info.tenant_config("wrongsecret", like="fabrikam", secret_file=str(wrong_secret)),
                info.tenant_config("closedport", like="contoso", imap_port=free_port()),
            ]
        },
    )
    process = _start_daemon(workdir, config, port)
    prometheus = Prometheus(
        workdir,
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "mailsyncd",
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                }
            ],
        },
    )
    try:
        process.wait_ready()
        prometheus.start()
        result = Scenario(prometheus, process, seeded, mailboxes)
        initial = sum(seeded.values())
        wait_for(
            lambda: (
                result.sum('mailsyncd_messages_synced_total{change="new"}') == initial
                and result.sum('mailsyncd_poll_failures_total{reason="token"}') > 0
                and result.sum('mailsyncd_poll_failures_total{reason="connect"}') > 0
                and result.sum('mailsyncd_mailboxes{state="auth_failed"}') == 1
                and result.sum('mailsyncd_mailboxes{state="ok"}') == len(specs) - 2
            ),
            timeout=60,
            what="the first sync and both failures, as Prometheus sees them",
        )
        # New mail after the first sync: its lag (INTERNALDATE to commit) is measured; the
        # backfill of the first sync is not (its messages may be years old).
        now = dt.datetime.now(dt.UTC)
        arrivals = [
            dataclasses.replace(m, internaldate=now)
            for m in realistic_messages(NEW_MAIL, seed=600, big_every=0)
        ]
        with FixtureImap(info, mailboxes["contoso"]) as imap:
            imap.append("INBOX", arrivals)
        seeded["contoso"] += NEW_MAIL
        wait_for(
            lambda: (
                result.sum("mailsyncd_sync_lag_seconds_count") == NEW_MAIL
                and result.sum('mailsyncd_messages_synced_total{change="new"}')
                == initial + NEW_MAIL
            ),
            timeout=30,
            what="the new mail, as Prometheus sees it",
        )
        yield result
    finally:
        _stop_daemon(process)
        prometheus.stop()


def _by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {r["metric"][label]: float(r["value"][1]) for r in result}


def test_prometheus_scrapes_every_spec_metric_with_its_type_and_the_values_of_the_activity(
    scenario: Scenario,
) -> None:
    prom = scenario.prometheus
    assert prom.value('up{job="mailsyncd"}') == 1

    metadata = prom.api("metadata")
    exported = {name for name in metadata if name.startswith("mailsyncd_")}
    for name, kind in SPEC_METRICS.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        # Prometheus keeps the family name of the exposition (counters without _total).
        entry = metadata.get(family) or metadata.get(name)
        assert entry, f"{name} not scraped; scraped: {sorted(exported)}"
        assert entry[0]["type"] == kind, (name, entry)
        if kind != "histogram":  # histograms: _bucket, _sum and _count, checked below
            assert prom.query(f'{name}{{job="mailsyncd"}}'), name

    tenants = ("contoso", "fabrikam", "wrongsecret", "closedport")
    new = _by(prom.query('mailsyncd_messages_synced_total{change="new"}'), "tenant")
    assert new == {t: float(scenario.seeded.get(t, 0)) for t in tenants}
    for change in ("updated", "deleted"):
        assert set(
            _by(prom.query(f'mailsyncd_messages_synced_total{{change="{change}"}}'), "tenant")
        ) == set(tenants)

    success = _by(prom.query('mailsyncd_polls_total{outcome="success"}'), "tenant")
    assert success["contoso"] > 0
    assert success["fabrikam"] > 0
    assert success["wrongsecret"] == success["closedport"] == 0
    failed = _by(prom.query('mailsyncd_polls_total{outcome="failure"}'), "tenant")
    assert failed["wrongsecret"] > 0
    assert failed["closedport"] > 0

    reasons = prom.query("mailsyncd_poll_failures_total")
    assert {(r["metric"]["tenant"], r["metric"]["reason"]) for r in reasons} == {
        (t, reason)
        for t in tenants
        for reason in (
            "token",
            "auth",
            "connect",
            "timeout",
            "throttled",
            "protocol",
            "database",
            "other",
        )
    }, "every known reason of every tenant is exported, at 0 until it happens"
    nonzero = {
        (r["metric"]["tenant"], r["metric"]["reason"]) for r in reasons if float(r["value"][1]) > 0
    }
    assert nonzero == {("wrongsecret", "token"), ("closedport", "connect")}

    token_ok = _by(prom.query('mailsyncd_token_requests_total{outcome="success"}'), "tenant")
    # One token per tenant serves all its mailboxes: one request per lifetime (an hour here).
    assert all(token_ok[t] == 1 for t in GOOD_TENANTS), token_ok
    assert token_ok["wrongsecret"] == 0
    token_failed = _by(prom.query('mailsyncd_token_requests_total{outcome="failure"}'), "tenant")
    assert token_failed["wrongsecret"] >= 1
    assert all(token_failed[t] == 0 for t in GOOD_TENANTS), token_failed
    now = time.time()
    expiry = _by(prom.query("mailsyncd_token_expiry_timestamp_seconds"), "tenant")
    assert all(now < expiry[t] <= now + 3700 for t in GOOD_TENANTS), expiry
    assert expiry["wrongsecret"] == 0

    logins_ok = _by(prom.query('mailsyncd_imap_logins_total{outcome="success"}'), "tenant")
    logins_failed = _by(prom.query('mailsyncd_imap_logins_total{outcome="failure"}'), "tenant")
    assert logins_ok["contoso"] >= len(SEEDED["contoso"])
    assert logins_ok["fabrikam"] >= 1
    # No token, or no connection: no login was attempted.
    assert logins_ok["wrongsecret"] == logins_ok["closedport"] == 0
    assert set(logins_failed.values()) == {0.0}

    states = _by(prom.query("sum by (state) (mailsyncd_mailboxes)"), "state")
    assert states == {"ok": 3.0, "backoff": 1.0, "auth_failed": 1.0, "disabled": 0.0}
    assert _by(prom.query('mailsyncd_mailboxes{state="auth_failed"} > 0'), "tenant") == {
        "wrongsecret": 1.0
    }
    oldest = _by(prom.query("mailsyncd_oldest_successful_poll_timestamp_seconds"), "tenant")
    assert set(oldest) == set(tenants)
    assert all(now - 120 < ts <= now for ts in oldest.values()), oldest

    build = prom.query("mailsyncd_build_info")
    assert [(r["metric"]["version"], float(r["value"][1])) for r in build] == [
        (daemon.__version__, 1.0)
    ]

    for name in HISTOGRAMS:
        buckets = prom.query(f"{name}_bucket")
        assert buckets, name
        assert {"+Inf", "1.0"} <= {r["metric"]["le"] for r in buckets}, name
        assert prom.query(f"{name}_sum"), name
        assert prom.query(f"{name}_count"), name
    assert scenario.sum("mailsyncd_poll_duration_seconds_count") == scenario.sum(
        "mailsyncd_polls_total"
    )
    assert scenario.sum("mailsyncd_schedule_delay_seconds_count") >= scenario.sum(
        "mailsyncd_polls_total"
    )
    lag = _by(prom.query("mailsyncd_sync_lag_seconds_count"), "tenant")
    assert lag == {t: float(NEW_MAIL if t == "contoso" else 0) for t in tenants}
    # Polled every second: new mail is in the database within a few seconds of its arrival.
    assert 0 <= scenario.sum('mailsyncd_sync_lag_seconds_sum{tenant="contoso"}') / NEW_MAIL < 30

    configured = _by(prom.query("mailsyncd_mailboxes_configured"), "tenant")
    assert configured == {"contoso": 2.0, "fabrikam": 1.0, "wrongsecret": 1.0, "closedport": 1.0}
    assert prom.value("mailsyncd_config_last_reload_successful") == 1
    assert set(_by(prom.query("mailsyncd_polls_in_flight"), "tenant")) == set(tenants)
    assert prom.query("mailsyncd_folders_missing")


def test_db_write_duration_counts_the_write_transactions_of_a_sync(scenario: Scenario) -> None:
    # At least one transaction per healthy mailbox's first batch.
    assert scenario.sum("mailsyncd_db_write_duration_seconds_count") >= 3


def test_alert_rules_evaluate_on_real_series_and_exactly_the_broken_tenants_alerts_pend(
    scenario: Scenario,
) -> None:
    prom = scenario.prometheus
    groups = prom.api("rules", type="alert")["groups"]
    assert [g["name"] for g in groups] == ["mailsyncd"]
    rules = groups[0]["rules"]
    expected = {
        r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
    }
    assert {r["name"] for r in rules} == expected
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        assert rule["lastEvaluation"] != "0001-01-01T00:00:00Z", rule["name"]

    # What the broken tenants must raise, each alert still waiting out its `for:`; nothing else
    # (not stale, tokens far from expiry, scheduler on time, database fine, target up).
    target = {"job": "mailsyncd", "instance": f"127.0.0.1:{scenario.daemon.http_port}"}
    ratio = "MailsyncdPollFailureRatioHigh"
    required = {
        _alert("MailsyncdAuthFailures", {**target, "tenant": "wrongsecret"}),  # names the tenant
        _alert("MailsyncdTokenRefreshFailing", {**target, "tenant": "wrongsecret"}),
        _alert(ratio, {"job": "mailsyncd", "tenant": "closedport", "reason": "connect"}),
    }
    # The wrongsecret mailbox fails one poll, then waits minutes in auth_failed: when that
    # poll came before Prometheus's first scrape, rate() sees no increase and the ratio is 0/0.
    optional = {_alert(ratio, {"job": "mailsyncd", "tenant": "wrongsecret", "reason": "token"})}

    def active() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        found = set()
        for alert in prom.api("alerts")["alerts"]:
            labels = dict(alert["labels"])
            assert alert["state"] == "pending", alert
            found.add(_alert(labels.pop("alertname"), labels))
        return found

    wait_for(lambda: required <= active(), timeout=20, what=f"the alerts {sorted(required)}")
    assert active() - required <= optional
    values = {
        (a["labels"]["alertname"], a["labels"].get("tenant")): float(a["value"])
        for a in prom.api("alerts")["alerts"]
    }
    assert values[("MailsyncdAuthFailures", "wrongsecret")] == 1  # one mailbox in auth_failed
    assert values[("MailsyncdPollFailureRatioHigh", "closedport")] == 1  # every poll failed
    assert values[("MailsyncdTokenRefreshFailing", "wrongsecret")] >= 1


def _alert(name: str, labels: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """An alert as a hashable value; the severity of every alert these tenants raise: warning."""
    return name, tuple(sorted({"severity": "warning", **labels}.items()))


def _dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, rows' nested panels included."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend((panel["title"], t["expr"]) for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return found


def _substitute(expr: str, variables: dict[str, str]) -> str:
    builtins = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
    values = {**builtins, **variables}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown dashboard variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def test_every_dashboard_query_evaluates_and_returns_series(scenario: Scenario) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39
    templating = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert templating["DS_PROMETHEUS"]["type"] == "datasource"
    # Every query variable selects "All" here: its allValue, a regex.
    variables = {name: v["allValue"] for name, v in templating.items() if v["type"] == "query"}
    assert {"job", "instance", "tenant"} <= variables.keys()

    queries = _dashboard_queries()
    assert len(queries) >= 20
    for title, expr in queries:
        promql = _substitute(expr, variables)
        try:
            result = scenario.prometheus.query(promql)
        except PrometheusError as exc:
            pytest.fail(f"panel {title!r}: {promql}: {exc}")
        assert result, f"panel {title!r}: no series for {promql}"

    # The variables' label_values() queries, as Grafana runs them (series API).
    for name in ("job", "instance", "tenant"):
        definition = templating[name]["definition"]
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", definition)
        assert match, definition
        selector = _substitute(match.group(1), variables)
        values = scenario.prometheus.api(f"label/{match.group(2)}/values", **{"match[]": selector})
        assert values, (name, definition)
        if name == "tenant":
            assert set(values) == {"contoso", "fabrikam", "wrongsecret", "closedport"}


# -- cardinality -----------------------------------------------------------------------------


def _series(process: DaemonProcess) -> list[str]:
    """The sample lines of /metrics without their values: name and labels."""
    status, text = process.get("/metrics")
    assert status == 200
    return sorted(
        line.rsplit(" ", 1)[0]
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )


def test_exported_series_are_the_same_for_500_mailboxes_as_for_5(
    env_info: EnvInfo,
    tmp_path: Path,
    make_pg_url: Callable[[], str],
    mailsyncd: Callable[..., DaemonProcess],
) -> None:
    wrong_secret = tmp_path / "wrong-secret"
    wrong_secret.write_text("a-secret-this-app-never-had-0123456789\n")
    tenants = [
        env_info.tenant_config("contoso", like="contoso"),
        env_info.tenant_config("fabrikam", like="fabrikam"),
        env_info.tenant_config("wrongsecret", like="fabrikam", secret_file=str(wrong_secret)),
    ]
    names = [t["name"] for t in tenants]
    run = uuid.uuid4().hex[:10]
    daemons: list[DaemonProcess] = []
    for count in (5, 500):
        specs = [
            MailboxSpec(f"card-{run}-{count}-{i}@contoso.test", tenant=names[i % len(names)])
            for i in range(count)
        ]
        daemons.append(
            mailsyncd(
                database_url=make_pg_url(),
                mailboxes=specs,
                poll_interval="20s",
                extra={"tenants": tenants},
            )
        )
    for process, count in zip(daemons, (5, 500), strict=True):
        process.wait_ready()
        # Every mailbox polled once (success, or failure for the tenant without a token),
        # and the housekeeping pass that sets the state gauges has run since.
        wait_for(
            lambda p=process, c=count: (
                p.metric("mailsyncd_polls_total") >= c
                and p.metric("mailsyncd_mailboxes", state="auth_failed") >= c // 3
            ),
            timeout=90,
            what=f"the first polls of {count} mailboxes",
        )
    small, big = (_series(p) for p in daemons)
    assert big == small, {
        "only with 500": set(big) - set(small),
        "only with 5": set(small) - set(big),
    }
    # Bounded by tenants and fixed vocabularies, not by mailboxes: a few hundred lines.
    assert 100 < len(small) < 1000, len(small)
    for process in daemons:
        assert process.stop() == 0
