"""Text cleaning: NUL, lone surrogates and oversize fields never reach the database."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.sync.text import DEFAULT_LIMIT_BYTES, clean_text, decode_bytes

EMOJI = "\U0001f600"  # four bytes in UTF-8


def test_none_stays_none() -> None:
    assert clean_text(None) is None


def test_plain_text_is_returned_unchanged() -> None:
    assert (
        clean_text("Re: Quarterly report (Q3) - draft, 50 €")
        == "Re: Quarterly report (Q3) - draft, 50 €"
    )


def test_empty_string_stays_empty() -> None:
    assert clean_text("") == ""


def test_nul_characters_are_removed() -> None:
    assert clean_text("a\x00b\x00\x00c") == "abc"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a\ud800b", "a\ufffdb"),  # lone high surrogate
        ("x\udc80y", "x\ufffdy"),  # lone low surrogate, as surrogateescape produces
        ("\udc00\ud800", "\ufffd\ufffd"),  # low before high is no pair
        ("x\ud83d\ude00y", f"x{EMOJI}y"),  # a well-formed pair is the character it spells
    ],
)
def test_surrogates_are_replaced_or_joined(value: str, expected: str) -> None:
    assert clean_text(value) == expected


def test_default_limit_is_16_kib() -> None:
    assert DEFAULT_LIMIT_BYTES == 16384
    assert clean_text("a" * 16384) == "a" * 16384
    assert clean_text("a" * 16385) == "a" * 16384


def test_cut_never_splits_a_four_byte_character() -> None:
    value = "a" * 16382 + EMOJI  # the emoji straddles byte 16384
    assert clean_text(value) == "a" * 16382


def test_character_ending_exactly_at_the_limit_is_kept() -> None:
    value = "a" * 16380 + EMOJI + "b"
    assert clean_text(value) == "a" * 16380 + EMOJI


def test_limit_counts_bytes_not_characters() -> None:
    assert clean_text("é" * 10, limit_bytes=5) == "éé"


def test_nul_removal_happens_before_the_cut() -> None:
    assert clean_text("\x00" * 10 + "abc", limit_bytes=3) == "abc"


def test_negative_limit_is_rejected() -> None:
    with pytest.raises(ValueError, match="limit_bytes"):
        clean_text("abc", limit_bytes=-1)


def test_decode_bytes_replaces_undecodable_bytes() -> None:
    assert decode_bytes(b"caf\xc3\xa9 \xff\xfe ok") == "café \ufffd\ufffd ok"


def test_decode_bytes_keeps_valid_utf8() -> None:
    assert decode_bytes(EMOJI.encode()) == EMOJI


# Text with the characters that matter here over-represented: NUL, both surrogate halves,
# multi-byte characters.
hostile_text = st.text(
    alphabet=st.one_of(
        st.characters(codec=None),
        st.sampled_from(["\x00", "\ud800", "\udfff", "\ud83d", "\ude00", EMOJI, "é", "€"]),
    ),
    max_size=200,
)


@given(value=hostile_text, limit=st.integers(min_value=0, max_value=300))
def test_output_is_a_bounded_nul_free_prefix_of_the_cleaned_input(value: str, limit: int) -> None:
    out = clean_text(value, limit_bytes=limit)
    assert out is not None
    encoded = out.encode("utf-8")  # raises if a surrogate survived
    assert len(encoded) <= limit
    assert "\x00" not in out
    uncut = clean_text(value, limit_bytes=10**9)
    assert uncut is not None
    assert uncut.startswith(out)
    # The cut only drops what does not fit: one more character would exceed the limit.
    if len(out) < len(uncut):
        assert len(encoded) + len(uncut[len(out)].encode("utf-8")) > limit


@given(value=hostile_text)
def test_cleaning_is_idempotent(value: str) -> None:
    once = clean_text(value, limit_bytes=100)
    assert clean_text(once, limit_bytes=100) == once


@given(raw=st.binary(max_size=200))
def test_decode_bytes_always_yields_storable_text(raw: bytes) -> None:
    text = decode_bytes(raw)
    text.encode("utf-8")  # raises if a surrogate slipped through
    assert clean_text(text, limit_bytes=10**9) == text.replace("\x00", "")


@given(value=st.text(max_size=200))
def test_decode_bytes_round_trips_valid_utf8(value: str) -> None:
    assert decode_bytes(value.encode("utf-8")) == value
