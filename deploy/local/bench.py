"""`make bench`: the daemon's initial sync into PostgreSQL next to a bare imapclient FETCH loop.

Seeds M mailboxes x N realistic messages into a temporary local environment, warms Dovecot's
cache once, times a bare imapclient ``UID FETCH`` loop over every mailbox (in this process),
then runs the real ``mailsyncd run`` into a fresh PostgreSQL database and times it until
``message_metadata`` holds M x N rows. It prints both rates and their ratio, the CPU per row of
the daemon, Dovecot and PostgreSQL, and the daemon's read / parse / write steps timed one by
one on one mailbox (``--profile`` adds py-spy's shares of the real run); it asserts nothing.
Everything it starts (Dovecot, identity platform, mailsyncd) is stopped by PID, also on Ctrl-C,
and the database is dropped. MAILSYNCD_BENCH_PG overrides the PostgreSQL server URL.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import imaplib
import json
import os
import platform
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from imapclient import IMAPClient
from sqlalchemy.pool import NullPool

import daemon as mailsyncd_package
from daemon.config import parse_duration
from daemon.imap import fetch_reader
from daemon.imap.client import open_mailbox, uid_set
from daemon.imap.fetch_parser import parse_records
from daemon.imap.parse import FETCH_ITEMS
from daemon.store.engine import create_engine_for
from daemon.store.repository import SqlStore
from daemon.sync.model import Checkpoint, FolderChanges
from daemon.sync.schedule import FIRST_POLL_SPREAD_MAX
from daemon.tls import make_ssl_context
from localenv.dovecot import MASTER_SEPARATOR, MASTER_USER
from localenv.env import EnvInfo, LocalEnv, descendants, free_port, stop_pid
from localenv.imap import FixtureImap
from localenv.seed import KB, realistic_messages

DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/postgres"
TENANT = "contoso"
POLL_EVERY = 0.2
# imapclient wraps a string in another pair of parentheses: pass the items one by one.
ITEMS = re.findall(r"[^\s\[]+(?:\[[^\]]*\])?", FETCH_ITEMS.strip()[1:-1])


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def batches(uids: list[int], size: int) -> list[list[int]]:
    return [uids[i : i + size] for i in range(0, len(uids), size)]


def seed(info: EnvInfo, mailboxes: list[str], messages: int) -> tuple[float, int]:
    started, total_bytes = time.monotonic(), 0
    for i, mailbox in enumerate(mailboxes):
        batch = list(realistic_messages(messages, seed=i, big_every=0, max_size=64 * KB))
        total_bytes += sum(len(m.raw) for m in batch)
        with FixtureImap(info, mailbox) as imap:
            imap.append("INBOX", batch)
    return time.monotonic() - started, total_bytes


def warm(info: EnvInfo, mailboxes: list[str]) -> None:
    """One untimed FETCH of the daemon's items over each mailbox fills Dovecot's cache (raw
    imaplib as the fixture user: nothing is parsed, so this costs little client time)."""
    context = ssl.create_default_context(cafile=info.ca_file)
    for mailbox in mailboxes:
        imap = imaplib.IMAP4_SSL(info.imap_host, info.imap_port, ssl_context=context)
        imap.login(f"{mailbox}{MASTER_SEPARATOR}{MASTER_USER}", info.fixture_password)
        imap.select("INBOX", readonly=True)
        imap.uid("FETCH", "1:*", FETCH_ITEMS)
        imap.logout()


def baseline(env: LocalEnv, mailboxes: list[str], batch_size: int) -> dict[str, float]:
    """The bare loop: TLS, XOAUTH2, EXAMINE, UID SEARCH, UID FETCH in batches; no parsing."""
    context = ssl.create_default_context(cafile=env.info.ca_file)
    count, fetch_seconds = 0, 0.0
    started, cpu = time.monotonic(), time.process_time()
    for mailbox in mailboxes:
        client = IMAPClient(
            env.info.imap_host, port=env.info.imap_port, ssl=True, ssl_context=context
        )
        client.oauth2_login(mailbox, env.mint_token(TENANT))
        client.select_folder("INBOX", readonly=True)
        uids = sorted(client.search("ALL"))
        fetch_started = time.monotonic()
        for chunk in batches(uids, batch_size):
            count += len(client.fetch(chunk, ITEMS))
        fetch_seconds += time.monotonic() - fetch_started
        client.logout()
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    return {
        "messages": count,
        "seconds": seconds,
        "msgs_per_s": count / seconds,
        "fetch_only_msgs_per_s": count / fetch_seconds,
        "cpu_us_per_msg": cpu / count * 1e6,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids: set[int]) -> dict[int, float]:
    """CPU seconds so far of each process of ``pids`` still alive."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            out[pid] = cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def helper_pids(env: LocalEnv, engine: sa.Engine) -> dict[str, set[int]]:
    """The Dovecot processes and the PostgreSQL backends of the benchmark database."""
    dovecot = env.info.pids["dovecot"]
    try:
        with engine.connect() as conn:
            backends = set(
                conn.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalars()
            )
    except sa.exc.SQLAlchemyError:
        backends = set()
    return {"dovecot": descendants(dovecot) | {dovecot}, "postgres": backends}


