"""A fast parser of UID FETCH responses, for the fixed item list of ``FETCH_ITEMS``.

imapclient's ``parse_fetch_response`` is general and costs about 190 microseconds a message
here, most of an initial sync's CPU. This one tokenizes with one regular expression per
line and builds the same values (``Envelope``, ``Address``, bytes, ints, aware datetimes),
so ``parse_message`` reads either. Anything it does not recognise raises ``ValueError``;
the adapter then falls back to imapclient's parser for that response.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from imapclient.datetime_util import parse_to_datetime
from imapclient.response_types import Address, Envelope

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
