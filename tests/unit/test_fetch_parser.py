"""The fast FETCH parser gives exactly what imapclient's general parser gives."""

from __future__ import annotations

from typing import Any

import pytest
from imapclient.response_parser import parse_fetch_response

from daemon.imap.fetch_parser import parse_fetch
from daemon.imap.parse import parse_message

ENVELOPE = (
    b'("Mon, 2 Mar 2026 10:00:00 +0000" "=?utf-8?q?Gr=C3=BC=C3=9Fe?=" '
    b'(("Ann \\"the\\" Smith" NIL "ann" "Example.ORG")) NIL NIL '
    b'((NIL NIL "Team" NIL)("B" NIL "b" "x.test")(NIL NIL NIL NIL)("C" NIL "c" "y.test")) '
    b'NIL NIL "<p@x>" "<id@x>")'
)
HEADER = b"Date: x\r\nReferences: <a@b>\r\n <c@d>\r\n\r\n"
SUBJECT = b'a (b) "c" d'


def _literal(prefix: bytes, value: bytes) -> tuple[bytes, bytes]:
    """A line ending in a literal, as imaplib hands it over."""
    return (prefix + b"{%d}" % len(value), value)


RESPONSES: dict[str, list[Any]] = {
    "plain": [
        _literal(
            b'1 (UID 7 FLAGS (\\Seen $Forwarded) INTERNALDATE "02-Mar-2026 10:00:05 +0100" '
            b"RFC822.SIZE 1234 ENVELOPE " + ENVELOPE + b" BODY[HEADER.FIELDS (DATE REFERENCES)] ",
            b"R: a\r\n",
        ),
        b")",
    ],
    "literal-subject-and-header": [
        _literal(
            b'2 (UID 8 FLAGS () INTERNALDATE "02-Mar-2026 10:00:05 +0000" RFC822.SIZE 99 '
            b"ENVELOPE (NIL ",
            SUBJECT,
        ),
        _literal(
            b" NIL NIL NIL NIL NIL NIL NIL NIL) BODY[HEADER.FIELDS (DATE REFERENCES)] ", HEADER
        ),
        b")",
    ],
    "empty-strings-and-nil-header": [
        (
            b'3 (UID 9 FLAGS (\\Answered) INTERNALDATE "bogus" RFC822.SIZE 1 ENVELOPE '
            b'("" "" NIL NIL NIL NIL NIL NIL "" "") BODY[HEADER.FIELDS (DATE REFERENCES)] NIL)'
        ),
    ],
    "flags-only-with-modseq": [b"4 (UID 10 FLAGS (\\Seen) MODSEQ (12345))"],
    "two-messages": [
        b'5 (UID 11 FLAGS () INTERNALDATE "02-Mar-2026 10:00:05 +0000" RFC822.SIZE 5 '
        b"ENVELOPE " + ENVELOPE + b")",
        b"6 (UID 12 FLAGS (\\Deleted))",
    ],
}


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_same_values_as_imapclient(name: str) -> None:
    data = RESPONSES[name]
    expected = parse_fetch_response(data, normalise_times=False, uid_is_key=False)
    got = parse_fetch(data)
    assert got.keys() == expected.keys()
    for seq, entry in got.items():
        # imapclient adds SEQ and turns MODSEQ's number into an int; neither is read.
        reference = {k: v for k, v in expected[seq].items() if k not in (b"SEQ", b"MODSEQ")}
        assert {k: v for k, v in entry.items() if k != b"MODSEQ"} == reference
        if reference.get(b"INTERNALDATE") is not None and b"ENVELOPE" in reference:
            assert parse_message(entry[b"UID"], entry) == parse_message(
                reference[b"UID"], reference
            )


@pytest.mark.parametrize(
    "data",
    [
        [b"1 (UID 7 FLAGS (\\Seen)"],  # truncated
        [b"(UID 7)"],  # no sequence number
        [b"1 (UID 7 FLAGS (\\Seen)) ]"],  # a stray character
        [(b"1 (UID 7 BODY[HEADER] {3}", b"abc")],  # the list never closes
        [b"1 (UID 7 ENVELOPE (NIL NIL))"],  # an ENVELOPE of 2 fields
        [b"1 (UID)"],  # a name without value
    ],
)
def test_what_it_does_not_understand_is_a_value_error(data: list[Any]) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_fetch(data)
