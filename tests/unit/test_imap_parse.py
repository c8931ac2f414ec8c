"""FETCH responses become the rows the SPEC's ``message_metadata`` view shows.

Inputs are hand-built as imapclient hands them over (``normalise_times`` off): an
``Envelope`` of bytes, INTERNALDATE as an aware datetime, the raw DATE/REFERENCES header block.
"""

from __future__ import annotations

import base64
import datetime as dt
from email.header import Header
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from imapclient.fixed_offset import FixedOffset
from imapclient.response_types import Address, Envelope

from daemon.errors import ImapProtocolError
from daemon.imap.parse import decode_words, parse_date, parse_message

HEADER_KEY = b"BODY[HEADER.FIELDS (DATE REFERENCES)]"
RECEIVED = dt.datetime(2026, 3, 1, 14, 0, tzinfo=FixedOffset(120))
UTC = dt.UTC


def addr(mailbox: bytes | None, host: bytes | None, name: bytes | None = None) -> Address:
    return Address(name, None, mailbox, host)


def group(name: bytes, *members: Address) -> list[Address]:
    """A group as IMAP ENVELOPE spells it: a start marker (host NIL), members, an end marker."""
    return [addr(name, None), *members, addr(None, None)]


def fetch(
    *,
    subject: bytes | None = b"Hello",
    from_: list[Address] | None = None,
    to: list[Address] | None = None,
    cc: list[Address] | None = None,
    in_reply_to: bytes | None = None,
    message_id: bytes | None = b"<id@example.test>",
    headers: bytes | None = b"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n\r\n",
    envelope_date: dt.datetime | None = None,
    flags: tuple[bytes, ...] = (),
    internaldate: dt.datetime | None = RECEIVED,
    size: int | None = 1234,
) -> dict[bytes, Any]:
    envelope = Envelope(
        date=envelope_date,
        subject=subject,  # type: ignore[arg-type]
        from_=tuple(from_) if from_ is not None else None,
        sender=None,
        reply_to=None,
        to=tuple(to) if to is not None else None,
        cc=tuple(cc) if cc is not None else None,
        bcc=None,
        in_reply_to=in_reply_to,  # type: ignore[arg-type]
        message_id=message_id,  # type: ignore[arg-type]
    )
    data: dict[bytes, Any] = {
        b"SEQ": 1,
        b"UID": 7,
        b"FLAGS": flags,
        b"INTERNALDATE": internaldate,
        b"RFC822.SIZE": size,
        b"ENVELOPE": envelope,
    }
    if headers is not None:
        data[HEADER_KEY] = headers
    return data


def b64_word(text: str, charset: str) -> bytes:
    return f"=?{charset}?b?".encode() + base64.b64encode(text.encode(charset)) + b"?="


