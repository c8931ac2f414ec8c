"""`make bench-steady`: the daemon's steady state, N mailboxes polled every I seconds.

SPEC "Scale targets": one replica on 2 cores keeps 10,000 mailboxes on a 60 s interval, emulated
as 2,000 on 12 s against the local Dovecot on the same cores. This seeds N mailboxes with a few
messages each in a temporary local environment, runs the real ``mailsyncd run`` (SQLite, or a
fresh PostgreSQL database), waits until every mailbox has had its initial sync plus one more
interval, then measures a window of W seconds in which nearly every poll finds nothing new:

- polls/s achieved against the offered N/I, failed polls (``mailsyncd_polls_total``);
- schedule delay p50/p99: the window's ``mailsyncd_schedule_delay_seconds`` bucket deltas,
  interpolated as Prometheus' ``histogram_quantile`` does (so no finer than the buckets);
- mean poll duration (``mailsyncd_poll_duration_seconds`` sum/count deltas);
- daemon CPU in cores and RSS from ``/proc`` (children included), Dovecot's CPU for context;
- IMAP logins per poll (``mailsyncd_imap_logins_total``): persistent sessions make this ~0;
- new-mail latency: K messages appended at random times to random mailboxes (fixture login),
  each timed from its APPEND until its row is in ``message_metadata`` (checked every 50 ms).

The figures are printed next to the targets with pass/fail; the exit code is 0 whatever they
are (a benchmark, not a test), 1 only when the run itself broke. Then, unless ``--skip-rss`` (or
alone with ``--rss-only N2``), N2 (10,000) empty mailboxes at 60 s: the daemon's RSS once each
was polled and holds a session (300 s at most). Every process started is stopped by PID,
temporary files and the PostgreSQL database are removed. MAILSYNCD_BENCH_PG overrides the
PostgreSQL server URL.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.pool import NullPool

from localenv.env import EnvInfo, LocalEnv, descendants, free_port, stop_pid
from localenv.imap import FixtureImap
from localenv.seed import KB, realistic_messages

DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/postgres"
TENANTS = ("contoso", "fabrikam")  # two, so the per-tenant concurrency bound is not the limit
DB_POLL = 0.05
SEED_THREADS = 12
RSS_TIMEOUT = 300.0
PROBE_SEED = 10**9  # the probes' Message-IDs differ from the seeded ones (seeds 0..N-1)
NEW_KEYS = ("limits.max_open_sessions", "limits.imap_timeout")
CAPACITY = re.compile(r"process_limit|client_limit|maximum number of connections|too many", re.I)
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAILSYNCD = str(Path(sys.executable).with_name("mailsyncd"))
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Mailbox = tuple[str, str]  # (address, tenant)


def say(text: str) -> None:
    print(f"[bench-steady] {text}", file=sys.stderr, flush=True)


# -- metrics and /proc ---------------------------------------------------------------------
def total(m: Samples, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels``; None if there are none."""
    found = [v for (n, lab), v in m.items() if n == name and set(labels.items()) <= lab]
    return sum(found) if found else None


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return (total(after, name, **labels) or 0.0) - (total(before, name, **labels) or 0.0)


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def histogram_quantile(q: float, before: Samples, after: Samples, name: str) -> float:
    """Prometheus' histogram_quantile over the bucket deltas (every label set summed)."""
    bounds = {dict(lab)["le"] for (n, lab) in after if n == f"{name}_bucket"}
    buckets = sorted((float(le), delta(before, after, f"{name}_bucket", le=le)) for le in bounds)
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:  # in the +Inf bucket: the highest finite bound
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return math.nan


def failure_reasons(before: Samples, after: Samples) -> dict[str, float]:
    name = "mailsyncd_poll_failures_total"
    reasons = sorted({dict(lab).get("reason", "") for (n, lab) in after if n == name})
    counts = {r: delta(before, after, name, reason=r) for r in reasons}
    return {r: c for r, c in counts.items() if c}


