"""Reload without restart of the real `mailsyncd run` (SPEC "Reload", "Large mailbox lists").

SIGHUP, or a change of the configuration file or of a mailbox list it includes (also the
Kubernetes ConfigMap swap of a `..data` symbolic link, with no signal), applies the new
configuration to the running process; a broken file is rejected whole and the old one stays.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from localenv import pki
from localenv.client import IdpControl
from localenv.env import EnvInfo, free_port
from localenv.imap import FixtureImap
from localenv.seed import realistic_messages
from support.daemon import (
    DaemonProcess,
    MailboxSpec,
    count_rows,
    epoch,
    events,
    make_config,
    wait_for,
)

pytestmark = pytest.mark.slow


def polled(daemon: DaemonProcess, mailbox: str, since: float) -> int:
    """`poll` events of ``mailbox`` logged at or after ``since`` (the run logs at debug)."""
    lines = events(daemon, "poll")
    return sum(1 for line in lines if line.get("mailbox") == mailbox and epoch(line) >= since)


class Setup:
    def __init__(
        self,
        tmp_path: Path,
        info: EnvInfo,
        url: str,
        fixture_imap: Callable[[str], FixtureImap],
        new_mailbox: Callable[..., str],
    ) -> None:
        self.tmp = tmp_path
        self.info = info
        self.url = url
        self.fixture_imap = fixture_imap
        self.new_mailbox = new_mailbox
        self.port = free_port()
        self.path = tmp_path / "mailsyncd.yaml"

    def mailbox(self, messages: int = 2) -> str:
        address = self.new_mailbox()
        self.fixture_imap(address).append("INBOX", realistic_messages(messages, seed=7))
        return address

    def config(self, mailboxes: list[str], **extra: Any) -> dict[str, Any]:
        return make_config(
            self.info,
            database_url=self.url,
            mailboxes=[MailboxSpec(m) for m in mailboxes],
            poll_interval="1s",
            http_port=self.port,
            level="debug",
            extra=extra or None,
        )

    def write(self, config: dict[str, Any] | str, path: Path | None = None) -> None:
        """Replace the file atomically, as an editor or a deployment tool would."""
        target = path or self.path
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
        tmp.replace(target)

    def start(self, config_path: Path | None = None) -> DaemonProcess:
        daemon = DaemonProcess(config_path or self.path, self.tmp / "mailsyncd.log", self.port)
        return daemon.start()


@pytest.fixture
def setup(
    tmp_path: Path,
    env_info: EnvInfo,
    database_url: str,
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
) -> Setup:
    """Once with SQLite (one replica) and once with PostgreSQL (a replica with leases)."""
    return Setup(tmp_path, env_info, database_url, fixture_imap, new_mailbox)


@pytest.fixture
def running(setup: Setup) -> Callable[..., DaemonProcess]:
    started: list[DaemonProcess] = []

    def start(config_path: Path | None = None) -> DaemonProcess:
        daemon = setup.start(config_path)
        started.append(daemon)
        return daemon

    yield start  # type: ignore[misc]
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)


def test_sighup_adds_and_removes_mailboxes_in_the_same_process(
    setup: Setup, running: Callable[..., DaemonProcess]
) -> None:
    kept, removed, added = setup.mailbox(), setup.mailbox(), setup.mailbox(3)
    setup.write(setup.config([kept, removed]))
    daemon = running()
    wait_for(lambda: count_rows(setup.url, removed) == 2, timeout=60, what="first syncs")
    pid = daemon.proc.pid  # type: ignore[union-attr]
    setup.write(setup.config([kept, added]))
    daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    wait_for(lambda: count_rows(setup.url, added) == 3, timeout=15, what="added mailbox synced")
    reloaded_at = time.time()
    wait_for(lambda: polled(daemon, kept, reloaded_at) >= 3, timeout=15, what="kept polled")
    assert polled(daemon, removed, reloaded_at + 1) == 0
    assert count_rows(setup.url, removed) == 2  # rows stay
    assert daemon.running()
    assert daemon.proc.pid == pid  # type: ignore[union-attr]
    wait_for(
        lambda: daemon.metric("mailsyncd_config_last_reload_successful") == 1,
        timeout=10,
        what="reload gauge",
    )
    assert daemon.metric("mailsyncd_config_last_reload_success_timestamp_seconds") >= (
        reloaded_at - 15
    )
    assert daemon.stop() == 0


def test_a_broken_reload_is_rejected_whole_and_the_running_config_stays(
    setup: Setup, running: Callable[..., DaemonProcess]
) -> None:
    first, other = setup.mailbox(), setup.mailbox()
    setup.write(setup.config([first]))
    daemon = running()
    wait_for(lambda: count_rows(setup.url, first) == 2, timeout=60, what="first sync")
    broken = setup.config([first, other])
    broken["mailboxes"][1]["tenant"] = "nosuchtenant"
    broken["defaults"]["poll_interval"] = "soon"
    setup.write(broken)
    daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    failed = wait_for(
        lambda: len(events(daemon, "config_reload_failed")) >= 2,
        timeout=15,
        what="config_reload_failed events",
    )
    assert failed
    lines = events(daemon, "config_reload_failed")
    assert all(line["level"] == "error" for line in lines)
    keys = {line.get("key") for line in lines}
    assert {"mailboxes[1].tenant", "defaults.poll_interval"} <= keys, lines
    # The gauge is set once every problem has been logged.
    wait_for(
        lambda: daemon.metric("mailsyncd_config_last_reload_successful") == 0,
        timeout=10,
        what="rejected reload gauge",
    )
    # The old configuration runs on: new mail of the first mailbox arrives, none of the other.
    setup.fixture_imap(first).append("INBOX", realistic_messages(1, seed=70))
    wait_for(lambda: count_rows(setup.url, first) == 3, timeout=15, what="mail after a bad reload")
    assert count_rows(setup.url, other) == 0
    # Fixing the file is picked up without a signal.
    setup.write(setup.config([first, other]))
    wait_for(lambda: count_rows(setup.url, other) == 2, timeout=20, what="fixed file applied")
    wait_for(
        lambda: daemon.metric("mailsyncd_config_last_reload_successful") == 1,
        timeout=10,
        what="reload gauge back to 1",
    )
    assert daemon.stop() == 0


def test_a_configmap_symlink_swap_is_applied_without_a_signal(
    setup: Setup, running: Callable[..., DaemonProcess]
) -> None:
    first, added = setup.mailbox(), setup.mailbox()
    mount = setup.tmp / "configmap"
    mount.mkdir()

    def publish(version: int, config: dict[str, Any]) -> None:
        # What the kubelet does: a new timestamped directory, then ..data swapped atomically.
        directory = mount / f"..2026_12_01_{version}"
        directory.mkdir()
        (directory / "config.yaml").write_text(yaml.safe_dump(config))
        tmp_link = mount / "..data_tmp"
        tmp_link.symlink_to(directory.name)
        tmp_link.replace(mount / "..data")

    publish(1, setup.config([first]))
    (mount / "config.yaml").symlink_to("..data/config.yaml")
    daemon = running(mount / "config.yaml")
    wait_for(lambda: count_rows(setup.url, first) == 2, timeout=60, what="first sync")
    publish(2, setup.config([first, added]))
    wait_for(lambda: count_rows(setup.url, added) == 2, timeout=20, what="swap applied")
    assert events(daemon, "config_reloaded")
    assert daemon.stop() == 0


def test_mailbox_lists_in_their_own_files_are_reloaded_when_a_list_changes(
    setup: Setup, running: Callable[..., DaemonProcess]
) -> None:
    first, second, third = setup.mailbox(), setup.mailbox(), setup.mailbox()
    lists = setup.tmp / "lists"
    lists.mkdir()
    config = setup.config([])
    config["mailboxes"] = []
    config["mailboxes_files"] = ["lists/*.yaml"]
    setup.write(config)
    setup.write(yaml.safe_dump([{"address": first, "tenant": "contoso"}]), lists / "a.yaml")
    daemon = running()
    wait_for(lambda: count_rows(setup.url, first) == 2, timeout=60, what="first sync")
    setup.write(
        yaml.safe_dump([{"address": second, "tenant": "contoso"}]), lists / "b.yaml"
    )  # a new file matching the pattern
    wait_for(lambda: count_rows(setup.url, second) == 2, timeout=20, what="new list file applied")
    setup.write(
        yaml.safe_dump(
            [{"address": first, "tenant": "contoso"}, {"address": third, "tenant": "contoso"}]
        ),
        lists / "a.yaml",
    )
    wait_for(lambda: count_rows(setup.url, third) == 2, timeout=20, what="edited list applied")
    # A duplicate across lists is rejected whole, naming the file.
    setup.write(yaml.safe_dump([{"address": third, "tenant": "contoso"}]), lists / "c.yaml")
    lines = wait_for(
        lambda: events(daemon, "config_reload_failed"), timeout=20, what="duplicate rejected"
    )
    assert any("c.yaml" in (line.get("key") or "") for line in lines), lines
    assert daemon.running()
    assert daemon.stop() == 0


def test_a_changed_tenant_credential_gets_a_new_token_at_once(
    setup: Setup,
    running: Callable[..., DaemonProcess],
    idp: IdpControl,
) -> None:
    first = setup.mailbox()
    setup.write(setup.config([first]))
    daemon = running()
    wait_for(lambda: count_rows(setup.url, first) == 2, timeout=60, what="first sync")
    secret = setup.tmp / "rotated-secret"
    pki.write_private(secret, Path(setup.info.tenant("contoso").secret_file).read_bytes())
    config = setup.config([first])
    config["tenants"][0]["credential"] = {"client_secret_file": str(secret)}
    client_id = setup.info.tenant("contoso").client_id
    before = time.time()
    setup.write(config)
    os.kill(daemon.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
    wait_for(
        lambda: [
            r
            for r in idp.requests()
            if r["client_id"] == client_id and r["time"] >= before and r["status"] == 200
        ],
        timeout=15,
        what="a token with the new credential",
    )
    setup.fixture_imap(first).append("INBOX", realistic_messages(1, seed=71))
    wait_for(lambda: count_rows(setup.url, first) == 3, timeout=15, what="mail after the change")
    assert daemon.stop() == 0
