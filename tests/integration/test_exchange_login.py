"""The IMAP adapter's login step against Exchange mode (the local Dovecot behind
``localenv.exchange_proxy``): a mailbox the application has no grant on fails at login, as
Exchange Online refuses only the command after AUTHENTICATE, with the fix filled in."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from daemon.auth.hints import token_object_id
from daemon.errors import MailboxAccessDenied
from daemon.imap.client import ImapMailbox, open_mailbox
from daemon.tls import make_ssl_context
from localenv.env import EnvInfo, LocalEnv
from localenv.exchange_proxy import ExchangeProxy

Open = Callable[[str, str], ImapMailbox]


@pytest.fixture
def proxy(env_info: EnvInfo) -> Iterator[ExchangeProxy]:
    with ExchangeProxy(env_info) as started:
        started.start()
        yield started


@pytest.fixture
def login(env_info: EnvInfo, proxy: ExchangeProxy) -> Iterator[Open]:
    """Returns ``login(mailbox, token)``: connect through the proxy and log in."""
    sessions: list[ImapMailbox] = []

    def open_(mailbox: str, token: str) -> ImapMailbox:
        session = open_mailbox(
            host=env_info.imap_host,
            port=proxy.port,
            ssl_context=make_ssl_context(env_info.ca_file),
            timeout=10,
            user=mailbox,
            token=token,
        )
        sessions.append(session)
        return session

    yield open_
    for session in sessions:
        session.logout()


def test_mailbox_without_grant_fails_at_login_with_the_grant_command_filled_in(
    local_env: LocalEnv, proxy: ExchangeProxy, login: Open, new_mailbox: Callable[..., str]
) -> None:
    mailbox = new_mailbox()
    proxy.deny_mailbox(mailbox)
    token = local_env.mint_token("contoso")
    oid = token_object_id(token)
    assert oid
    with pytest.raises(MailboxAccessDenied) as caught:
        login(mailbox, token)
    assert proxy.logins_of(mailbox) == 1  # AUTHENTICATE itself was accepted
    error = caught.value
    assert "User is authenticated but not connected" in str(error)
    assert "login" in str(error)
    assert error.reason == "auth"
    assert error.hint is not None
    assert f"Add-MailboxPermission -Identity {mailbox} -User {oid} -AccessRights FullAccess" in (
        error.hint
    )
    assert token not in f"{error} {error.hint} {error!r}"


def test_mailbox_with_grant_logs_in_and_examines_without_enable(
    local_env: LocalEnv, proxy: ExchangeProxy, login: Open, new_mailbox: Callable[..., str]
) -> None:
    mailbox = new_mailbox()
    session = login(mailbox, local_env.mint_token("contoso"))
    assert "ENABLE" not in session.capabilities
    assert not session.condstore
    assert session.examine("INBOX").exists == 0
    assert proxy.logins_of(mailbox.upper()) == 1
