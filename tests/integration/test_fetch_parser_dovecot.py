"""On Dovecot's real answers, the fast FETCH parser and imapclient's agree record for record."""

from __future__ import annotations

from collections.abc import Callable

from imapclient.response_parser import parse_fetch_response

from daemon.imap.fetch_parser import parse_fetch
from daemon.imap.parse import FETCH_ITEMS, parse_message
from localenv.imap import FixtureImap
from localenv.seed import hostile_messages, realistic_messages


def test_fast_parser_matches_imapclient_on_realistic_and_hostile_messages(
    fixture_imap: Callable[[str], FixtureImap], new_mailbox: Callable[..., str]
) -> None:
    session = fixture_imap(new_mailbox())
    messages = list(realistic_messages(600, seed=21, big_every=300, max_size=1 << 20))
    uids = session.append("INBOX", messages + hostile_messages())
    session.client.select_folder("INBOX", readonly=True)
    typ, data = session.client._imap.uid("FETCH", f"1:{max(uids)}", FETCH_ITEMS)
    assert typ == "OK"
    reference = parse_fetch_response(data, normalise_times=False, uid_is_key=False)
    fast = parse_fetch(data)
    assert fast.keys() == reference.keys()
    assert len(fast) == len(uids)
    for seq, entry in fast.items():
        expected = reference[seq]
        assert parse_message(entry[b"UID"], entry) == parse_message(expected[b"UID"], expected)
