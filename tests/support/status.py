"""A factory of ``MailboxStatus`` values for tests: a healthy mailbox unless told otherwise."""

from __future__ import annotations

import datetime as dt
from typing import Any

from daemon.status import MailboxStatus


def healthy_status(
    mailbox: str = "one@contoso.test",
    *,
    polled: dt.datetime,
    succeeded: dt.datetime,
    **changes: Any,
) -> MailboxStatus:
    """An ``ok`` mailbox of tenant contoso held by ``pod-a``; ``changes`` override any field."""
    fields: dict[str, Any] = {
        "mailbox": mailbox,
        "tenant": "contoso",
        "state": "ok",
        "owner": "pod-a",
        "last_poll_at": polled,
        "last_success_at": succeeded,
        "consecutive_failures": 0,
        "last_error_reason": None,
        "last_error": None,
        "hint": None,
        "initial_sync_remaining": 0,
    }
    fields.update(changes)
    return MailboxStatus(**fields)