# -- subjects ------------------------------------------------------------------------------
SUBJECTS = [
    ("plain ascii", b"Quarterly report", "Quarterly report"),
    ("utf-8 Q word", b"=?utf-8?q?Gr=C3=BC=C3=9Fe_aus_M=C3=BCnchen?=", "Grüße aus München"),
    ("upper-case B word", b"=?UTF-8?B?" + base64.b64encode("Ωmega".encode()) + b"?=", "Ωmega"),
    ("latin-1 B word", b64_word("Café résumé", "iso-8859-1"), "Café résumé"),
    ("iso-2022-jp", b64_word("会議の議事録について", "iso-2022-jp"), "会議の議事録について"),
    ("koi8-r", b64_word("Привет, как дела?", "koi8-r"), "Привет, как дела?"),
    ("gb2312", b64_word("你好世界", "gb2312"), "你好世界"),
    (
        "gb2312 label on GBK bytes",  # mailers label GBK text gb2312; read as the superset
        b"=?gb2312?b?" + base64.b64encode("朱镕基".encode("gbk")) + b"?=",
        "朱镕基",
    ),
    ("windows-1255", b64_word("שלום עולם", "windows-1255"), "שלום עולם"),
    ("windows-1252", b64_word("Smart “quotes” €5", "windows-1252"), "Smart “quotes” €5"),
    ("adjacent words joined", b"=?utf-8?q?one?= =?utf-8?q?_two?=", "one two"),
    ("folded words joined", b"=?utf-8?q?one?=\r\n =?utf-8?q?_two?=", "one two"),
    ("word between text", b"Re: =?utf-8?q?caf=C3=A9?= ok", "Re: café ok"),
    ("char split over two words", b"=?utf-8?q?caf=C3?= =?utf-8?q?=A9?=", "café"),
    ("adjacent words, two charsets", b"=?iso-8859-1?q?caf=E9?= =?utf-8?q?=E2=82=AC?=", "café€"),
    ("RFC 2231 language tag", b"=?utf-8*de?q?Gr=C3=BC=C3=9Fe?=", "Grüße"),
    ("base64 without padding", b"=?utf-8?b?YQ?=", "a"),
    ("broken base64 kept", b"=?utf-8?B?not*base64!!?=", "=?utf-8?B?not*base64!!?="),
    ("unclosed word kept", b"=?utf-8?q?broken", "=?utf-8?q?broken"),
    ("unknown charset read as utf-8", b"=?x-klingon?q?Qapla=27?=", "Qapla'"),
    ("bytes codec not a text codec", b"=?hex?q?abc?=", "abc"),
    (
        "invalid utf-8 in a word",
        b"=?utf-8?b?" + base64.b64encode(b"ok \xff\xfe end") + b"?=",
        "ok \ufffd\ufffd end",
    ),
    ("raw latin-1 bytes", b"Caf\xe9 cr\xe8me", "Caf\ufffd cr\ufffdme"),
    ("raw utf-8 bytes", "Grüße ✓".encode(), "Grüße ✓"),
    ("NUL in a word removed", b"=?utf-8?q?Sub=00ject?=", "Subject"),
    ("folded plain text", b"a long\r\n subject", "a long subject"),
    ("empty subject", b"", ""),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in SUBJECTS], ids=[c[0] for c in SUBJECTS]
)
def test_subject_is_decoded(raw: bytes, expected: str) -> None:
    assert parse_message(7, fetch(subject=raw)).subject == expected


def test_absent_subject_is_none() -> None:
    assert parse_message(7, fetch(subject=None)).subject is None


def test_huge_subject_is_capped_at_16_kib_on_a_character_boundary() -> None:
    text = "Ünïcødé subject " * 13_000
    raw = b"\r\n ".join(
        Header(text[i : i + 40], "utf-8").encode(linesep="\r\n").encode()
        for i in range(0, len(text), 40)
    )
    subject = parse_message(7, fetch(subject=raw)).subject
    assert subject == text.encode()[: 16 * 1024].decode("utf-8", "ignore")


@given(st.text(alphabet=st.characters(exclude_categories=("Cs", "Cc")), max_size=200))
def test_any_text_encoded_by_the_stdlib_decodes_back(text: str) -> None:
    encoded = Header(text, "utf-8").encode(linesep="\r\n")
    assert decode_words(encoded.encode()) == text


# -- addresses -----------------------------------------------------------------------------
def test_address_keeps_the_local_part_and_lower_cases_the_domain() -> None:
    record = parse_message(7, fetch(from_=[addr(b"John.Smith", b"Contoso.COM", b"John")]))
    assert record.from_address == "John.Smith@contoso.com"


def test_first_from_address_is_taken() -> None:
    record = parse_message(7, fetch(from_=[addr(b"a", b"x.test"), addr(b"b", b"x.test")]))
    assert record.from_address == "a@x.test"


