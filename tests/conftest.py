"""Fixtures shared by every test: the local stand-in environment and its helpers.

The environment (Dovecot + identity platform) starts once per test process (once per xdist
worker) and is stopped by PID at the end of the session, whatever the outcome of the tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from localenv.client import IdpControl
from localenv.env import EnvInfo, LocalEnv
from localenv.imap import FixtureImap


@pytest.fixture(scope="session")
def local_env() -> Iterator[LocalEnv]:
    env = LocalEnv.start_temporary()
    try:
        yield env
    finally:
        env.stop()


@pytest.fixture
def env_info(local_env: LocalEnv) -> EnvInfo:
    return local_env.info


@pytest.fixture
def idp(env_info: EnvInfo) -> Iterator[IdpControl]:
    """Controls of the identity platform; failures and lifetime are reset after the test."""
    control = IdpControl(env_info)
    control.clear_failures()
    yield control
    control.clear_failures()
    control.set_token_lifetime(3600)


@pytest.fixture
def new_mailbox() -> Callable[..., str]:
    """Returns a function making a mailbox address no other test uses."""

    def make(domain: str = "contoso.test", prefix: str = "mbx") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}@{domain}"

    return make


@pytest.fixture
def fixture_imap(env_info: EnvInfo) -> Iterator[Callable[[str], FixtureImap]]:
    """Returns a function opening a fixture (master) session on a mailbox; all closed after."""
    opened: list[FixtureImap] = []

    def open_(mailbox: str) -> FixtureImap:
        session = FixtureImap(env_info, mailbox)
        opened.append(session)
        return session

    yield open_
    for session in opened:
        session.close()
