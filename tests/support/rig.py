"""``MailboxRig``: what e2e tests of one running daemon share: seeded mailboxes, a database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from localenv.env import EnvInfo
from localenv.imap import FixtureImap
from localenv.seed import realistic_messages
from support.daemon import DaemonProcess, count_rows


@dataclass
class MailboxRig:
    """The daemon runner, the fixture IMAP access, new mailbox names and a database URL."""

    mailsyncd: Callable[..., DaemonProcess]
    fixture_imap: Callable[[str], FixtureImap]
    new_mailbox: Callable[..., str]
    info: EnvInfo
    url: str

    def mailboxes(self, count: int, messages: int = 2, seed: int = 100) -> list[str]:
        """``count`` new mailboxes with ``messages`` realistic messages each in INBOX."""
        made = [self.new_mailbox() for _ in range(count)]
        for index, mailbox in enumerate(made):
            self.fixture_imap(mailbox).append(
                "INBOX", realistic_messages(messages, seed=seed + index)
            )
        return made

    def rows(self, mailbox: str) -> int:
        return count_rows(self.url, mailbox)
