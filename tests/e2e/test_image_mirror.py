"""The container image's steps, repeated without a container engine.

The Dockerfile's build stage is mirrored step by step: a build context holding only what
``.dockerignore`` admits, the build backend installed from the dev lock through the Dockerfile's
own ``awk`` filter, a wheel without dependencies, a fresh virtualenv with the runtime lock
(hashes required, wheels only) and the wheel. Then the runtime: ``mailsyncd --version``, and
``mailsyncd run`` for 20 seconds against the local environment as an unprivileged user without
capabilities and with no-new-privileges (what the Deployment's securityContext asks for), its
HOME and working tree read-only, its secrets readable through its group only (as with fsGroup),
writing only to its data directory (the image's volume) and its temp directory, until SIGTERM
stops it with exit code 0.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from daemon import __version__
from localenv.env import EnvInfo, free_port
from localenv.imap import FixtureImap
from localenv.seed import realistic_messages
from support.daemon import DaemonProcess, MailboxSpec, make_config, view_rows, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
USER = "mailsyncd"
RUN_SECONDS = 20
SEEDED = 25


def _run(*args: str | Path, timeout: float = 600, **kwargs: object) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        **kwargs,
    )
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _context_entries() -> list[str]:
    """The paths that ``.dockerignore`` lets into the build context (it excludes ``*`` first)."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "the mirror understands only an allow-list .dockerignore"
    return [line[1:] for line in lines if line.startswith("!")]


def _make_read_only(path: Path) -> None:
    """chmod a-w, recursively (what a read-only mount looks like to the daemon)."""
    for item in [path, *path.rglob("*")]:
        executable = item.is_dir() or item.stat().st_mode & stat.S_IXUSR
        item.chmod(0o555 if executable else 0o444)


def _unprivileged_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates the unprivileged user and runs mailsyncd as it")
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            [
                *("useradd", "--system", "--user-group", "--no-create-home"),
                *("--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", USER),
            ],
            check=False,  # exit 9: another process created it meanwhile
            capture_output=True,
        )
        return pwd.getpwnam(USER)


@pytest.fixture
def image_root() -> Iterator[Path]:
    """A directory the unprivileged user can traverse (pytest's tmp_path is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="mailsyncd-image-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _build_image(root: Path) -> Path:
    """The build stage; returns the runtime virtualenv (the image's /opt/mailsyncd)."""
    context = root / "context"
    context.mkdir()
    for entry in _context_entries():
        source = ROOT / entry
        if source.is_dir():
            shutil.copytree(
                source, context / entry, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]")
            )
        else:
            shutil.copy2(source, context / entry)

    # RUN awk '...' requirements-dev.lock > build.lock && python -m venv /opt/build && pip ...
    # Docker joins continuation lines by dropping the backslash and the line break.
    match = re.search(r"awk '([^']+)'", DOCKERFILE.read_text().replace("\\\n", ""))
    assert match is not None, "the Dockerfile selects the build backend from the dev lock"
    build_lock = root / "build.lock"
    awk = shutil.which("mawk") or "awk"  # Debian's (and so the image's) awk is mawk
    build_lock.write_text(_run(awk, match.group(1), context / "requirements-dev.lock"))
    assert "hatchling==" in build_lock.read_text()
    build_venv = root / "build"
    _run(sys.executable, "-m", "venv", build_venv)
    pip_install = ("install", "--disable-pip-version-check", "--require-hashes")
    _run(build_venv / "bin" / "pip", *pip_install, "--only-binary=:all:", "-r", build_lock)

    # RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .
    wheels = root / "wheels"
    _run(
        build_venv / "bin" / "pip",
        "wheel",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        wheels,
        ".",
        cwd=context,
    )
    (wheel,) = wheels.glob("mailsyncd-*.whl")

    # RUN python -m venv /opt/mailsyncd && pip install --require-hashes -r requirements.lock
    runtime = root / "opt" / "mailsyncd"
    _run(sys.executable, "-m", "venv", runtime)
    pip = runtime / "bin" / "pip"
    _run(pip, *pip_install, "--only-binary=:all:", "-r", context / "requirements.lock")
    _run(pip, "install", "--disable-pip-version-check", "--no-deps", "--no-index", wheel)
    _run(pip, "uninstall", "--yes", "pip", "setuptools")
    return runtime