def test_groups_are_flattened_in_header_order_and_markers_skipped() -> None:
    to = [
        addr(b"first", b"A.test"),
        *group(b"Project Team", addr(b"m1", b"B.test"), addr(b"M2", b"b.TEST")),
        *group(b"undisclosed-recipients"),
        addr(b"last", b"c.test"),
    ]
    record = parse_message(7, fetch(to=to))
    assert record.to_addresses == ("first@a.test", "m1@b.test", "M2@b.test", "last@c.test")


@pytest.mark.parametrize(
    ("from_", "expected"),
    [
        (None, None),
        ([], None),
        ([addr(b"undisclosed", b"MISSING_DOMAIN")], None),  # Dovecot: "From: undisclosed"
        ([addr(b"MISSING_MAILBOX", b"x.test")], None),
        ([addr(b"x", b".MISSING-HOST-NAME.")], None),  # UW-IMAP's marker
        (group(b"Friends"), None),
        ([addr(b"ren\xe9", b"Hostile.test")], "ren\ufffd@hostile.test"),
    ],
    ids=["nil", "empty", "no-domain", "no-mailbox", "uw-marker", "empty-group", "8bit-local"],
)
def test_from_without_an_address(from_: list[Address] | None, expected: str | None) -> None:
    assert parse_message(7, fetch(from_=from_)).from_address == expected


def test_absent_recipients_are_empty_tuples() -> None:
    record = parse_message(7, fetch(to=None, cc=None))
    assert (record.to_addresses, record.cc_addresses) == ((), ())


def test_cc_is_read_like_to() -> None:
    record = parse_message(
        7, fetch(cc=[addr(b"c", b"EXAMPLE.org"), *group(b"g", addr(b"d", b"e.f"))])
    )
    assert record.cc_addresses == ("c@example.org", "d@e.f")


# -- identifiers and threading headers -----------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"<abc@x.test>", "abc@x.test"),
        (b"  <abc@x.test>  ", "abc@x.test"),
        (b"<abc@x.test> (a comment)", "abc@x.test"),
        (b"abc@x.test", "abc@x.test"),
        (b"<>", None),
        (b"", None),
        (None, None),
    ],
)
def test_message_id_without_angle_brackets(raw: bytes | None, expected: str | None) -> None:
    assert parse_message(7, fetch(message_id=raw)).message_id == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b" <a@x.test>", "<a@x.test>"),  # Dovecot keeps the space of "In-Reply-To:\r\n <a>"
        (b"<a@x.test>\r\n\t<b@x.test>", "<a@x.test> <b@x.test>"),
        (b"   ", None),
        (None, None),
    ],
)
def test_in_reply_to_is_unfolded_and_trimmed(raw: bytes | None, expected: str | None) -> None:
    assert parse_message(7, fetch(in_reply_to=raw)).in_reply_to == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            b"References: <a@x.test>\r\n\t<b@x.test>\r\n   <c@x.test>  \r\n\r\n",
            "<a@x.test> <b@x.test> <c@x.test>",
        ),
        (b"references:<a@x.test>\r\n\r\n", "<a@x.test>"),
        (b"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\nReferences: <r@x>\r\n\r\n", "<r@x>"),
        (b"References: \r\n\r\n", None),
        (b"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n\r\n", None),
        (b"\r\n", None),
        (None, None),
    ],
)
def test_references_are_unfolded_and_trimmed(headers: bytes | None, expected: str | None) -> None:
    assert parse_message(7, fetch(headers=headers)).references == expected