def tree_usage(pid: int) -> tuple[int, float]:
    """(CPU ticks, RSS MB) of ``pid`` and its live descendants; the ticks include reaped
    children (cutime, cstime), so Dovecot's short-lived per-connection processes count too."""
    ticks, rss = 0, 0.0
    for p in (pid, *descendants(pid)):
        try:
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            found = re.search(r"^VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text(), re.M)
        except OSError:
            continue  # exited meanwhile
        ticks += sum(int(x) for x in stat[11:15])
        rss += int(found.group(1)) / 1024 if found else 0.0
    return ticks, rss


# -- the daemon and its database -----------------------------------------------------------
class Daemon:
    """``mailsyncd run`` as a subprocess with its own config, log and metrics port."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.config, self.log = workdir / f"{name}.yaml", workdir / f"{name}.log"
        self.port, self.pid = free_port(), 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.code: int | None = None  # after stop()
        self.dropped: list[str] = []

    def configure(self, info: EnvInfo, db_url: str, mailboxes: list[Mailbox], args: Any) -> None:
        """Write the config and validate it; new keys this daemon predates are left out."""
        limits: dict[str, Any] = {"max_open_sessions": args.max_open_sessions}
        limits["imap_timeout"] = "60s"
        if args.workers:  # the per-tenant bound too, or it would cap the two tenants at 2 x 16
            limits["max_concurrent_polls"] = args.workers
            limits["max_concurrent_polls_per_tenant"] = args.workers
        config = {
            "database": {"url": db_url},
            "http": {"listen": f"127.0.0.1:{self.port}"},
            "tls": {"ca_file": info.ca_file},
            "logging": {"level": "warning", "format": "json"},
            "defaults": {"poll_interval": f"{args.interval:g}s", "idle": bool(args.idle)},
            "limits": limits,
            "tenants": [info.tenant_config(t) for t in TENANTS],
            "mailboxes": [{"address": a, "tenant": t} for a, t in mailboxes],
        }
        for _ in NEW_KEYS:
            dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
            self.config.write_text(yaml.dump(config, Dumper=dumper, sort_keys=False))
            argv = [MAILSYNCD, "validate", "-c", str(self.config)]
            check = subprocess.run(argv, capture_output=True, text=True, check=False)
            errors = [line.strip() for line in check.stderr.splitlines() if line[:1].isspace()]
            new = [k for k in NEW_KEYS if f"{k}: unknown key" in errors]
            if check.returncode == 0:
                return
            if not new or len(new) < len(errors):
                break
            for key in new:
                del limits[key.split(".", 1)[1]]
            self.dropped += new
        raise RuntimeError(f"mailsyncd validate failed:\n{check.stdout}{check.stderr}")

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSYNCD_")}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [MAILSYNCD, "run", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the benchmark, which stops it by PID
            )
        self.pid = self.proc.pid

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"mailsyncd exited ({self.proc and self.proc.poll()}):\n{tail}")

    def metrics(self) -> Samples:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def try_metrics(self) -> Samples:
        self.check_alive()
        try:
            return self.metrics()
        except OSError:  # not listening yet
            return {}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                stop_pid(self.proc.pid)
                self.proc.wait()
        self.code = None if self.proc is None else self.proc.returncode


class Replicas:
    """One or more ``mailsyncd run`` on one database; metrics are summed over the replicas."""

    def __init__(self, daemons: list[Daemon]) -> None:
        self.daemons = daemons

    @property
    def dropped(self) -> list[str]:
        return self.daemons[0].dropped

    @property
    def code(self) -> int | None:
        codes = [d.code for d in self.daemons]
        return next((c for c in codes if c != 0), 0)

    def check_alive(self) -> None:
        for daemon in self.daemons:
            daemon.check_alive()

    def metrics(self) -> Samples:
        return _summed(iter(self.each_metrics()))

    def each_metrics(self) -> list[Samples]:
        return [d.metrics() for d in self.daemons]

    def try_metrics(self) -> Samples:
        return _summed(d.try_metrics() for d in self.daemons)

    def usages(self) -> list[tuple[int, float]]:
        """(CPU ticks, RSS MB) of each replica."""
        return [tree_usage(d.pid) for d in self.daemons]


def _summed(samples: Iterator[Samples]) -> Samples:
    summed: Samples = {}
    for one in samples:
        for key, value in one.items():
            summed[key] = summed.get(key, 0.0) + value
    return summed


class Database:
    """A SQLite file in ``workdir`` or a fresh PostgreSQL database, dropped by ``close()``."""

    def __init__(self, kind: str, workdir: Path, name: str) -> None:
        self.admin: sa.Engine | None = None
        self.name = f"mailsyncd_steady_{uuid.uuid4().hex[:12]}"
        self.url = f"sqlite:///{workdir / f'{name}.db'}"
        if kind == "postgresql":
            server = sa.make_url(os.environ.get("MAILSYNCD_BENCH_PG", DEFAULT_PG))
            self.admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
            with self.admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
            self.url = server.set(database=self.name).render_as_string(hide_password=False)
        self.engine = sa.create_engine(self.url)

    def query(self, sql: str, **params: Any) -> list[Any]:
        statement = sa.text(sql)
        if "ids" in params:
            statement = statement.bindparams(sa.bindparam("ids", expanding=True))
        try:
            with self.engine.connect() as conn:
                return [row[0] for row in conn.execute(statement, params)]
        except sa.exc.DBAPIError:  # the migration has not created the view yet
            return []

    def inbox_rows(self) -> int:
        return sum(self.query("SELECT count(*) FROM message_metadata WHERE folder = 'INBOX'"))

    def close(self) -> None:
        self.engine.dispose()
        if self.admin is not None:
            with self.admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            self.admin.dispose()


@contextmanager
def running(
    env: LocalEnv,
    workdir: Path,
    name: str,
    mailboxes: list[Mailbox],
    args: Any,
    *,
    replicas: int = 1,
) -> Iterator[tuple[Replicas, Database]]:
    """mailsyncd (``replicas`` processes) on a fresh database; stopped and dropped after."""
    db = Database(args.database, workdir, name)
    daemons = [Daemon(workdir, f"{name}-{i}") for i in range(replicas)]
    try:
        for daemon in daemons:
            daemon.configure(env.info, db.url, mailboxes, args)
            daemon.start()
        yield Replicas(daemons), db
    finally:
        for daemon in daemons:
            daemon.stop()
        db.close()


# -- the runs ------------------------------------------------------------------------------
def threads(pid: int) -> int:
    """Threads of the process ``pid`` (its own, not its children's)."""
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile of sorted ``values``; NaN when there are none."""
    if not values:
        return math.nan
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def make_mailboxes(info: EnvInfo, prefix: str, count: int) -> list[Mailbox]:
    domains = [info.tenant(t).domain for t in TENANTS]
    return [(f"{prefix}{i:05d}@{domains[i % 2]}", TENANTS[i % 2]) for i in range(count)]


def seed(info: EnvInfo, mailboxes: list[Mailbox], messages: int) -> None:
    def one(index: int) -> None:
        batch = realistic_messages(messages, seed=index, big_every=0, max_size=64 * KB)
        with FixtureImap(info, mailboxes[index][0]) as imap:
            imap.append("INBOX", batch)

    with ThreadPoolExecutor(SEED_THREADS) as pool:
        list(pool.map(one, range(len(mailboxes))))


class Prober:
    """Appends K messages at random times of the window and times each until its row shows."""

    def __init__(self, info: EnvInfo, mailboxes: list[Mailbox], args: Any) -> None:
        rng = random.Random(1)
        self.info, self.stop = info, threading.Event()
        self.plan = sorted((rng.uniform(0, args.window), k) for k in range(args.probes))
        self.targets = [rng.choice(mailboxes)[0] for _ in self.plan]
        self.appended: dict[str, float] = {}
        self.latency: dict[str, float] = {}
        self.errors: list[str] = []

    def append_all(self, start: float) -> None:
        for (offset, k), address in zip(self.plan, self.targets, strict=True):
            if self.stop.wait(max(0.0, start + offset - time.monotonic())):
                return
            message = next(realistic_messages(1, seed=PROBE_SEED + k, big_every=0))
            try:
                with FixtureImap(self.info, address) as imap:
                    imap.append("INBOX", [message])
            except Exception as exc:  # noqa: BLE001 - reported, the window goes on
                self.errors.append(f"{address}: {exc}")
            else:
                self.appended[str(message.expected.message_id)] = time.monotonic()

    def check(self, db: Database) -> bool:
        """Looks for the appended rows not seen yet; True while some probe is outstanding."""
        pending = [m for m in list(self.appended) if m not in self.latency]
        sql = "SELECT message_id FROM message_metadata WHERE message_id IN :ids"
        now = time.monotonic()
        for found in db.query(sql, ids=pending) if pending else []:
            self.latency[found] = now - self.appended[found]
        return len(self.latency) + len(self.errors) < len(self.plan)


def log_size(env: LocalEnv) -> int:
    path = Path(env.info.dir) / "dovecot" / "dovecot.log"
    return path.stat().st_size if path.exists() else 0


def capacity_hits(env: LocalEnv, start: int) -> dict[str, Any]:
    """Lines of Dovecot's log since ``start`` that show a capacity limit, one per kind."""
    with (Path(env.info.dir) / "dovecot" / "dovecot.log").open(errors="replace") as log:
        log.seek(start)
        hits = [line for line in log.read().splitlines() if CAPACITY.search(line)]
    kinds = {re.sub(r"\d+", "#", line.split(": ", 1)[-1]): line for line in hits}
    return {"capacity_lines": len(hits), "capacity_kinds": list(kinds.values())[:5]}


def initial_syncs_done(daemon: Replicas, db: Database, mailboxes: int, rows: int) -> bool:
    polled = total(daemon.try_metrics(), "mailsyncd_polls_total", outcome="success") or 0
    return polled >= mailboxes and db.inbox_rows() >= rows


def steady(env: LocalEnv, workdir: Path, args: Any, replicas: int = 1) -> dict[str, Any]:
    n, interval, rows = args.mailboxes, args.interval, args.mailboxes * args.messages_per_mailbox
    mailboxes = make_mailboxes(env.info, f"steady{replicas}r", n)
    say(f"seeding {n} mailboxes x {args.messages_per_mailbox} messages")
    started = time.monotonic()
    seed(env.info, mailboxes, args.messages_per_mailbox)
    seed_s = time.monotonic() - started
    say(f"seeded in {seed_s:.1f} s; starting mailsyncd, waiting for every initial sync")
    prober, log_start = Prober(env.info, mailboxes, args), log_size(env)
    name = f"steady{replicas}r"
    with running(env, workdir, name, mailboxes, args, replicas=replicas) as (daemon, db):
        started, deadline = time.monotonic(), time.monotonic() + 60 + 3 * interval + n / 20
        while not initial_syncs_done(daemon, db, n, rows):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the initial syncs took over {deadline - started:.0f} s")
            time.sleep(0.5)
        initial_s = time.monotonic() - started
        say(f"initial syncs done in {initial_s:.1f} s; one more interval ({interval:g} s)")
        time.sleep(interval)
        say(f"measuring {args.window:g} s with {args.probes} new messages")
        dovecot = env.info.pids["dovecot"]
        each0, cpu0, dovecot0 = daemon.each_metrics(), daemon.usages(), tree_usage(dovecot)[0]
        m0 = _summed(iter(each0))
        t0 = time.monotonic()
        appender = threading.Thread(target=prober.append_all, args=(t0,), daemon=True)
        appender.start()
        try:
            while time.monotonic() < t0 + args.window:
                prober.check(db)
                time.sleep(DB_POLL)
            each1, cpu1 = daemon.each_metrics(), daemon.usages()
            thread_count = max(threads(d.pid) for d in daemon.daemons)
            m1 = _summed(iter(each1))
            dovecot1 = tree_usage(dovecot)[0]
            t1 = time.monotonic()
            appender.join()
            deadline = time.monotonic() + interval + 30
            while prober.check(db) and time.monotonic() < deadline:
                time.sleep(DB_POLL)
            daemon.check_alive()
        finally:
            prober.stop.set()
    seconds, polls = t1 - t0, delta(m0, m1, "mailsyncd_polls_total")
    delay, duration = "mailsyncd_schedule_delay_seconds", "mailsyncd_poll_duration_seconds"
    latencies = sorted(prober.latency.values())
    cores = [(b[0] - a[0]) / CLK_TCK / seconds for a, b in zip(cpu0, cpu1, strict=True)]
    return {
        "replicas": replicas,
        "replica_cpu_cores": cores,
        "replica_polls_per_s": [
            delta(a, b, "mailsyncd_polls_total") / seconds
            for a, b in zip(each0, each1, strict=True)
        ],
        "seed_s": seed_s,
        "initial_sync_s": initial_s,
        "window_s": seconds,
        "offered_polls_per_s": n / interval,
        "polls_per_s": polls / seconds,
        "polls_ratio": polls / seconds / (n / interval),
        "delay_p50_s": histogram_quantile(0.5, m0, m1, delay),
        "delay_p99_s": histogram_quantile(0.99, m0, m1, delay),
        "poll_mean_ms": 1e3 * ratio(*(delta(m0, m1, f"{duration}_{s}") for s in ("sum", "count"))),
        "cpu_cores": sum(cores),
        "rss_mb": sum(usage[1] for usage in cpu1),
        "dovecot_cpu_cores": (dovecot1 - dovecot0) / CLK_TCK / seconds,
        "logins_per_poll": ratio(delta(m0, m1, "mailsyncd_imap_logins_total"), polls),
        "failed_polls": delta(m0, m1, "mailsyncd_polls_total", outcome="failure"),
        "failure_reasons": failure_reasons(m0, m1),
        "idle": bool(args.idle),
        "mailboxes": n,
        "idle_sessions": total(m1, "mailsyncd_idle_sessions"),
        "threads": thread_count,
        "latency_p99_s": percentile(latencies, 0.99),
        "latency_p50_s": statistics.median(latencies) if latencies else math.nan,
        "latency_max_s": latencies[-1] if latencies else math.nan,
        "probes_seen": len(latencies),
        "probe_errors": prober.errors,
        "sessions_open": total(m1, "mailsyncd_imap_sessions_open"),
        "dropped_keys": daemon.dropped,
        "exit_code": daemon.code,
        **capacity_hits(env, log_start),
    }


def rss_run(env: LocalEnv, workdir: Path, args: Any, n: int) -> dict[str, Any]:
    """N empty mailboxes at 60 s: the daemon's memory once each has been polled."""
    log_start = log_size(env)
    rss_args = argparse.Namespace(**{**vars(args), "interval": 60.0})
    peak, polls, m = 0.0, 0.0, Samples()
    say(f"RSS: mailsyncd with {n} empty mailboxes at 60 s, until each was polled once")
    with running(env, workdir, "rss", make_mailboxes(env.info, "rss", n), rss_args) as (daemon, _):
        started = time.monotonic()
        held = 0.0
        while held < n and time.monotonic() - started < RSS_TIMEOUT:
            time.sleep(1.0)
            m = daemon.try_metrics() or m
            polls = total(m, "mailsyncd_polls_total") or 0.0
            held = total(m, "mailsyncd_imap_sessions_open") or 0.0
            peak = max(peak, sum(u[1] for u in daemon.usages()))
        seconds, rss = time.monotonic() - started, sum(u[1] for u in daemon.usages())
        daemon.check_alive()
    return {
        "mailboxes": n,
        "polled": polls,
        "seconds": seconds,
        "rss_mb": rss,
        "peak_rss_mb": peak,
        "failed_polls": total(m, "mailsyncd_polls_total", outcome="failure") or 0.0,
        "failure_reasons": failure_reasons({}, m),
        "sessions_open": total(m, "mailsyncd_imap_sessions_open"),
        "dropped_keys": daemon.dropped,
        "exit_code": daemon.code,
        **capacity_hits(env, log_start),
    }


# -- report --------------------------------------------------------------------------------
def ok(passed: bool) -> str:
    return "pass" if passed else "FAIL"


def sessions(f: argparse.Namespace) -> str:
    return "not exported" if f.sessions_open is None else f"{f.sessions_open:.0f}"


def notes(f: argparse.Namespace, indent: str = "  ") -> list[str]:
    lines = [f"{indent}failed polls by reason: {f.failure_reasons}"] if f.failure_reasons else []
    if f.dropped_keys:
        lines.append(f"{indent}note: this mailsyncd predates {', '.join(f.dropped_keys)}: omitted")
    if f.exit_code != 0:
        lines.append(f"{indent}note: mailsyncd exited {f.exit_code} after SIGTERM")
    if f.capacity_lines:
        lines.append(f"{indent}Dovecot hit a capacity limit ({f.capacity_lines} log lines):")
        lines += [f"{indent}  {line[:160]}" for line in f.capacity_kinds]
    return lines


def steady_lines(f: argparse.Namespace) -> list[str]:
    polls = f"{f.polls_per_s:.1f}/s of {f.offered_polls_per_s:.1f} ({f.polls_ratio:.1%})"
    delay = f"{f.delay_p50_s:.3f} / {f.delay_p99_s:.3f} s"
    latency = f"{f.latency_p50_s:.2f} / {f.latency_max_s:.2f} s"
    if f.idle:
        latency = f"{f.latency_p50_s:.2f} / {f.latency_p99_s:.2f} / {f.latency_max_s:.2f} s"
    seen = f"{f.probes_seen} of {f.probes_seen + len(f.probe_errors)} seen"
    logins = f.logins_per_poll
    rows = [
        ("figure (over the window)", "measured", "target", ""),
        ("polls achieved / offered N/I", polls, ">= 95 %", ok(f.polls_ratio >= 0.95)),
        ("schedule delay p50 / p99", delay, "p99 <= 2 s", ok(f.delay_p99_s <= 2)),
        ("mean poll duration", f"{f.poll_mean_ms:.2f} ms", "<= 1.5 ms", ok(f.poll_mean_ms <= 1.5)),
        ("daemon CPU", f"{f.cpu_cores:.3f} cores", "< 0.5 core", ok(f.cpu_cores < 0.5)),
        ("daemon RSS at the end", f"{f.rss_mb:.0f} MB", "< 500 MB", ok(f.rss_mb < 500)),
        ("IMAP logins per poll", f"{logins:.3f}", "< 0.05", ok(logins < 0.05)),
        ("failed polls", f"{f.failed_polls:.0f}", "0", ok(f.failed_polls == 0)),
        (
            "new-mail latency p50 / p99 / max" if f.idle else "new-mail latency p50 / max",
            latency,
            "p99 <= 1 s" if f.idle else "",
            seen,
        ),
        ("IMAP sessions open (end)", sessions(f), "", ""),
        ("Dovecot CPU (for context)", f"{f.dovecot_cpu_cores:.3f} cores", "", ""),
    ]
    if f.idle:
        idle = f.idle_sessions or 0
        rows[1:1] = [
            ("mailboxes in IDLE (end)", f"{idle:.0f}", f"{f.mailboxes}", ok(idle == f.mailboxes)),
            ("daemon threads", f"{f.threads}", "< 200", ok(f.threads < 200)),
            (
                "daemon CPU (IDLE target)",
                f"{f.cpu_cores:.3f} cores",
                "< 0.1 core",
                ok(f.cpu_cores < 0.1),
            ),
        ]
    if f.replicas > 1:
        each = ", ".join(
            f"{c:.3f} cores / {p:.1f} polls/s"
            for c, p in zip(f.replica_cpu_cores, f.replica_polls_per_s, strict=True)
        )
        rows.insert(5, ("  each replica", each, "", ""))
    head = f"  seeding   {f.seed_s:.1f} s; every initial sync done {f.initial_sync_s:.1f} s after "
    return [
        f"  {f.replicas} replica{'s' if f.replicas > 1 else ''}",
        f"{head}mailsyncd started; window {f.window_s:.1f} s",
        "",
        *(f"  {a:<30} {b:>26}   {c:<11} {d}".rstrip() for a, b, c, d in rows),
        *(f"  probe APPEND failed: {e}" for e in f.probe_errors),
        *notes(f),
    ]


def rss_lines(f: argparse.Namespace) -> list[str]:
    indent = " " * 12
    head = f"  RSS run   {f.mailboxes} empty mailboxes at 60 s, {f.polled:.0f} polls in "
    rss = f"RSS {f.rss_mb:.0f} MB, peak {f.peak_rss_mb:.0f} MB"
    lines = [
        f"{head}{f.seconds:.0f} s: {rss} (< 500 MB: {ok(f.peak_rss_mb < 500)})",
        f"{indent}failed polls {f.failed_polls:.0f}, IMAP sessions open {sessions(f)}",
        *notes(f, indent),
    ]
    if (f.sessions_open or 0) < f.mailboxes:
        lines.append(f"{indent}not every mailbox held a session within {RSS_TIMEOUT:.0f} s")
    return lines


def scaled_lines(one: argparse.Namespace, many: argparse.Namespace) -> list[str]:
    """The replicas' run against the single replica's, measured in the same invocation."""
    per_replica = max(many.replica_cpu_cores)
    share = ratio(per_replica, one.cpu_cores)
    first = (
        f"  scaling   {many.replicas} replicas vs 1 for the same load: CPU of the busiest "
        f"replica {per_replica:.3f} cores = {share:.2f} x the single replica's "
        f"{one.cpu_cores:.3f} (target about {1 / many.replicas:.2f})"
    )
    second = (
        f"            polls {many.polls_per_s:.1f}/s of {many.offered_polls_per_s:.1f} offered "
        f"({many.polls_ratio:.1%}); total CPU {many.cpu_cores:.3f} vs {one.cpu_cores:.3f} cores"
    )
    return [first, second]


def report(
    steady: dict[str, Any] | None,
    rss: dict[str, Any] | None,
    scaled: dict[str, Any] | None = None,
    **_: object,
) -> str:
    lines = steady_lines(argparse.Namespace(**steady)) if steady else []
    if steady and scaled:
        lines += ["", *steady_lines(argparse.Namespace(**scaled))]
        lines += ["", *scaled_lines(argparse.Namespace(**steady), argparse.Namespace(**scaled))]
    lines += ["", *rss_lines(argparse.Namespace(**rss))] if rss else []
    lines += ["", f"  load      average {os.getloadavg()[0]:.2f} at the end (1 min)", ""]
    return "\n".join([*lines, "A benchmark, not a test: the verdicts do not set the exit code."])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arg = parser.add_argument
    arg("--mailboxes", type=int, default=2000, metavar="N", help="(2000)")
    arg("--interval", type=float, default=12.0, metavar="I", help="poll interval, s (12)")
    arg("--window", type=float, default=60.0, metavar="W", help="measured window, s (60)")
    arg("--messages-per-mailbox", type=int, default=3, metavar="M", help="(3)")
    arg("--probes", type=int, default=10, metavar="K", help="new messages timed (10)")
    arg("--max-open-sessions", type=int, default=10000, help="limits.max_open_sessions (10000)")
    arg("--workers", type=int, help="limits.max_concurrent_polls and its per-tenant bound")
    arg("--database", choices=("sqlite", "postgresql"), default="sqlite")
    arg("--idle", action="store_true", help="defaults.idle: true (push through IMAP IDLE)")
    arg(
        "--replicas",
        type=int,
        default=1,
        metavar="R",
        help="also run R replicas on the same load after one (needs --database postgresql)",
    )
    arg("--token-lifetime", type=float, default=3600.0, help="of the local tokens, s (3600)")
    arg("--skip-rss", action="store_true", help="no RSS run after the steady state")
    arg("--rss-mailboxes", type=int, default=10000, metavar="N2", help="of the RSS run (10000)")
    arg("--rss-only", type=int, metavar="N2", help="only the RSS run, with N2 mailboxes")
    arg("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if min(args.mailboxes, args.messages_per_mailbox, args.interval, args.window) <= 0:
        parser.error("N, M, I and W must be positive")
    if args.replicas > 1 and args.database != "postgresql":
        parser.error("--replicas needs --database postgresql (SQLite runs one replica)")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C
    path = os.environ.get("PYTHONPATH")
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    command = f"PYTHONPATH={path} {command}" if path else command
    nproc = len(os.sched_getaffinity(0))
    setup = (
        f"{args.mailboxes} mailboxes x {args.messages_per_mailbox} messages in {len(TENANTS)} "
        f"tenants, poll_interval {args.interval:g} s, {args.database}, max_open_sessions "
        f"{args.max_open_sessions}, workers {args.workers or 'default'}"
    )
    setup = f"RSS run only, {args.database}" if args.rss_only else setup
    print(
        f"mailsyncd steady-state benchmark\n  command   {command}\n  machine   nproc {nproc} "
        f"({os.cpu_count()} CPUs), Python {platform.python_version()}, "
        f"{platform.platform(terse=True)}, load average {os.getloadavg()[0]:.2f} at start\n"
        f"  setup     {setup}",
        file=sys.stderr if args.json else sys.stdout,
        flush=True,
    )
    env: LocalEnv | None = None
    figures: dict[str, Any] = {
        "command": command,
        "nproc": nproc,
        "steady": None,
        "scaled": None,
        "rss": None,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="mailsyncd-steady-") as tmp:
            say("starting the local environment (Dovecot, identity platform)")
            env = LocalEnv.start_temporary(tenants=TENANTS, token_lifetime=args.token_lifetime)
            if not args.rss_only:
                figures["steady"] = steady(env, Path(tmp), args)
                if args.replicas > 1:
                    figures["scaled"] = steady(env, Path(tmp), args, args.replicas)
            if args.rss_only or not args.skip_rss:
                n2 = args.rss_only or args.rss_mailboxes
                figures["rss"] = rss_run(env, Path(tmp), args, n2)
        print(json.dumps(figures, indent=2) if args.json else report(**figures), flush=True)
    except KeyboardInterrupt:
        say("interrupted; stopping everything")
        return 130
    except (RuntimeError, OSError, sa.exc.SQLAlchemyError) as exc:  # the run itself broke
        say(f"failed: {exc}")
        return 1
    else:
        return 0
    finally:
        if env is not None:
            env.stop()
        say("stopped mailsyncd, Dovecot and the identity platform; removed temporary files")


if __name__ == "__main__":
    raise SystemExit(main())
