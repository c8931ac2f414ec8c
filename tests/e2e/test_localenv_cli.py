"""`python -m localenv start|stop` starts quickly and leaves no process behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from localenv.env import LocalEnv, _alive, descendants

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
