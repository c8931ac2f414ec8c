"""`make demo` runs end to end, syncs the three demo mailboxes and leaves no process behind.

It runs in a copy of the checkout under a directory no other user can search (as a clone in
root's 0700 home is), on free ports, with the virtualenv of this checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import demo  # deploy/local/demo.py, on pytest's pythonpath: its SEED says what it seeds
import pytest

from localenv.env import LocalEnv, _alive, descendants, stop_pid
from localenv.seed import hostile_messages, realistic_messages
from support.daemon import wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
DEMO_TIMEOUT = 180.0
APPENDED = re.compile(r"appended message #(\d+) to (\S+@\S+)")
METRICS = re.compile(r"curl -s http://127\.0\.0\.1:(\d+)/metrics")
IMAP_PORT = re.compile(r"Dovecot on 127\.0\.0\.1:(\d+), identity platform on :(\d+)")


def _appended_message_id(counter: int) -> str:
    """The Message-ID of the demo's n-th appended message (same generator and seed)."""
    message = next(iter(realistic_messages(1, seed=10_000 + counter, max_size=64 * 1024)))
    return str(message.expected.message_id)


def _demo_pids(demo_dir: Path) -> set[int]:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return set(LocalEnv.load(demo_dir / "env").info.pids.values())
    return set()


def _private_checkout(tmp_path: Path) -> Path:
    """The checkout's files (tracked and new, not ignored) copied under a 0700 directory."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o700)
    checkout = home / "mailsyncd"
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # not a file deleted in the working tree
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, checkout / name)  # mtimes kept: make sees the venv up to date
    return checkout


def test_make_demo_syncs_all_three_mailboxes_and_leaves_no_process_behind(
    tmp_path: Path,
) -> None:
    checkout = _private_checkout(tmp_path)
    demo_dir = checkout / ".demo"
    output_file = tmp_path / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSYNCD_")}
    env["DEMO_SECONDS"] = "12"
    # Free ports: the demo picks them and prints them.
    env.update(DEMO_IMAP_PORT="0", DEMO_IDP_PORT="0", DEMO_HTTP_PORT="0")
    started = time.monotonic()
    with output_file.open("wb") as out:
        proc = subprocess.Popen(
            # This checkout's virtualenv, never (re)installed from the copy (-o: its stamp is
            # taken as up to date), so that it keeps pointing at this checkout.
            ["make", "-o", str(VENV / ".installed"), "demo", f"VENV={VENV}"],
            cwd=checkout,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def output() -> str:
        return output_file.read_text(errors="replace")

    # env.json loses its pids when the demo stops the environment, so the process tree is
    # recorded while everything runs: once the first message is appended, the environment
    # and mailsyncd are all up.
    tree: set[int] = set()
    env_pids: set[int] = set()
    try:
        wait_for(
            lambda: "appended message #1" in output() or proc.poll() is not None,
            timeout=DEMO_TIMEOUT,
            what="the demo's first appended message",
        )
        env_pids = _demo_pids(demo_dir)
        tree = descendants(proc.pid) | env_pids
        for pid in env_pids:
            tree |= descendants(pid)
        code = proc.wait(max(1.0, DEMO_TIMEOUT - (time.monotonic() - started)))
    finally:
        if proc.poll() is None:  # only on failure: stop what it started, by PID
            proc.kill()
            proc.wait(10)
            for pid in tree | _demo_pids(demo_dir):
                stop_pid(pid)
    elapsed = time.monotonic() - started
    print(f"make demo took {elapsed:.1f}s")  # shown with -rP

    text = output()
    assert code == 0, text[-4000:]
    assert "is not searchable" not in text
    (http_port,) = METRICS.findall(text)
    ((imap_port, idp_port),) = IMAP_PORT.findall(text)
    assert f"DEMO_HTTP_PORT=0: mailsyncd HTTP on 127.0.0.1:{http_port} instead" in text
    assert f"DEMO_IMAP_PORT=0: IMAPS (Dovecot) on 127.0.0.1:{imap_port} instead" in text
    assert f"DEMO_IDP_PORT=0: identity platform on 127.0.0.1:{idp_port} instead" in text
    assert "running: mailsyncd run -c .demo/demo.yaml" in text
    assert "from message_metadata order by first_seen_at desc limit 5" in text
    assert "mailsyncd stopped (exit 0)" in text
    assert len(env_pids) == 2, f"env.json should list dovecot and idp while running: {env_pids}"
    assert len(tree) > 4, f"make, the demo, mailsyncd, dovecot and its helpers: {tree}"
    left = sorted(pid for pid in tree | _demo_pids(demo_dir) if _alive(pid))
    assert left == [], f"processes left behind by the demo: {left}"

    appended: dict[str, set[str]] = {}
    for number, mailbox in APPENDED.findall(text):
        appended.setdefault(mailbox, set()).add(_appended_message_id(int(number)))
    assert appended, text[-4000:]
    all_appended = set().union(*appended.values())
    database = sqlite3.connect(f"file:{demo_dir / 'mailsyncd.db'}?mode=ro", uri=True)
    try:
        rows = database.execute(
            "SELECT mailbox, folder, uid, message_id, flags FROM message_metadata"
            " WHERE deleted_at IS NULL"
        ).fetchall()
    finally:
        database.close()
    for (mailbox, folder), count in demo.SEED.items():
        # As the demo seeds: alice's INBOX also gets the hostile messages.
        hostile = folder == "INBOX" and mailbox.startswith("alice")
        seeded = count + (len(hostile_messages()) if hostile else 0)
        in_folder = [r for r in rows if r[0] == mailbox and r[1] == folder]
        assert len([r for r in in_folder if r[3] not in all_appended]) == seeded, (mailbox, folder)
        assert len({r[2] for r in in_folder}) == len(in_folder), "a uid stored twice"
        assert all(isinstance(json.loads(r[4]), list) for r in in_folder)
    synced = {(r[0], r[3]) for r in rows if r[3] in all_appended and r[1] == "INBOX"}
    expected_pairs = {(m, i) for m, ids in appended.items() for i in ids}
    assert synced <= expected_pairs, "an appended message landed in the wrong mailbox"
    assert synced, "none of the appended messages reached the database before the demo ended"
    assert {r[0] for r in rows} == {"alice@contoso.test", "bob@contoso.test", "carol@fabrikam.test"}
