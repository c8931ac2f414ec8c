"""One IMAP FETCH response to one ``MessageRecord``: pure code, no sockets.

The input is one value of imapclient's ``parse_fetch_response`` (with ``normalise_times``
off) for the items in ``FETCH_ITEMS``. The rules are the SPEC's "Stored data": ENVELOPE gives
Message-ID, Subject, From/To/Cc and In-Reply-To; the raw header fields give Date (the
ENVELOPE date as imapclient parses it can overflow, and a Date without zone must read as
UTC) and References (not part of ENVELOPE). This runs once per message on the initial sync,
so it avoids ``email.policy`` parsing and decodes RFC 2047 with a small decoder instead.
"""

from __future__ import annotations

import binascii
import codecs
import datetime as dt
import functools
import re
from collections.abc import Mapping, Sequence
from email.utils import parsedate_tz
from typing import Any, Final

from daemon.errors import ImapProtocolError
from daemon.sync.model import MessageRecord, normalize_flags
from daemon.sync.text import clean_text

FETCH_ITEMS: Final = (
    "(UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY.PEEK[HEADER.FIELDS (DATE REFERENCES)])"
)
"""The FETCH items ``parse_message`` reads (BODY.PEEK: fetching never sets ``\\Seen``)."""

# Markers servers put in ENVELOPE addresses when the header had no address: Dovecot writes
# MISSING_DOMAIN / MISSING_MAILBOX, UW-IMAP and its descendants .MISSING-HOST-NAME.
NO_HOST: Final = frozenset({b"MISSING_DOMAIN", b".MISSING-HOST-NAME."})
NO_MAILBOX: Final = frozenset({b"MISSING_MAILBOX"})

# An encoded word (RFC 2047). Stricter than RFC in one way only: the text may not contain
# "?"; looser in that it may contain spaces, which some mailers emit in Q words.
_ENCODED_WORD: Final = re.compile(rb"=\?([^?\s]+)\?([QqBb])\?([^?]*)\?=")
_FOLD: Final = re.compile(rb"\r?\n(?=[ \t])")  # RFC 5322 unfolding: drop the line break
_BREAK: Final = re.compile(rb"\r?\n[ \t]*")  # SPEC: a break and its indentation -> one space
_HEADER: Final = re.compile(rb"^([^\s:]+)[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.MULTILINE)
_WSP: Final = b" \t\r\n"

# Labels that mean a superset in practice (as mail clients treat them), or that Python
# does not know under that spelling.
_CHARSET_ALIASES: Final = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "iso-8859-8-i": "iso-8859-8",
    "unknown-8bit": "utf-8",
    "x-unknown": "utf-8",
}


def parse_message(uid: int, data: Mapping[bytes, Any]) -> MessageRecord:
    """Build the record of message ``uid`` from its FETCH data (``FETCH_ITEMS``)."""
    envelope = data.get(b"ENVELOPE")
    internaldate = data.get(b"INTERNALDATE")
    size = data.get(b"RFC822.SIZE")
    if envelope is None or not isinstance(internaldate, dt.datetime) or size is None:
        raise ImapProtocolError(
            f"FETCH response for UID {uid} lacks ENVELOPE, INTERNALDATE or RFC822.SIZE"
        )
    block = _header_block(data)
    if block is None:  # the server left the header fields out: fall back to ENVELOPE
        fields: dict[bytes, bytes] = {}
        sent_at = _as_utc(envelope.date)
    else:
        fields = header_fields(block)
        date_value = fields.get(b"date")
        sent_at = None if date_value is None else fast_date(date_value)
    from_addresses = addresses(envelope.from_)
    return MessageRecord(
        uid=uid,
        message_id=clean_text(message_id(envelope.message_id)),
        subject=clean_text(None if envelope.subject is None else decode_words(envelope.subject)),
        from_address=from_addresses[0] if from_addresses else None,
        to_addresses=addresses(envelope.to),
        cc_addresses=addresses(envelope.cc),
        in_reply_to=clean_text(unfold(envelope.in_reply_to)),
        references=clean_text(unfold(fields.get(b"references"))),
        sent_at=sent_at,
        received_at=_as_utc(internaldate) or internaldate,
        size_bytes=int(size),
        flags=normalize_flags(data.get(b"FLAGS", ())),
    )


