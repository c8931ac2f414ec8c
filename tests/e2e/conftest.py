"""Fixtures that run the real ``mailsyncd`` command against the local environment."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from localenv.env import EnvInfo, free_port
from localenv.exchange_proxy import ExchangeProxy
from support.daemon import DaemonProcess, MailboxSpec, make_config


@pytest.fixture
def exchange(env_info: EnvInfo) -> Iterator[ExchangeProxy]:
    """The local environment's Exchange mode: a proxy in front of Dovecot, closed after."""
    proxy = ExchangeProxy(env_info).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def mailsyncd(tmp_path: Path, env_info: EnvInfo) -> Iterator[Callable[..., DaemonProcess]]:
    """Returns a function that writes a config and starts ``mailsyncd run``; all stopped after."""
    started: list[DaemonProcess] = []

    def start(
        *, database_url: str, mailboxes: Sequence[MailboxSpec], run: bool = True, **kwargs: Any
    ) -> DaemonProcess:
        port = free_port()
        config = make_config(
            env_info, database_url=database_url, mailboxes=mailboxes, http_port=port, **kwargs
        )
        index = len(started)
        path = tmp_path / f"mailsyncd-{index}.yaml"
        path.write_text(yaml.safe_dump(config))
        daemon = DaemonProcess(path, tmp_path / f"mailsyncd-{index}.log", port)
        started.append(daemon)
        return daemon.start() if run else daemon

    yield start
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
