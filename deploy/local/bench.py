"""`make bench`: the daemon's initial sync into PostgreSQL next to a bare imapclient FETCH loop.

Seeds M mailboxes x N realistic messages into a temporary local environment, warms Dovecot's
cache once, times a bare imapclient ``UID FETCH`` loop over every mailbox (in this process),
then runs the real ``mailsyncd run`` into a fresh PostgreSQL database and times it until
``message_metadata`` holds M x N rows. It prints both rates and their ratio; it asserts nothing.
Everything it starts (Dovecot, identity platform, mailsyncd) is stopped by PID, also on Ctrl-C,
and the database is dropped. MAILSYNCD_BENCH_PG overrides the PostgreSQL server URL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from imapclient import IMAPClient
from sqlalchemy.pool import NullPool

from daemon.imap.parse import FETCH_ITEMS
from localenv.env import EnvInfo, LocalEnv, stop_pid
from localenv.imap import FixtureImap
from localenv.seed import KB, realistic_messages

DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/postgres"
TENANT = "contoso"
POLL_EVERY = 0.2
# imapclient wraps a string in another pair of parentheses: pass the items one by one.
ITEMS = re.findall(r"[^\s\[]+(?:\[[^\]]*\])?", FETCH_ITEMS.strip()[1:-1])


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def mailbox_names(count: int) -> list[str]:
    return [f"bench{i:04d}@{TENANT}.test" for i in range(count)]


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


def warm(info: EnvInfo, mailboxes: list[str], batch_size: int) -> None:
    """One untimed FETCH of the benchmark's items over each mailbox fills Dovecot's cache."""
    for mailbox in mailboxes:
        with FixtureImap(info, mailbox) as imap:
            for chunk in batches(imap.uids("INBOX"), batch_size):
                imap.client.fetch(chunk, ITEMS)


def baseline(env: LocalEnv, mailboxes: list[str], batch_size: int) -> dict[str, float]:
    """The bare loop: TLS, XOAUTH2, EXAMINE, UID SEARCH, UID FETCH in batches; no parsing."""
    context = ssl.create_default_context(cafile=env.info.ca_file)
    count, fetch_seconds = 0, 0.0
    started = time.monotonic()
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
    seconds = time.monotonic() - started
    return {
        "messages": count,
        "seconds": seconds,
        "msgs_per_s": count / seconds,
        "fetch_only_msgs_per_s": count / fetch_seconds,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(info: EnvInfo, path: Path, db_url: str, mailboxes: list[str], args: Any) -> None:
    config = {
        "database": {"url": db_url},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "tls": {"ca_file": info.ca_file},
        "logging": {"level": "warning", "format": "json"},
        "defaults": {"poll_interval": args.poll_interval},
        "limits": {"fetch_batch_size": args.batch_size},
        "tenants": [
            {
                "name": t.name,
                "tenant_id": t.tenant_id,
                "client_id": t.client_id,
                "credential": {"client_secret_file": t.secret_file},
                "authority_host": info.authority_host,
                "imap": {"host": info.imap_host, "port": info.imap_port},
            }
            for t in info.tenants
        ],
        "mailboxes": [{"address": m, "tenant": TENANT} for m in mailboxes],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def count_rows(engine: sa.Engine) -> int:
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM message_metadata")).scalar_one())
    except sa.exc.ProgrammingError:  # the migration has not created the view yet
        return 0


def run_daemon(config: Path, log: Path, engine: sa.Engine, total: int) -> dict[str, Any]:
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
        done = time.monotonic() - started
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            code = None
    finally:
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
        "exit_code": code,
    }


def report(r: dict[str, Any]) -> str:
    b, d = r["baseline"], r["daemon"]
    exit_note = "0" if d["exit_code"] == 0 else f"{d['exit_code']}  <-- NOT 0, see above"
    return f"""
mailsyncd benchmark: initial sync into PostgreSQL vs a bare imapclient UID FETCH loop
  machine    {r["nproc"]} CPUs, Python {r["python"]}, {r["platform"]}, PostgreSQL {r["pg"]}
  data       {r["mailboxes"]} mailboxes x {r["messages"]} messages = {r["total"]} rows, \
{r["seed_mb"]:.0f} MB; fetch batch {r["batch_size"]}; poll_interval {r["poll_interval"]}
  seeding    {r["seed_s"]:.1f} s ({r["total"] / r["seed_s"]:.0f} msgs/s, not part of any figure)
  baseline   {b["msgs_per_s"]:8.0f} msgs/s  bare imapclient loop, {b["seconds"]:.2f} s \