def _install_files(
    root: Path, info: EnvInfo, user: pwd.struct_passwd, config: dict[str, object]
) -> Path:
    """Config, CA and secrets as the pod sees them; returns the config file."""
    etc = root / "etc"
    etc.mkdir()
    ca_file = etc / "ca.pem"
    shutil.copy(info.ca_file, ca_file)
    # Secret files: root-owned, readable through the user's group only (fsGroup, mode 0440).
    secrets = etc / "secrets"
    secrets.mkdir()
    os.chown(secrets, 0, user.pw_gid)
    secrets.chmod(0o750)
    tenants = config["tenants"]
    assert isinstance(tenants, list)
    for tenant, tenant_info in zip(tenants, info.tenants, strict=True):
        secret = secrets / f"{tenant_info.name}-client-secret"
        shutil.copy(tenant_info.secret_file, secret)
        os.chown(secret, 0, user.pw_gid)
        secret.chmod(0o440)
        tenant["credential"] = {"client_secret_file": str(secret)}
    config["tls"] = {"ca_file": str(ca_file)}
    config_file = etc / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    _make_read_only(etc / "config.yaml")
    ca_file.chmod(0o444)
    return config_file


def _owned_dir(path: Path, user: pwd.struct_passwd, mode: int) -> Path:
    path.mkdir()
    os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(mode)
    return path


def _process_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def test_image_steps_build_a_daemon_that_runs_unprivileged_on_a_read_only_tree(
    image_root: Path,
    tmp_path: Path,
    env_info: EnvInfo,
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
) -> None:
    user = _unprivileged_user()
    runtime = _build_image(image_root)
    mailsyncd = runtime / "bin" / "mailsyncd"

    # ENTRYPOINT ["mailsyncd"] with --version.
    assert _run(mailsyncd, "--version").strip() == f"mailsyncd {__version__}"

    # The image's writable places: its volume (SQLite) and /tmp. Everything else is read-only:
    # the working tree (a copy of the build context), HOME, the venv (root's, as in the image).
    data = _owned_dir(image_root / "data", user, 0o750)
    private_tmp = _owned_dir(image_root / "tmp", user, 0o700)
    home = image_root / "home"
    home.mkdir()
    tree = image_root / "context"
    _make_read_only(home)
    _make_read_only(tree)

    mailbox = new_mailbox()
    fixture_imap(mailbox).append("INBOX", list(realistic_messages(SEEDED, seed=7)))
    database_url = f"sqlite:///{data / 'mailsyncd.db'}"
    port = free_port()
    config = make_config(
        env_info,
        database_url=database_url,
        mailboxes=[MailboxSpec(mailbox)],
        http_port=port,
        poll_interval="2s",
    )
    config_file = _install_files(image_root, env_info, user, config)

    environment = {
        "PATH": f"{runtime / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": str(private_tmp),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
    }
    daemon = DaemonProcess(config_file, tmp_path / "mailsyncd.log", port)
    started = time.monotonic()
    with daemon.log_path.open("wb") as log:
        daemon.proc = subprocess.Popen(
            # USER 10001, capabilities drop ALL, allowPrivilegeEscalation: false.
            [
                *("setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}"),
                *("--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"),
                *("--", str(mailsyncd), "run", "-c", str(config_file)),
            ],
            cwd=tree,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        daemon.wait_ready(timeout=60)
        status = _process_status(daemon.proc.pid)
        assert status["Uid"].split() == [str(user.pw_uid)] * 4
        assert status["Groups"] == ""
        assert status["NoNewPrivs"] == "1"
        assert int(status["CapEff"], 16) == 0
        assert int(status["CapBnd"], 16) == 0

        wait_for(
            lambda: daemon.metric("mailsyncd_messages_synced_total", change="new") >= SEEDED,
            timeout=60,
            what=f"{SEEDED} new messages synced",
        )
        # Keep it running for the whole 20 seconds, healthy all along.
        while time.monotonic() - started < RUN_SECONDS:
            assert daemon.running()
            assert daemon.get("/healthz")[0] == 200
            time.sleep(1)

        stopping = time.monotonic()
        assert daemon.stop(signal.SIGTERM, timeout=30) == 0
        assert time.monotonic() - stopping < 10, "the SPEC's shutdown bound"
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)

    log_lines = daemon.log_lines()
    assert [line for line in log_lines if line["level"] in {"error", "critical"}] == []
    assert {"running", "stopped"} <= {line["event"] for line in log_lines}
    database = data / "mailsyncd.db"
    assert database.stat().st_uid == user.pw_uid, "written by the unprivileged user"
    rows = view_rows(database_url, mailbox)
    assert [row["uid"] for row in rows] == list(range(1, SEEDED + 1))
    # Nothing appeared in the read-only places.
    assert list(home.iterdir()) == []