# -- addresses -----------------------------------------------------------------------------
def addresses(entries: Sequence[Any] | None) -> tuple[str, ...]:
    """``local@domain`` of each address in header order, group markers skipped.

    IMAP marks a group with an entry whose host is NIL (its start, the mailbox is the group
    name) and one whose mailbox and host are NIL (its end); members sit between them.
    """
    if not entries:
        return ()
    out: list[str] = []
    for entry in entries:
        mailbox, host = entry.mailbox, entry.host
        if not mailbox or not host or host in NO_HOST or mailbox in NO_MAILBOX:
            continue
        address = clean_text(f"{_text(mailbox)}@{_text(host).lower()}")
        if address is not None:
            out.append(address)
    return tuple(out)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# -- identifiers and structured headers ----------------------------------------------------
def message_id(raw: bytes | str | None) -> str | None:
    """The Message-ID without its angle brackets (and anything after them); None if empty."""
    value = unfold(raw)
    if value is None:
        return None
    if value.startswith("<"):
        end = value.find(">")
        value = (value[1:end] if end != -1 else value[1:]).strip()
    return value or None


def unfold(raw: bytes | str | None) -> str | None:
    """The value with each line break and its indentation made one space, trimmed."""
    if raw is None:
        return None
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    if b"\n" in data:
        data = _BREAK.sub(b" ", data)
    value = data.strip(_WSP).decode("utf-8", "replace")
    return value or None


def header_fields(block: bytes | None) -> dict[bytes, bytes]:
    """Raw header values by lower-case name (the first of repeated names), still folded."""
    if not block:
        return {}
    fields: dict[bytes, bytes] = {}
    for name, value in _HEADER.findall(block):
        fields.setdefault(name.lower(), value)
    return fields


def _header_block(data: Mapping[bytes, Any]) -> bytes | None:
    """The returned header fields; None if absent, empty if the server sent NIL."""
    for key, value in data.items():
        if key.startswith(b"BODY[HEADER"):
            return value if isinstance(value, bytes) else b""
    return None


# -- dates ---------------------------------------------------------------------------------
def parse_date(value: str) -> dt.datetime | None:
    """An RFC 5322 Date as an aware UTC datetime; no zone (or ``-0000``) reads as UTC.

    None when the value does not parse or the instant is not representable (year 9999 in
    a zone west of UTC lies past ``datetime.max``).
    """
    try:
        parts = parsedate_tz(value)
    except (ValueError, IndexError, TypeError, OverflowError):
        return None
    if parts is None:
        return None
    year, month, day, hour, minute, second = parts[:6]
    try:
        zone = dt.timezone(dt.timedelta(seconds=parts[9] or 0))
        # A leap second (":60") is a valid Date; datetime cannot hold it.
        local = dt.datetime(year, month, day, hour, minute, min(second, 59), tzinfo=zone)
        return local.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return None


# The Date most mailers write: "Wed, 23 Sep 2026 08:11:32 -0700". ``fast_date`` reads it
# without email.utils; anything else (or out of range) goes to ``parse_date``.
_COMMON_DATE: Final = re.compile(
    rb"[ \t]*(?:[A-Za-z]{3}, )?(\d{1,2}) ([A-Za-z]{3}) (\d{4}) (\d\d):(\d\d):(\d\d) "
    rb"([+-])(\d\d)(\d\d)[ \t]*"
)
MONTH_NUMBERS: Final = {
    name: number
    for number, name in enumerate(
        b"jan feb mar apr may jun jul aug sep oct nov dec".split(),
        start=1,
    )
}
"""Lower-case English month abbreviations to numbers, as dates in mail spell them."""


