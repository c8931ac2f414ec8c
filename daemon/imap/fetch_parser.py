"""Parsers of UID FETCH responses, for the fixed item list of ``FETCH_ITEMS``.

imapclient's ``parse_fetch_response`` is general and costs about 190 microseconds a message
here, most of an initial sync's CPU. Two faster ways, same results:

- ``parse_records`` goes from the bytes of a whole response (``fetch_reader``) straight to
  ``MessageRecord``s, one regular expression per message for the shape Dovecot and most
  servers send (about 25 microseconds a message). A response of any other shape goes down the
  general path below, message by message.
- ``parse_fetch`` (the general path) tokenizes imaplib-style parts with one regular expression
  per line and builds the values imapclient builds (``Envelope``, ``Address``, bytes, ints,
  aware datetimes), so ``parse_message`` reads either. Anything it does not recognise raises
  ``ValueError``, and imapclient's own parser takes that response.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Collection, Sequence
from typing import Any, Final

from imapclient.datetime_util import parse_to_datetime
from imapclient.response_parser import parse_fetch_response
from imapclient.response_types import Address, Envelope

from daemon.imap.fetch_reader import FetchResponse
from daemon.imap.parse import (
    MONTH_NUMBERS,
    NO_HOST,
    NO_MAILBOX,
    decode_words,
    fast_date,
    header_fields,
    parse_message,
    unfold,
)
from daemon.imap.parse import message_id as parsed_message_id
from daemon.sync.model import Flags, MessageRecord, normalize_flags
from daemon.sync.text import DEFAULT_LIMIT_BYTES as TEXT_LIMIT
from daemon.sync.text import clean_text

# Every token of a line at once: ( ) "quoted" {literal} or an atom (which may carry a
# [section] with spaces and parentheses inside, and a <partial> suffix). The quoted group
# keeps its quotes so that an empty string is told apart from "no match"; the last group
# catches any other character, which makes the whole response unparseable here.
_TOKENS: Final = re.compile(
    rb'(\()|(\))|("(?:[^"\\\r\n]|\\.)*")|\{(\d+)\}\r?\n?$|'
    rb"([^\s()\"{\[\]]+(?:\[[^\]]*\](?:<\d+>)?)?)|(\S)"
)
_UNESCAPE: Final = re.compile(rb"\\(.)")


def parse_fetch(data: Sequence[Any]) -> dict[int, dict[bytes, Any]]:
    """``{sequence number: {item: value}}`` of every FETCH response line in ``data``.

    imaplib hands over each ``* <seq> FETCH (...)`` line as ``<seq> (...)``, a literal as a
    ``(line ending in {n}, bytes)`` pair, and the rest of that line as the next part.
    """
    out: dict[int, dict[bytes, Any]] = {}
    stack: list[list[Any]] = []
    seq: int | None = None
    for part in data:
        if part is None:
            continue
        if isinstance(part, tuple):
            line, literal = part
        elif isinstance(part, bytes):
            line, literal = part, None
        else:
            raise ValueError(f"unexpected response part {type(part).__name__}")  # noqa: TRY004
        for opening, closing, quoted, size, atom, stray in _TOKENS.findall(line):
            if stray:
                raise ValueError(f"unexpected character {stray!r}")
            if opening:
                if seq is None:
                    raise ValueError("a FETCH response starts with its sequence number")
                new: list[Any] = []
                if stack:
                    stack[-1].append(new)
                stack.append(new)
            elif closing:
                if not stack:
                    raise ValueError("unbalanced parenthesis")
                done = stack.pop()
                if not stack:
                    _store(out.setdefault(seq, {}), done)  # type: ignore[arg-type]
                    seq = None
            elif quoted:
                text = quoted[1:-1]
                stack[-1].append(_UNESCAPE.sub(rb"\1", text) if b"\\" in text else text)
            elif size:
                if literal is None:
                    raise ValueError("a literal without its bytes")
                stack[-1].append(literal)
                literal = None
            elif not stack:
                if not atom.isdigit() or seq is not None:
                    raise ValueError("not a FETCH response")
                seq = int(atom)
            else:
                stack[-1].append(None if atom == b"NIL" else atom)
        if literal is not None:
            raise ValueError("a literal that no {n} announced")
    if stack or seq is not None:
        raise ValueError("truncated FETCH response")
    return out


def _store(entry: dict[bytes, Any], items: list[Any]) -> None:
    if len(items) % 2:
        raise ValueError("FETCH items come in name/value pairs")
    for name, value in zip(items[::2], items[1::2], strict=True):
        key = name.upper()
        entry[key] = _convert(key, value)


def _convert(name: bytes, value: Any) -> Any:
    if name in (b"UID", b"RFC822.SIZE"):
        return int(value)
    if name == b"FLAGS":
        return tuple(value)
    if name == b"INTERNALDATE":
        return _date(value)
    if name == b"ENVELOPE":
        return _envelope(value)
    return value


def _date(value: bytes | None) -> Any:
    # As imapclient: an unparseable date is None, never an error.
    if not value:
        return None
    try:
        return parse_to_datetime(value, normalise=False)
    except ValueError:
        return None


def _envelope(value: list[Any]) -> Envelope:
    if len(value) != 10:
        raise ValueError("an ENVELOPE has 10 fields")
    lists = [tuple(Address(*a) for a in field if a) if field else None for field in value[2:8]]
    return Envelope(_date(value[0]), value[1], *lists, value[8], value[9])


# -- records straight from the response bytes -----------------------------------------------
# The fast path knows one shape: the items of ``FETCH_ITEMS`` in the order asked for, strings
# quoted, NIL or literals, the header fields as the last literal (or NIL). That is what
# Dovecot sends for every message. Any other response (other items, another order, an
# unsolicited FETCH, one UID in two responses) goes through ``parse_fetch`` and
# ``parse_message`` like before. Both paths build every field with the same functions
# (``parse.py``), and the tests hold them to the same records.
_Q: Final = rb'"[^"\\\r\n]*(?:\\.[^"\\\r\n]*)*"'
# "{#3}" stands for the fourth literal of a response whose literals were taken out (see
# ``_without_literals``); IMAP itself never writes "{#".
_REF: Final = rb"\{#\d+\}"
_NSTRING: Final = rb"(?:NIL|" + _Q + rb"|" + _REF + rb")"
_ADDRESS: Final = rb"\(" + rb" ".join([_NSTRING] * 4) + rb"\)"
_ADDRESSES: Final = rb"(?:NIL|\((?:" + _ADDRESS + rb")+\))"
_MESSAGE: Final = re.compile(
    rb"\* \d+ FETCH \(UID (\d+) FLAGS \(([^()\"{}\[\]\r\n]*)\) "
    rb'INTERNALDATE "([^"\\\r\n]*)" RFC822\.SIZE (\d+) '
    rb"ENVELOPE \(" + _NSTRING + rb" (" + _NSTRING + rb") "  # date (unused), subject
    rb"(" + _ADDRESSES + rb") " + _ADDRESSES + rb" " + _ADDRESSES + rb" "  # from, sender, reply-to
    rb"(" + _ADDRESSES + rb") (" + _ADDRESSES + rb") " + _ADDRESSES + rb" "  # to, cc, bcc
    rb"(" + _NSTRING + rb") (" + _NSTRING + rb")\) "  # in-reply-to, message-id
    rb"BODY\[HEADER\.FIELDS \([^()\]\r\n]*\)\] (?:\{(\d+)\}\r\n|(NIL))"
)
# mailbox and host of each address of a list the pattern above has already checked, without
# their quotes (NIL and "" both read as empty: either way the address is skipped).
_QUOTED_TEXT: Final = rb'[^"\\\r\n]*(?:\\.[^"\\\r\n]*)*'
_MAILBOX_HOST: Final = re.compile(
    rb"\(" + _NSTRING + rb" " + _NSTRING + rb' (?:NIL|"(' + _QUOTED_TEXT + rb')") '
    rb'(?:NIL|"(' + _QUOTED_TEXT + rb')")\)'
)
_ADDRESS_TOKENS: Final = re.compile(
    rb"\(" + _NSTRING + rb" " + _NSTRING + rb" (" + _NSTRING + rb") (" + _NSTRING + rb")\)"
)
_INTERNALDATE: Final = re.compile(
    rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"
)
_CLOSE: Final = b")\r\n"


def parse_records(response: FetchResponse, wanted: Collection[int]) -> list[MessageRecord]:
    """The records of the ``wanted`` UIDs in ``response``, ascending by UID.

    The same records as ``parse_fetch`` (or imapclient's parser) then ``parse_message`` would
    give, responses merged by UID as the adapter does; a UID without a response is left out.
    """
    data = response.data
    records: dict[int, MessageRecord] = {}
    others: list[int] = []
    for index, (start, end) in enumerate(response.spans):
        record = _fast_record(data, start, end)
        literals = response.literals[index]
        if record is None and len(literals) > 1:
            patched, refs = _without_literals(data, start, end, literals[:-1])
            record = _fast_record(patched, 0, len(patched), refs)
        if record is None:
            others.append(index)
        elif record.uid in records:  # one UID in two responses: merged by the general path
            return _general_records(list(response.all_parts()), wanted)
        else:
            records[record.uid] = record
    if others:
        entries = general_entries([part for i in others for part in response.parts(i)])
        if entries.keys() & records.keys():
            return _general_records(list(response.all_parts()), wanted)
        for uid, entry in entries.items():
            if uid in wanted:
                records[uid] = parse_message(uid, entry)
    return [records[uid] for uid in sorted(records.keys() & set(wanted))]


def general_entries(parts: Sequence[Any]) -> dict[int, dict[bytes, Any]]:
    """FETCH data by UID from imaplib-style parts; responses without UID are dropped.

    Keyed by sequence number first, so that an unsolicited FETCH without UID (a flag change
    the server reports on its own) cannot pass for the message of that UID.
    """
    try:
        parsed = parse_fetch(parts)
    except ValueError:
        # Something the fast parser does not know: imapclient's general parser.
        parsed = parse_fetch_response(parts, normalise_times=False, uid_is_key=False)
    out: dict[int, dict[bytes, Any]] = {}
    for entry in parsed.values():
        uid = entry.get(b"UID")
        if isinstance(uid, int):
            out.setdefault(uid, {}).update(entry)
    return out


def _general_records(parts: Sequence[Any], wanted: Collection[int]) -> list[MessageRecord]:
    entries = general_entries(parts)
    return [parse_message(uid, entries[uid]) for uid in sorted(entries.keys() & set(wanted))]


def _without_literals(
    data: bytes, start: int, end: int, literals: Sequence[tuple[int, int]]
) -> tuple[bytes, list[bytes]]:
    """The response with each of ``literals`` (``{n}`` CRLF and its bytes) replaced by a
    reference ``{#i}``, and the literals' bytes by index."""
    pieces: list[bytes] = []
    refs: list[bytes] = []
    position = start
    for literal_start, literal_end in literals:
        brace = data.rfind(b"{", position, literal_start)
        pieces.append(data[position:brace])
        pieces.append(b"{#%d}" % len(refs))
        refs.append(data[literal_start:literal_end])
        position = literal_end
    pieces.append(data[position:end])
    return b"".join(pieces), refs


def _fast_record(
    data: bytes, start: int, end: int, refs: Sequence[bytes] = ()
) -> MessageRecord | None:
    """The record of one response of the known shape; None for any other response."""
    try:
        return _record(data, start, end, refs)
    except IndexError:  # a reference to a literal that is not there: not the known shape
        return None


def _record(data: bytes, start: int, end: int, refs: Sequence[bytes]) -> MessageRecord | None:
    match = _MESSAGE.match(data, start, end)
    if match is None:
        return None
    uid, flags, internaldate, size, subject, from_, to, cc, in_reply_to, message_id, n, nil = (
        match.groups()
    )
    if nil is None:
        block_start = match.end()
        block_end = block_start + int(n)
        block = data[block_start:block_end]
    else:
        block, block_end = b"", match.end()
    if block_end + 3 != end or data[block_end:end] != _CLOSE:
        return None
    normalized = _flags(flags)
    received_at = _internaldate(internaldate)
    if normalized is None or received_at is None:
        return None
    fields = header_fields(block)
    date_value = fields.get(b"date")
    from_addresses = _address_list(from_, refs)
    subject_text = None if subject == b"NIL" else decode_words(_nstring(subject, refs) or b"")
    return MessageRecord(
        uid=int(uid),
        message_id=clean_text(parsed_message_id(_nstring(message_id, refs))),
        subject=clean_text(subject_text),
        from_address=from_addresses[0] if from_addresses else None,
        to_addresses=_address_list(to, refs),
        cc_addresses=_address_list(cc, refs),
        in_reply_to=clean_text(unfold(_nstring(in_reply_to, refs))),
        references=clean_text(unfold(fields.get(b"references"))),
        sent_at=None if date_value is None else fast_date(date_value),
        received_at=received_at,
        size_bytes=int(size),
        flags=normalized,
    )


def _nstring(token: bytes, refs: Sequence[bytes] = ()) -> bytes | None:
    if token == b"NIL":
        return None
    if token[:1] == b"{":
        return refs[int(token[2:-1])]
    return _unescape(token[1:-1])


def _unescape(text: bytes) -> bytes:
    return _UNESCAPE.sub(rb"\1", text) if b"\\" in text else text


@functools.lru_cache(maxsize=512)
def _flags(raw: bytes) -> Flags | None:
    tokens = raw.split()
    if b"NIL" in tokens:
        return None  # NIL reads as None in a list: the general path keeps its odd meaning
    return normalize_flags(tuple(tokens))


def _internaldate(raw: bytes) -> dt.datetime | None:
    """INTERNALDATE in UTC, as imapclient reads it then ``parse_message`` converts it."""
    match = _INTERNALDATE.fullmatch(raw)
    if match is None:
        return None
    day, month, year, hour, minute, second, sign, zone_h, zone_m = match.groups()
    number = MONTH_NUMBERS.get(month.lower())
    # imapclient reads through email.utils: a year below 100 is 19xx or 20xx there.
    if number is None or int(year) < 100 or int(zone_h) > 23 or int(zone_m) > 59:
        return None
    offset = int(zone_h) * 3600 + int(zone_m) * 60
    try:
        local = dt.datetime(
            int(year), number, int(day), int(hour), int(minute), int(second), tzinfo=dt.UTC
        )
        return local - dt.timedelta(seconds=offset if sign == b"+" else -offset)
    except (ValueError, OverflowError):
        return None


def _address_list(raw: bytes, refs: Sequence[bytes]) -> tuple[str, ...]:
    """``addresses()`` of an address list as the response spells it."""
    if b"{#" not in raw:
        return _addresses(raw)
    out: list[str] = []
    for mailbox, host in _ADDRESS_TOKENS.findall(raw):
        address = _address(_nstring(mailbox, refs), _nstring(host, refs))
        if address is not None:
            out.append(address)
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _addresses(raw: bytes) -> tuple[str, ...]:
    """``_address_list`` of a list without literals.

    Cached: the same sender and the same recipient lists come back message after message.
    """
    if raw == b"NIL":
        return ()
    out: list[str] = []
    for mailbox, host in _MAILBOX_HOST.findall(raw):
        if not mailbox or not host:
            continue
        if b"\\" in mailbox or b"\\" in host:
            address = _address(_unescape(mailbox), _unescape(host))
        else:
            address = _address(mailbox, host)
        if address is not None:
            out.append(address)
    return tuple(out)


def _address(mailbox: bytes | None, host: bytes | None) -> str | None:
    """``local@domain`` as ``addresses()`` makes it; None where it skips the entry."""
    if not mailbox or not host or host in NO_HOST or mailbox in NO_MAILBOX:
        return None
    joined = mailbox + b"@" + host.lower()
    if joined.isascii() and b"\x00" not in joined and len(joined) <= TEXT_LIMIT:
        return joined.decode("ascii")  # what clean_text would leave of it
    text = f"{mailbox.decode('utf-8', 'replace')}@{host.decode('utf-8', 'replace').lower()}"
    return clean_text(text)