# -- dates ---------------------------------------------------------------------------------
DATES = [
    ("utc", "Mon, 2 Mar 2026 10:00:00 +0000", dt.datetime(2026, 3, 2, 10, tzinfo=UTC)),
    (
        "no zone reads as utc",
        "Tue, 3 Mar 2026 08:30:00",
        dt.datetime(2026, 3, 3, 8, 30, tzinfo=UTC),
    ),
    (
        "-0000 reads as utc",
        "Mon, 2 Mar 2026 10:00:00 -0000",
        dt.datetime(2026, 3, 2, 10, tzinfo=UTC),
    ),
    ("east", "Tue, 26 May 2026 00:36:08 +1245", dt.datetime(2026, 5, 25, 11, 51, 8, tzinfo=UTC)),
    ("west", "Mon, 2 Mar 2026 10:00:00 -0930", dt.datetime(2026, 3, 2, 19, 30, tzinfo=UTC)),
    ("named zone", "Mon, 2 Mar 2026 10:00:00 EST", dt.datetime(2026, 3, 2, 15, tzinfo=UTC)),
    ("two-digit year", "2 Mar 26 10:00 GMT", dt.datetime(2026, 3, 2, 10, tzinfo=UTC)),
    (
        "leap second",
        "Wed, 31 Dec 2025 23:59:60 +0000",
        dt.datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC),
    ),
    ("year 9999 west overflows", "Fri, 31 Dec 9999 23:59:59 -1200", None),
    (
        "year 9999 utc fits",
        "Fri, 31 Dec 9999 23:59:59 +0000",
        dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
    ),
    ("no such day", "Mon, 30 Feb 2026 10:00:00 +0000", None),
    ("zone out of range", "Mon, 2 Mar 2026 10:00:00 +9900", None),
    ("garbage", "the day after tomorrow", None),
    ("empty", "", None),
]


@pytest.mark.parametrize(("value", "expected"), [d[1:] for d in DATES], ids=[d[0] for d in DATES])
def test_date_header_is_an_aware_utc_instant(value: str, expected: dt.datetime | None) -> None:
    sent_at = parse_message(7, fetch(headers=f"Date: {value}\r\n\r\n".encode())).sent_at
    assert sent_at == expected
    if sent_at is not None:
        assert sent_at.utcoffset() == dt.timedelta(0)


def test_folded_date_header_parses() -> None:
    headers = b"Date: Mon, 2 Mar 2026\r\n 10:00:00 +0100\r\n\r\n"
    assert parse_message(7, fetch(headers=headers)).sent_at == dt.datetime(
        2026, 3, 2, 9, tzinfo=UTC
    )


def test_missing_date_header_is_none_even_if_envelope_has_one() -> None:
    data = fetch(headers=b"\r\n", envelope_date=dt.datetime(2026, 1, 1, tzinfo=UTC))
    assert parse_message(7, data).sent_at is None


def test_without_the_header_fields_the_envelope_date_is_used() -> None:
    data = fetch(headers=None, envelope_date=dt.datetime(2026, 1, 1, 12, tzinfo=FixedOffset(-60)))
    assert parse_message(7, data).sent_at == dt.datetime(2026, 1, 1, 13, tzinfo=UTC)


@given(st.text(max_size=80))
def test_parse_date_never_raises_and_is_aware_when_it_parses(value: str) -> None:
    result = parse_date(value)
    assert result is None or result.utcoffset() == dt.timedelta(0)


# -- the rest of the record ----------------------------------------------------------------
def test_received_at_is_internaldate_in_utc() -> None:
    record = parse_message(7, fetch(internaldate=RECEIVED))
    assert record.received_at == dt.datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert record.received_at.utcoffset() == dt.timedelta(0)


def test_uid_size_and_flags() -> None:
    record = parse_message(
        42, fetch(size=98765, flags=(b"\\Seen", b"\\Recent", b"Work", b"$Forwarded"))
    )
    assert (record.uid, record.size_bytes) == (42, 98765)
    assert record.flags == ("$Forwarded", "Work", "\\Seen")


@pytest.mark.parametrize("missing", [b"ENVELOPE", b"INTERNALDATE", b"RFC822.SIZE"])
def test_response_without_a_required_item_is_a_protocol_error(missing: bytes) -> None:
    data = fetch()
    del data[missing]
    with pytest.raises(ImapProtocolError, match="UID 7"):
        parse_message(7, data)