(FETCH calls alone: {b["fetch_only_msgs_per_s"]:.0f} msgs/s)
  daemon     {d["rows_per_s"]:8.0f} rows/s  end to end, {d["seconds"]:.2f} s from process start
             {d["rows_per_s_excl_startup"]:8.0f} rows/s  excluding startup \
(first row after {d["first_row_s"]:.2f} s: start, migration, first batch)
             {d["rows_per_s_while_flowing"]:8.0f} rows/s  only the {POLL_EVERY} s polls \
in which the row count grew
  ratio      {r["ratio"]:.2f} daemon/baseline end to end; {r["ratio_excl_startup"]:.2f} \
excluding startup; {r["ratio_while_flowing"]:.2f} while flowing
  exit       mailsyncd exit code after SIGTERM: {exit_note}

What was measured: both sides read the same {r["total"]} seeded messages in the same run from
the same Dovecot over loopback TLS with XOAUTH2, after one untimed FETCH of every mailbox
warmed Dovecot's cache (measured warm). The baseline is one Python thread in this process
calling imapclient's fetch for the daemon's FETCH items, {r["batch_size"]} UIDs per call, mailbox
after mailbox, including connect and login, keeping nothing. The daemon figure is the real
`mailsyncd run` (its own tokens from the local identity platform, its own concurrency, parsing,
and writes to a fresh local PostgreSQL database), timed by polling count(*) of message_metadata
every {POLL_EVERY} s, so it carries up to {POLL_EVERY} s of polling granularity; the daemon's
first polls start at random offsets within half of min(poll_interval, 60 s), which end-to-end
figures include. Both share the 2-core machine with Dovecot and PostgreSQL. This is a
benchmark, not a test: it asserts nothing about speed.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=10, metavar="M")
    parser.add_argument("--messages", type=int, default=3000, metavar="N")
    parser.add_argument("--batch-size", type=int, default=500, metavar="B")
    parser.add_argument("--poll-interval", default="1h", help="daemon poll interval (1h)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if min(args.mailboxes, args.messages, args.batch_size) < 1:
        parser.error("M, N and B must be at least 1")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C
    server = sa.make_url(os.environ.get("MAILSYNCD_BENCH_PG", DEFAULT_PG))
    db_name = f"mailsyncd_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    mailboxes = mailbox_names(args.mailboxes)
    total = args.mailboxes * args.messages
    env: LocalEnv | None = None
    engine: sa.Engine | None = None
    created = False
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
        warm(env.info, mailboxes, args.batch_size)
        say("baseline: bare imapclient UID FETCH loop")
        base = baseline(env, mailboxes, args.batch_size)
        if base["messages"] != total:
            say(f"warning: the baseline fetched {base['messages']} messages, not {total}")
        say(f"daemon: mailsyncd run into PostgreSQL database {db_name}")
        with tempfile.TemporaryDirectory(prefix="mailsyncd-bench-") as tmp:
            config = Path(tmp) / "bench.yaml"
            write_config(env.info, config, db_url.render_as_string(False), mailboxes, args)
            daemon = run_daemon(config, Path(tmp) / "mailsyncd.log", engine, total)
            if daemon["exit_code"] != 0:
                say(f"mailsyncd exited with {daemon['exit_code']} after SIGTERM; its log:")
                print((Path(tmp) / "mailsyncd.log").read_text(errors="replace")[-3000:])
        figures = {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "pg": pg,
            "mailboxes": args.mailboxes,
            "messages": args.messages,
            "batch_size": args.batch_size,
            "poll_interval": args.poll_interval,
            "total": total,
            "seed_s": seed_s,
            "seed_mb": seed_bytes / 1e6,
            "baseline": base,
            "daemon": daemon,
            "ratio": daemon["rows_per_s"] / base["msgs_per_s"],
            "ratio_excl_startup": daemon["rows_per_s_excl_startup"] / base["msgs_per_s"],
            "ratio_while_flowing": daemon["rows_per_s_while_flowing"] / base["msgs_per_s"],
        }
        print(json.dumps(figures, indent=2) if args.json else report(figures), flush=True)
    except KeyboardInterrupt:
        say("interrupted; stopping everything")
        return 130
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