def fast_date(raw: bytes) -> dt.datetime | None:
    """``parse_date`` of a raw Date value, quicker for the common spelling (same result)."""
    match = _COMMON_DATE.fullmatch(raw)
    if match is not None:
        day, month, year, hour, minute, second, sign, zone_h, zone_m = match.groups()
        number = MONTH_NUMBERS.get(month.lower())
        hours, minutes, seconds = int(zone_h), int(zone_m), int(second)
        # email.utils reads a year below 100 as 19xx or 20xx, even when written "0042".
        usual = int(year) >= 100 and hours < 24 and minutes < 60 and seconds < 60
        if number is not None and usual:
            offset = hours * 3600 + minutes * 60
            try:
                utc = dt.datetime(
                    int(year), number, int(day), int(hour), int(minute), seconds, tzinfo=dt.UTC
                )
                return utc - dt.timedelta(seconds=offset if sign == b"+" else -offset)
            except (ValueError, OverflowError):
                pass  # parse_date decides (and says None)
    return parse_date(raw.decode("latin-1"))


def _as_utc(value: object) -> dt.datetime | None:
    if not isinstance(value, dt.datetime):
        return None
    try:
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return None


# -- RFC 2047 --------------------------------------------------------------------------------
def decode_words(raw: bytes | str) -> str:
    """Decode an unstructured header value: encoded words, and raw 8-bit bytes as UTF-8.

    Adjacent encoded words are joined (the whitespace between them is dropped, and words of
    one charset are decoded together, so a character split across two words survives). A
    word that does not decode (bad base64) stays as it was; an unknown charset is read as
    UTF-8; undecodable bytes become U+FFFD. Never raises.
    """
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    if b"\n" in data:
        data = _FOLD.sub(b"", data)
    if b"=?" not in data:
        return data.decode("utf-8", "replace")
    single = _ENCODED_WORD.fullmatch(data)
    if single is not None:  # the commonest case: one encoded word and nothing else
        payload = _word_bytes(single.group(2), single.group(3))
        if payload is not None:
            charset = single.group(1).decode("ascii", "replace").split("*", 1)[0].lower()
            return _decode_charset(payload, charset)
    out: list[str] = []
    pending = bytearray()
    pending_charset: str | None = None
    position = 0
    for match in _ENCODED_WORD.finditer(data):
        payload = _word_bytes(match.group(2), match.group(3))
        if payload is None:
            continue  # not a word after all: it stays in the plain text around it
        between = data[position : match.start()]
        adjacent = pending_charset is not None and not between.strip(_WSP)
        charset = match.group(1).decode("ascii", "replace").split("*", 1)[0].lower()
        if not adjacent or charset != pending_charset:
            if pending_charset is not None:
                out.append(_decode_charset(bytes(pending), pending_charset))
                pending.clear()
            if not adjacent:
                out.append(between.decode("utf-8", "replace"))
            pending_charset = charset
        pending += payload
        position = match.end()
    if pending_charset is not None:
        out.append(_decode_charset(bytes(pending), pending_charset))
    out.append(data[position:].decode("utf-8", "replace"))
    return "".join(out)


def _word_bytes(encoding: bytes, text: bytes) -> bytes | None:
    if encoding in b"Qq":
        return binascii.a2b_qp(text, header=True)
    try:
        return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
    except binascii.Error:
        return None


def _decode_charset(payload: bytes, charset: str) -> str:
    codec = _codec(charset)
    if codec is not None:
        try:
            return payload.decode(codec, "replace")
        except (LookupError, UnicodeError, ValueError):
            pass  # a bytes-to-bytes codec (zlib, hex) or one without "replace" (idna)
    return payload.decode("utf-8", "replace")


@functools.lru_cache(maxsize=128)
def _codec(charset: str) -> str | None:
    name = _CHARSET_ALIASES.get(charset, charset)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None
