"""`python -m localenv start|stop` starts quickly and leaves no process behind."""

from __future__ import annotations

import os
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from imapclient import IMAPClient

from localenv.env import LocalEnv, _alive, descendants
from localenv.imap import FixtureImap
from localenv.seed import realistic_messages

ROOT = Path(__file__).resolve().parents[2]


def _localenv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localenv", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "deploy" / "local")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_start_then_stop_leaves_no_process_behind() -> None:
    root = Path(tempfile.mkdtemp(prefix="mailsyncd-cli-env-"))
    try:
        _start_and_stop(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _start_and_stop(root: Path) -> None:
    started = time.monotonic()
    result = _localenv("start", "--dir", str(root))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    print(f"local environment started in {elapsed:.2f}s")  # shown with -rP; figure for the notes
    env = LocalEnv.load(root)
    pids = set(env.info.pids.values())
    assert len(pids) == 2
    tree = set(pids)
    for pid in pids:
        tree |= descendants(pid)
    assert len(tree) > 2, "dovecot runs its helper processes below its master"
    assert _localenv("status", "--dir", str(root)).returncode == 0

    result = _localenv("stop", "--dir", str(root))
    assert result.returncode == 0, result.stderr
    alive = sorted(pid for pid in tree if _alive(pid))
    assert alive == [], f"processes left behind: {alive}"
    assert _localenv("status", "--dir", str(root)).returncode == 1


def test_cli_starts_in_a_directory_no_other_user_can_search(tmp_path: Path) -> None:
    """A checkout under a 0700 directory (root's home, a mktemp -d): Dovecot's processes run
    as other users and still reach their configuration, keys and mail."""
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    private.chmod(0o700)  # whatever the umask
    root = private / "checkout" / ".localenv"
    result = _localenv("start", "--dir", str(root))
    assert result.returncode == 0, result.stderr + result.stdout
    env = LocalEnv.load(root)
    try:
        runtime = Path(env.info.dovecot_dir)
        assert runtime.parent == Path(tempfile.gettempdir())
        assert stat.S_IMODE(runtime.stat().st_mode) == 0o755
        assert stat.S_IMODE(private.stat().st_mode) == 0o700, "the checkout's directory unchanged"
        mailbox = f"user-{uuid.uuid4().hex[:8]}@{env.info.tenant('contoso').domain}"
        # The mail process (the mail user when run as root) writes and reads the mailbox.
        with FixtureImap(env.info, mailbox) as fixture:
            uids = fixture.append("INBOX", realistic_messages(3, seed=5))
        # The auth process reads the validation keys: a platform token logs in with XOAUTH2.
        context = ssl.create_default_context(cafile=env.info.ca_file)
        with IMAPClient(
            env.info.imap_host, port=env.info.imap_port, ssl_context=context, timeout=10
        ) as client:
            client.oauth2_login(mailbox, env.mint_token("contoso"))
            client.select_folder("INBOX", readonly=True)
            assert client.search("ALL") == uids
        tree = set(env.info.pids.values())
        for pid in env.info.pids.values():
            tree |= descendants(pid)
    finally:
        stopped = _localenv("stop", "--dir", str(root))
    assert stopped.returncode == 0, stopped.stderr
    assert not runtime.exists(), "stop removes Dovecot's runtime directory"
    assert sorted(pid for pid in tree if _alive(pid)) == []