def phase_split(
    env: LocalEnv, engine: sa.Engine, mailbox: str, batch_size: int
) -> dict[str, float]:
    """The daemon's own read, parse and write steps, one after the other on one thread of this
    process, over one mailbox: thread CPU microseconds per message of each."""
    client = open_mailbox(
        host=env.info.imap_host,
        port=env.info.imap_port,
        ssl_context=make_ssl_context(env.info.ca_file),
        timeout=60,
        user=mailbox,
        token=env.mint_token(TENANT),
    )
    store = SqlStore(engine)
    spent = dict.fromkeys(("read", "parse", "write"), 0.0)
    count = 0
    try:
        folder = store.ensure_folder(store.ensure_mailbox(f"split-{mailbox}", TENANT), "INBOX")
        uidvalidity = client.examine("INBOX").uidvalidity
        for chunk in batches(client.uids_from(1), batch_size):
            wanted = set(chunk)
            started = time.thread_time()
            response = fetch_reader.uid_fetch(client._imap, f"{uid_set(wanted)} {FETCH_ITEMS}")
            read = time.thread_time()
            records = parse_records(response, wanted)
            parsed = time.thread_time()
            now = dt.datetime.now(dt.UTC)
            checkpoint = Checkpoint(uidvalidity, chunk[-1], None, now)
            changes = FolderChanges(
                folder.folder_id, uidvalidity, tuple(records), (), (), checkpoint
            )
            store.apply(changes, now)
            written = time.thread_time()
            spent["read"] += read - started
            spent["parse"] += parsed - read
            spent["write"] += written - parsed
            count += len(records)
    finally:
        client.logout()
    return {phase: seconds / max(count, 1) * 1e6 for phase, seconds in spent.items()}


