"""The fast path of an initial sync stores exactly the rows the general path stores.

Fast: the FETCH response read off the connection in one buffer, records parsed straight from
its bytes, rows sent to PostgreSQL with COPY. General: imaplib's reading, imapclient's parser,
``parse_message``, and rows inserted with executemany (PostgreSQL) or into SQLite. The same
messages from the real Dovecot, the same ``now``: the ``message_metadata`` rows must agree
byte for byte (PostgreSQL's text form of each row) and value for value (SQLite).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from imapclient.response_parser import parse_fetch_response

from daemon.imap.client import ImapMailbox, open_mailbox
from daemon.imap.parse import FETCH_ITEMS, parse_message
from daemon.store.migrate import migrate
from daemon.store.repository import SqlStore
from daemon.sync.model import Checkpoint, FolderChanges, MessageRecord
from daemon.tls import make_ssl_context
from localenv.env import EnvInfo, LocalEnv
from localenv.imap import FixtureImap
from localenv.seed import hostile_messages, realistic_messages

BATCH = 500
NOW = dt.datetime(2026, 3, 2, 10, 0, 0, 123456, tzinfo=dt.UTC)


@pytest.fixture
def session(local_env: LocalEnv, env_info: EnvInfo) -> Iterator[Callable[[str], ImapMailbox]]:
    opened: list[ImapMailbox] = []

    def open_(mailbox: str) -> ImapMailbox:
        client = open_mailbox(
            host=env_info.imap_host,
            port=env_info.imap_port,
            ssl_context=make_ssl_context(env_info.ca_file),
            timeout=60,
            user=mailbox,
            token=local_env.mint_token("contoso"),
        )
        opened.append(client)
        return client

    yield open_
    for client in opened:
        client.logout()


def _general_records(client: ImapMailbox, uids: Sequence[int]) -> list[MessageRecord]:
    """imaplib reads, imapclient parses, ``parse_message`` builds: the path before the fast one."""
    imap = client._imap
    typ, data = imap.uid("FETCH", f"{uids[0]}:{uids[-1]}", FETCH_ITEMS)
    assert typ == "OK"
    parsed = parse_fetch_response(data, normalise_times=False, uid_is_key=False)
    entries = {entry[b"UID"]: entry for entry in parsed.values()}
    return [parse_message(uid, entries[uid]) for uid in sorted(entries) if uid in set(uids)]


def _store_all(store: SqlStore, mailbox: str, uidvalidity: int, batches: list[list[Any]]) -> None:
    folder = store.ensure_folder(store.ensure_mailbox(mailbox, "contoso"), "INBOX")
    for records in batches:
        last = records[-1].uid
        store.apply(
            FolderChanges(
                folder_id=folder.folder_id,
                uidvalidity=uidvalidity,
                new=tuple(records),
                checkpoint=Checkpoint(uidvalidity, last, None, NOW),
            ),
            NOW,
        )


def _text_rows(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        return list(
            connection.exec_driver_sql(
                "SELECT m::text FROM message_metadata m ORDER BY uid"
            ).scalars()
        )


def _value_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT * FROM message_metadata ORDER BY uid")
        return [_normal(dict(row._mapping)) for row in rows]


def _normal(row: dict[str, Any]) -> dict[str, Any]:
    for key, value in row.items():
        if isinstance(value, str) and key in ("to_addresses", "cc_addresses", "flags"):
            row[key] = json.loads(value)
        elif isinstance(value, str) and key.endswith("_at"):
            row[key] = dt.datetime.fromisoformat(value)
        if isinstance(row[key], dt.datetime):
            moment = row[key]
            row[key] = (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).astimezone(
                dt.UTC
            )
    return row


def test_fast_path_and_general_path_store_identical_rows_on_hostile_and_realistic_messages(
    *,
    session: Callable[[str], ImapMailbox],
    fixture_imap: Callable[[str], FixtureImap],
    new_mailbox: Callable[..., str],
    make_pg_url: Callable[[], str],
    make_sqlite_url: Callable[[], str],
    make_engine: Callable[[str], sa.Engine],
) -> None:
    mailbox = new_mailbox()
    messages = hostile_messages() + list(realistic_messages(5000, seed=77, big_every=0))
    uids = fixture_imap(mailbox).append("INBOX", messages)
    client = session(mailbox)
    uidvalidity = client.examine("INBOX").uidvalidity
    chunks = [uids[i : i + BATCH] for i in range(0, len(uids), BATCH)]
    fast = [client.fetch_records(chunk) for chunk in chunks]
    general = [_general_records(client, chunk) for chunk in chunks]
    assert [len(batch) for batch in fast] == [len(chunk) for chunk in chunks]
    assert fast == general  # the records themselves, field by field

    engines = {
        name: make_engine(url)
        for name, url in (
            ("copy", make_pg_url()),
            ("executemany", make_pg_url()),
            ("sqlite", make_sqlite_url()),
        )
    }
    for name, engine in engines.items():
        migrate(engine)
        _store_all(SqlStore(engine, bulk_copy=name == "copy"), mailbox, uidvalidity, fast)

    copied = _text_rows(engines["copy"])
    assert len(copied) == len(messages)
    assert copied == _text_rows(engines["executemany"])
    assert _value_rows(engines["copy"]) == _value_rows(engines["sqlite"])


def test_a_replayed_batch_through_copy_inserts_nothing_and_counts_nothing_new(
    make_pg_url: Callable[[], str], make_engine: Callable[[str], sa.Engine]
) -> None:
    engine = make_engine(make_pg_url())
    migrate(engine)
    store = SqlStore(engine)
    folder = store.ensure_folder(store.ensure_mailbox("a@contoso.test", "contoso"), "INBOX")
    records = tuple(
        MessageRecord(
            uid=uid,
            message_id=f"m{uid}@x",
            subject='tab\tnew\nline back\\slash "quote" nul-free é 🚀',
            from_address="a@x.test",
            to_addresses=('q"uote@x.test', "b@x.test"),
            cc_addresses=(),
            in_reply_to=None,
            references=None,
            sent_at=None,
            received_at=NOW,
            size_bytes=uid,
            flags=("\\Seen",),
        )
        for uid in range(1, 11)
    )
    changes = FolderChanges(folder_id=folder.folder_id, uidvalidity=5, new=records)
    assert store.apply(changes, NOW).new == 10
    assert store.apply(changes, NOW).new == 0
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT subject, to_addresses FROM message_metadata ORDER BY uid"
        ).all()
    assert len(rows) == 10
    assert rows[0] == (records[0].subject, ['q"uote@x.test', "b@x.test"])
