"""`make demo`: mailsyncd end to end on the local stand-in environment, with SQLite.

Starts the environment in .demo/env (fixed ports 10993 and 10443, the ids of
config/demo.yaml), seeds three mailboxes in two tenants, runs `mailsyncd run -c
config/demo.yaml`, appends a new message every few seconds and says where to look. Ctrl-C
stops everything it started, by PID. DEMO_SECONDS=N stops by itself after N seconds.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from localenv.env import LocalEnv
from localenv.imap import FixtureImap
from localenv.seed import hostile_messages, realistic_messages

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / ".demo"
CONFIG = ROOT / "config" / "demo.yaml"
FIXED_IDS = {
    "contoso": ("3c1d2e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f", "9e8d7c6b-5a4f-4e3d-9c2b-1a0f9e8d7c6b"),
    "fabrikam": ("fabrikam.test", "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"),
}
SEED = {
    ("alice@contoso.test", "INBOX"): 300,
    ("alice@contoso.test", "Sent Items"): 40,
    ("bob@contoso.test", "INBOX"): 120,
    ("carol@fabrikam.test", "INBOX"): 200,
}


def say(text: str) -> None:
    print(f"\033[1m[demo]\033[0m {text}" if sys.stdout.isatty() else f"[demo] {text}", flush=True)


def main() -> int:
    seconds = float(os.environ.get("DEMO_SECONDS", "0") or 0)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    if (DEMO / "env" / "env.json").exists():
        LocalEnv.load(DEMO / "env").stop()  # a previous demo killed hard
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    say("starting the local environment (Dovecot on 127.0.0.1:10993, identity platform on :10443)")
    env = LocalEnv.start(DEMO / "env", fixed_ids=FIXED_IDS, imap_port=10993, idp_port=10443)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        rng = random.Random(7)
        for (mailbox, folder), count in SEED.items():
            with FixtureImap(env.info, mailbox) as imap:
                messages = list(
                    realistic_messages(count, seed=rng.randint(0, 10**6), max_size=256 * 1024)
                )
                if folder == "INBOX" and mailbox.startswith("alice"):
                    messages += hostile_messages()
                imap.append(folder, messages)
            say(f"seeded {len(messages)} messages into {mailbox} / {folder}")
        mailsyncd = Path(sys.executable).with_name("mailsyncd")
        say(f"running: mailsyncd run -c {CONFIG.relative_to(ROOT)}")
        daemon = subprocess.Popen([str(mailsyncd), "run", "-c", str(CONFIG)], cwd=ROOT)
        say("look here while it runs:")
        say("  metrics:  curl -s http://127.0.0.1:9464/metrics | grep ^mailsyncd_")
        say("  ready:    curl -s http://127.0.0.1:9464/readyz")
        query = (
            "select mailbox, folder, uid, subject, from_address, sent_at, flags "
            "from message_metadata order by first_seen_at desc limit 5"
        )
        python = (
            ".venv/bin/python -c \"import sqlite3; db = sqlite3.connect('.demo/mailsyncd.db'); "
        )
        say(f"  data:     {python}[print(r) for r in db.execute('{query}')]\"")
        say("a new message arrives every 5 seconds; Ctrl-C stops everything")
        started = time.monotonic()
        counter = 0
        while not stop.wait(5.0):
            if daemon.poll() is not None:
                say(f"mailsyncd exited with {daemon.returncode}")
                return 1
            if seconds and time.monotonic() - started >= seconds:
                break
            counter += 1
            mailbox = rng.choice(["alice@contoso.test", "bob@contoso.test", "carol@fabrikam.test"])
            message = next(iter(realistic_messages(1, seed=10_000 + counter, max_size=64 * 1024)))
            with FixtureImap(env.info, mailbox) as imap:
                imap.append("INBOX", [message])
            say(f"appended message #{counter} to {mailbox}")
        return 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            say(f"mailsyncd stopped (exit {daemon.returncode})")
        env.stop()
        say("local environment stopped; the database stays in .demo/mailsyncd.db")


if __name__ == "__main__":
    raise SystemExit(main())