def write_config(info: EnvInfo, path: Path, db_url: str, mailboxes: list[str], args: Any) -> None:
    config = {
        "database": {"url": db_url},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "tls": {"ca_file": info.ca_file},
        "logging": {"level": "warning", "format": "json"},
        "defaults": {"poll_interval": args.poll_interval},
        "limits": {"fetch_batch_size": args.batch_size},
        "tenants": [info.tenant_config(t.name) for t in info.tenants],
        "mailboxes": [{"address": m, "tenant": TENANT} for m in mailboxes],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def count_rows(engine: sa.Engine) -> int:
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM message_metadata")).scalar_one())
    except sa.exc.ProgrammingError:  # the migration has not created the view yet
        return 0


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` into collapsed stacks: the thread holding the GIL, that is the
    Python CPU of the process."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise RuntimeError("--profile needs py-spy in the virtualenv: pip install py-spy")
    return subprocess.Popen(
        [
            *(str(spy), "record", "--format", "raw", "--rate", "250", "--pid", str(pid)),
            *("--output", str(output), "--nonblocking", "--gil"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_profiler(spy: subprocess.Popen[bytes]) -> None:
    """SIGINT makes py-spy write its file and exit."""
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        stop_pid(spy.pid)
        spy.wait()


# Where a sample of the daemon's CPU goes, by the innermost frame on its stack that names a
# phase: the last match wins, so a parse called from the read loop counts as parse.
PHASES: tuple[tuple[str, str], ...] = (
    ("read", "_uid_fetch"),
    ("read", "fetch_records"),
    ("read", "imaplib.py"),
    ("read", "ssl.py"),
    ("read", "fetch_stream"),
    ("parse", "parse_fetch"),
    ("parse", "response_parser"),
    ("parse", "parse_message"),
    ("parse", "fetch_parser"),
    ("parse", "parse.py"),
    ("write", "apply (daemon/store"),
    ("write", "bulk.py"),
    ("write", "sqlalchemy"),
    ("write", "psycopg"),
)


def profile_split(path: Path) -> dict[str, float]:
    """Share of the samples in each phase (read, parse, write, other) of a collapsed file."""
    counts = dict.fromkeys(("read", "parse", "write", "other"), 0)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        phase = "other"
        for frame in stack.split(";"):
            for name, marker in PHASES:
                if marker in frame:
                    phase = name
        counts[phase] += int(count)
    total = sum(counts.values()) or 1
    return {name: count / total for name, count in counts.items()}


def run_daemon(
    config: Path,
    log: Path,
    engine: sa.Engine,
    total: int,
    *,
    helpers: Callable[[], dict[str, set[int]]],
    profile: Path | None = None,
) -> dict[str, Any]:
    """Time ``mailsyncd run`` from process start until ``total`` rows are visible."""
    mailsyncd = str(Path(sys.executable).with_name("mailsyncd"))
    with log.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            [mailsyncd, "run", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the benchmark, which stops it by PID
        )
    spy = None if profile is None else start_profiler(proc.pid, profile)
    helpers_at_start = {name: cpu_of(pids) for name, pids in helpers().items()}
    first = done = None
    flowing, rows, limit = 0.0, 0, max(120.0, total / 100)
    try:
        while rows < total:
            before, tick = rows, time.monotonic()
            if proc.poll() is not None or tick - started > limit:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mailsyncd: {proc.poll()=}, {rows}/{total} rows\n{tail}")
            time.sleep(POLL_EVERY)
            rows = count_rows(engine)
            now = time.monotonic()
            if rows and first is None:
                first = now - started
            if rows > before:
                flowing += now - tick
        done, cpu = time.monotonic() - started, cpu_seconds(proc.pid)
        helper_cpu = {
            name: cpu_delta(helpers_at_start.get(name, {}), cpu_of(pids))
            for name, pids in helpers().items()
        }
        if spy is not None:
            stop_profiler(spy)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        if spy is not None and spy.poll() is None:
            stop_pid(spy.pid)
            spy.wait()
        if proc.poll() is None:
            stop_pid(proc.pid)
            proc.wait()
    assert first is not None  # noqa: S101 - rows >= total > 0 set it
    return {
        "rows": rows,
        "seconds": done,
        "first_row_s": first,
        "rows_per_s": rows / done,
        "rows_per_s_excl_startup": rows / (done - first) if done > first else float("nan"),
        "rows_per_s_while_flowing": rows / flowing if flowing else float("nan"),
        "cpu_us_per_row": cpu / rows * 1e6,
        "dovecot_cpu_us_per_row": helper_cpu["dovecot"] / rows * 1e6,
        "postgres_cpu_us_per_row": helper_cpu["postgres"] / rows * 1e6,
        "exit_code": code,
    }


def report(r: dict[str, Any]) -> str:
    b, d = r["baseline"], r["daemon"]
    exit_note = "0" if d["exit_code"] == 0 else f"{d['exit_code']}  <-- NOT 0, see above"
    split = r["split_us_per_msg"]
    steps = sum(split.values())
    shares = r.get("profile_share")
    profile_line = (
        ""
        if not shares
        else "  profile   share of the daemon's Python CPU samples (py-spy --gil): "
        + ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
        + "\n"
    )
    return f"""
mailsyncd benchmark: initial sync into PostgreSQL vs a bare imapclient UID FETCH loop
  machine   {r["nproc"]} CPUs, Python {r["python"]}, PostgreSQL {r["pg"]}, {r["platform"]}
            load average {r["loadavg_start"]:.2f} at start, {r["loadavg_end"]:.2f} at the end \
(1 min; other work on the machine shows here)
  data      {r["mailboxes"]} mailboxes x {r["messages"]} messages = {r["total"]} rows \
({r["seed_mb"]:.0f} MB), FETCH batch {r["batch_size"]}, poll_interval {r["poll_interval"]}
  seeding   {r["seed_s"]:.1f} s ({r["total"] / r["seed_s"]:.0f} msgs/s; in no figure below)
  baseline  {b["msgs_per_s"]:7.0f} msgs/s  bare imapclient loop: {b["seconds"]:.2f} s, \
{b["fetch_only_msgs_per_s"]:.0f} msgs/s in the FETCH calls alone
  daemon    {d["rows_per_s"]:7.0f} rows/s  end to end: {d["seconds"]:.2f} s from process start
            {d["rows_per_s_excl_startup"]:7.0f} rows/s  excluding startup: first row after \
{d["first_row_s"]:.2f} s
            {d["rows_per_s_while_flowing"]:7.0f} rows/s  counting only the {POLL_EVERY} s polls \
in which the row count grew
  ratio     {r["ratio"]:.2f} daemon/baseline end to end, {r["ratio_excl_startup"]:.2f} \
excluding startup, {r["ratio_while_flowing"]:.2f} while rows flowed
  client CPU  baseline {b["cpu_us_per_msg"]:.0f} us/msg, daemon {d["cpu_us_per_row"]:.0f} \
us/row (its process, startup included)
  server CPU  Dovecot {d["dovecot_cpu_us_per_row"]:.0f} us/row, PostgreSQL backends \
{d["postgres_cpu_us_per_row"]:.0f} us/row (during the daemon's run)
  split     read {split["read"]:.1f} + parse {split["parse"]:.1f} + write {split["write"]:.1f} \
= {steps:.1f} us/msg: the daemon's steps on one thread, one mailbox;
            the other {d["cpu_us_per_row"] - steps:.0f} us/row of the daemon's CPU: threads, \
scheduling, sessions, logs, metrics, startup
{profile_line}  exit      mailsyncd exit code after SIGTERM: {exit_note}

Measured: both sides read the same {r["total"]} seeded messages in the same run, from the same
Dovecot over loopback TLS with XOAUTH2, after one untimed FETCH of every mailbox had warmed
Dovecot's cache (warm, not cold). The baseline is one thread in this process calling
imapclient's fetch for the daemon's own FETCH items, {r["batch_size"]} UIDs a call, mailbox after
mailbox, connect and login included, keeping nothing. The daemon is the real `mailsyncd run`
(its own tokens, concurrency, parsing and writes to a fresh local PostgreSQL database), timed
by polling count(*) of message_metadata every {POLL_EVERY} s. Its scheduler starts the first
polls at random offsets within the first {r["first_poll_spread_s"]:.1f} s (half of \
min(poll_interval, {FIRST_POLL_SPREAD_MAX:.0f} s)):
the end-to-end figures include that wait. Dovecot and PostgreSQL share the same CPUs, and
other load on the machine moves every figure. Client CPU counts this process during the
baseline loop and the mailsyncd process until the last row, not Dovecot or PostgreSQL.
This is a benchmark, not a test: it asserts nothing about speed.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=10, metavar="M")
    parser.add_argument("--messages", type=int, default=3000, metavar="N")
    parser.add_argument("--batch-size", type=int, default=500, metavar="B")
    # Short, so that the scheduler's spread of first polls (half the interval, at most 30 s)
    # does not dominate the figure; the re-polls of synced mailboxes are idle and cheap.
    parser.add_argument("--poll-interval", default="2s", help="daemon poll interval (2s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="sample the daemon with py-spy (must be installed) into FILE (collapsed stacks)",
    )
    args = parser.parse_args()
    if min(args.mailboxes, args.messages, args.batch_size) < 1:
        parser.error("M, N and B must be at least 1")
    try:
        interval = parse_duration(args.poll_interval)
    except ValueError as exc:
        parser.error(f"--poll-interval: {exc}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C
    server = sa.make_url(os.environ.get("MAILSYNCD_BENCH_PG", DEFAULT_PG))
    db_name = f"mailsyncd_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    mailboxes = [f"bench{i:04d}@{TENANT}.test" for i in range(args.mailboxes)]
    total = args.mailboxes * args.messages
    env: LocalEnv | None = None
    engine: sa.Engine | None = None
    created, load_start = False, os.getloadavg()[0]
    try:
        with admin.connect() as conn:
            pg = conn.execute(sa.text("SHOW server_version")).scalar_one().split()[0]
            conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
            created = True
        db_url = server.set(database=db_name)
        engine = sa.create_engine(db_url, poolclass=NullPool)
        say("starting the local environment (Dovecot, identity platform)")
        env = LocalEnv.start_temporary()
        say(f"seeding {args.mailboxes} mailboxes x {args.messages} messages")
        seed_s, seed_bytes = seed(env.info, mailboxes, args.messages)
        say(f"seeded {total} messages in {seed_s:.1f} s; warming Dovecot's cache (untimed)")
        warm_started = time.monotonic()
        warm(env.info, mailboxes)
        say(f"warmed in {time.monotonic() - warm_started:.1f} s; baseline: bare imapclient loop")
        base = baseline(env, mailboxes, args.batch_size)
        if base["messages"] != total:
            say(f"warning: the baseline fetched {base['messages']} messages, not {total}")
        # An installed mailsyncd starts from compiled bytecode (pip and the image compile it);
        # a checkout run with PYTHONDONTWRITEBYTECODE would compile every module at each start.
        compileall.compile_dir(Path(mailsyncd_package.__file__).parent, quiet=1)
        say(f"daemon: mailsyncd run into PostgreSQL database {db_name}")
        with tempfile.TemporaryDirectory(prefix="mailsyncd-bench-") as tmp:
            config = Path(tmp) / "bench.yaml"
            write_config(env.info, config, db_url.render_as_string(False), mailboxes, args)
            daemon = run_daemon(
                config,
                Path(tmp) / "mailsyncd.log",
                engine,
                total,
                helpers=lambda: helper_pids(env, engine),  # type: ignore[arg-type]
                profile=args.profile,
            )
            if daemon["exit_code"] != 0:
                log = (Path(tmp) / "mailsyncd.log").read_text(errors="replace")[-3000:]
                say(f"mailsyncd exited with {daemon['exit_code']} after SIGTERM; its log:\n{log}")
        say("where the time goes: the daemon's read, parse and write steps on one mailbox")
        pooled = create_engine_for(db_url.render_as_string(False))  # as the daemon's
        try:
            split = phase_split(env, pooled, mailboxes[0], args.batch_size)
        finally:
            pooled.dispose()
        figures = {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "pg": pg,
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg()[0],
            "mailboxes": args.mailboxes,
            "messages": args.messages,
            "batch_size": args.batch_size,
            "poll_interval": args.poll_interval,
            "first_poll_spread_s": min(interval, FIRST_POLL_SPREAD_MAX) * 0.5,
            "total": total,
            "seed_s": seed_s,
            "seed_mb": seed_bytes / 1e6,
            "baseline": base,
            "daemon": daemon,
            "split_us_per_msg": split,
            "profile_share": None if args.profile is None else profile_split(args.profile),
            "ratio": daemon["rows_per_s"] / base["msgs_per_s"],
            "ratio_excl_startup": daemon["rows_per_s_excl_startup"] / base["msgs_per_s"],
            "ratio_while_flowing": daemon["rows_per_s_while_flowing"] / base["msgs_per_s"],
        }
        print(json.dumps(figures, indent=2) if args.json else report(figures), flush=True)
    except KeyboardInterrupt:
        say("interrupted; stopping everything")
        return 130
    except RuntimeError as exc:  # mailsyncd died or stalled: its log tail is in the message
        say(f"failed: {exc}")
        return 1
    else:
        return 0
    finally:
        if engine is not None:
            engine.dispose()
        if env is not None:
            env.stop()
        if created:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
        say("stopped Dovecot, the identity platform and mailsyncd; dropped the database")


if __name__ == "__main__":
    raise SystemExit(main())
