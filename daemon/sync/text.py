"""Text cleaning: what the database cannot store is cleaned, never a reason to stall a mailbox.

PostgreSQL rejects NUL in ``text`` and ``jsonb``, neither database nor UTF-8 can hold a lone
surrogate (which ``surrogateescape`` decoding and broken UTF-16 produce), and an unbounded
header would bloat every row, so each text field is capped (SPEC "Stored data").
"""

from __future__ import annotations

DEFAULT_LIMIT_BYTES = 16 * 1024
"""The SPEC's cap on one text field, in bytes of its UTF-8 encoding."""

REPLACEMENT = "\ufffd"


def decode_bytes(raw: bytes) -> str:
    """Decode UTF-8, turning every undecodable byte sequence into U+FFFD."""
    return raw.decode("utf-8", "replace")


def _replace_surrogates(value: str) -> str:
    # A high+low pair is the UTF-16 spelling of one character and becomes that character; a
    # surrogate left alone has no meaning and becomes U+FFFD.
    return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def clean_text(value: str | None, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> str | None:
    """Return ``value`` without NUL, without lone surrogates and at most ``limit_bytes`` long.

    The length is that of the UTF-8 encoding; the cut falls on a character boundary, so the
    result is always a prefix of the cleaned text. ``None`` stays ``None``.
    """
    if value is None:
        return None
    if limit_bytes < 0:
        raise ValueError("limit_bytes must not be negative")
    if value.isascii() and len(value) <= limit_bytes and "\x00" not in value:
        return value  # the common case, without encoding it: nothing to clean, nothing to cut
    if "\x00" in value:
        value = value.replace("\x00", "")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        value = _replace_surrogates(value)
        encoded = value.encode("utf-8")
    if len(encoded) <= limit_bytes:
        return value
    # The prefix is valid UTF-8 except possibly for one character cut in half at its end,
    # which "ignore" drops.
    return encoded[:limit_bytes].decode("utf-8", "ignore")
