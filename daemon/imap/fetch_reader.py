"""``UID FETCH`` read straight off the connection: the whole response in one buffer.

imaplib reads a response line by line and hands every message over as a list of parts,
about 10 microseconds a message in Python. This sends the command on imaplib's connection and
reads the answer in large chunks until the command's tagged completion, noting where each
untagged response starts and ends (literals are skipped by their announced size, so a literal
that looks like a response line cannot end one early). The caller parses the FETCH responses
from the buffer; every other untagged response (EXISTS, EXPUNGE, BYE...) is filed with imaplib
as imaplib itself would have filed it.

Errors are imaplib's own (``IMAP4.error`` for NO/BAD, ``IMAP4.abort`` for a connection that
ends), so the adapter's translation gate treats them as before.
"""

from __future__ import annotations

import imaplib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

_CHUNK: Final = 1 << 16
_FETCH: Final = re.compile(rb"\* (\d+) FETCH ")
# imaplib's own patterns of an untagged response ("* OK ...") and one with a number first
# ("* 12 EXISTS"), so that such responses are filed under the same names.
_UNTAGGED: Final = re.compile(rb"\* (?P<type>[A-Z-]+)( (?P<data>.*))?")
_UNTAGGED_NUMBER: Final = re.compile(rb"\* (?P<data>\d+) (?P<type>[A-Z-]+)( (?P<data2>.*))?")
_TAGGED: Final = re.compile(rb"(?P<type>[A-Z]+)(?: (?P<data>.*))?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class FetchResponse:
    """The untagged FETCH responses of one command, as spans of ``data``.

    Each span runs from ``* `` to just after the response's final CRLF; ``literals`` holds,
    per span, the (start, end) of each literal's bytes inside it.
    """

    data: bytes
    spans: tuple[tuple[int, int], ...]
    literals: tuple[tuple[tuple[int, int], ...], ...]

    def parts(self, index: int) -> list[Any]:
        """Span ``index`` as imaplib hands a FETCH response over: ``<seq> (...`` lines, a line
        ending in a literal paired with the literal's bytes."""
        start, end = self.spans[index]
        data = self.data
        # imaplib drops "* " and the word FETCH: "* 12 FETCH (UID..." is handed over as
        # "12 (UID...".
        number_end = data.index(b" ", start + 2)
        prefix = data[start + 2 : number_end + 1]
        out: list[Any] = []
        line_start = number_end + len(b" FETCH ")
        for lit_start, lit_end in self.literals[index]:
            out.append((prefix + data[line_start : lit_start - 2], data[lit_start:lit_end]))
            line_start, prefix = lit_end, b""
        out.append(prefix + data[line_start : end - 2])
        return out

    def all_parts(self) -> Iterator[Any]:
        """Every span's parts, in order (the input of a general FETCH parser)."""
        for index in range(len(self.spans)):
            yield from self.parts(index)


def uid_fetch(imap: imaplib.IMAP4, arguments: str) -> FetchResponse:
    """Send ``UID FETCH <arguments>`` and read its whole response.

    Raises ``imaplib.IMAP4.error`` when the server answers NO or BAD, ``imaplib.IMAP4.abort``
    when the connection ends (after a BYE, imaplib's untagged responses hold it).
    """
    tag: bytes = imap._new_tag()
    try:
        imap.send(tag + b" UID FETCH " + arguments.encode("ascii") + b"\r\n")
        return _read(imap, tag)
    finally:
        imap.tagged_commands.pop(tag, None)


class _Stream:
    """Bytes looked at in imaplib's buffered reader, taken from it only as far as used: what
    the server sent after the tagged completion stays for imaplib to read."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.buffer = bytearray()
        self.unconsumed = 0

    def fill(self) -> None:
        if self.unconsumed:
            self.reader.read(self.unconsumed)
        chunk = self.reader.peek(_CHUNK)
        if not chunk:
            raise imaplib.IMAP4.abort("socket error: EOF")
        self.buffer += chunk
        self.unconsumed = len(chunk)

    def consume_to(self, end: int) -> None:
        """Take the bytes up to ``buffer[end]`` from the reader, leave the rest in it."""
        self.reader.read(self.unconsumed - (len(self.buffer) - end))
        self.unconsumed = 0


def _read(imap: imaplib.IMAP4, tag: bytes) -> FetchResponse:
    stream = _Stream(imap.file)
    buffer = stream.buffer
    spans: list[tuple[int, int]] = []
    literals: list[tuple[tuple[int, int], ...]] = []
    pending: list[tuple[int, int]] = []
    start = pos = 0  # the current response, and the start of its current line
    tagged = tag + b" "
    while True:
        eol = buffer.find(b"\r\n", pos)
        if eol < 0:
            stream.fill()
            continue
        if eol > pos and buffer[eol - 1] == 0x7D:  # "}": a literal may follow
            brace = buffer.rfind(b"{", pos, eol)
            size = buffer[brace + 1 : eol - 1] if brace >= 0 else b""
            if size.isdigit():
                literal_end = eol + 2 + int(size)
                while len(buffer) < literal_end:
                    stream.fill()
                pending.append((eol + 2, literal_end))
                pos = literal_end
                continue
        pos = eol + 2
        if buffer.startswith(tagged, start):
            stream.consume_to(pos)
            return _finish(imap, bytes(buffer), buffer[start + len(tagged) : eol], spans, literals)
        if _FETCH.match(buffer, start):
            spans.append((start, pos))
            literals.append(tuple(pending))
        else:
            _file_untagged(imap, bytes(buffer[start:eol]), has_literals=bool(pending))
        pending = []
        start = pos


def _finish(
    imap: imaplib.IMAP4,
    data: bytes,
    status: bytearray,
    spans: list[tuple[int, int]],
    literals: list[tuple[tuple[int, int], ...]],
) -> FetchResponse:
    match = _TAGGED.fullmatch(bytes(status))
    kind = match.group("type") if match else b""
    if kind != b"OK":
        text = bytes(status).decode("utf-8", "replace")
        raise imaplib.IMAP4.error(f"UID FETCH returned {text}")
    if "BYE" in imap.untagged_responses:
        raise imaplib.IMAP4.abort("the server said BYE")
    return FetchResponse(data, tuple(spans), tuple(literals))


def _file_untagged(imap: imaplib.IMAP4, line: bytes, *, has_literals: bool) -> None:
    """File a response that is not FETCH the way imaplib's ``_get_response`` does."""
    if has_literals:
        return  # a non-FETCH response with literals says nothing the FETCH needs
    append = imap._append_untagged
    response = _UNTAGGED.match(line)
    if response is not None:
        append(response.group("type").decode("ascii"), response.group("data") or b"")
        return
    status = _UNTAGGED_NUMBER.match(line)
    if status is not None:
        data = status.group("data")
        if status.group("data2"):
            data = data + b" " + status.group("data2")
        append(status.group("type").decode("ascii"), data)
        return
    if not line.startswith(b"+"):
        raise imaplib.IMAP4.abort(f"unexpected response: {line[:100]!r}")
