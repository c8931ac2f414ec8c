"""The seeding helper's messages say truthfully what they contain."""

from __future__ import annotations

import email
import email.policy
from email.utils import parsedate_to_datetime

from localenv.seed import OneOf, hostile_messages, realistic_messages


def _parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def test_realistic_subjects_decode_to_their_expected_text_in_every_charset() -> None:
    for message in realistic_messages(48):
        parsed = _parse(message.raw)
        assert str(parsed["subject"]) == message.expected.subject


def test_realistic_headers_match_expected_ids_dates_and_threads() -> None:
    messages = list(realistic_messages(40))
    for message in messages:
        parsed = _parse(message.raw)
        assert parsed["message-id"] == f"<{message.expected.message_id}>"
        assert parsedate_to_datetime(parsed["date"]) == message.expected.sent_at
        assert message.expected.size_bytes == len(message.raw)
        assert b"\r\n" in message.raw
        assert b"\n" not in message.raw.replace(b"\r\n", b"")
    replies = [m for m in messages if m.expected.in_reply_to]
    assert replies, "some messages are replies"
    for reply in replies:
        refs = reply.expected.references
        assert refs is not None
        assert refs.split()[-1] == reply.expected.in_reply_to


def test_realistic_messages_cover_many_zones_groups_and_flags() -> None:
    messages = list(realistic_messages(200))
    zones = {m.expected.sent_at.utcoffset() for m in messages if m.expected.sent_at}
    assert len(zones) >= 6
    assert any(b"undisclosed-recipients:;" in m.raw for m in messages)
    assert any(len(m.expected.to_addresses) >= 4 for m in messages)
    assert {f for m in messages for f in m.flags} >= {"\\Seen", "\\Flagged", "$Forwarded"}
    for m in messages:
        for address in [m.expected.from_address, *m.expected.to_addresses]:
            assert address is not None
            local, _, domain = address.rpartition("@")
            assert domain == domain.lower()
            assert local


def test_sizes_span_one_kilobyte_to_five_megabytes() -> None:
    sizes = [m.expected.size_bytes for m in realistic_messages(30, big_every=10)]
    assert min(sizes) < 4 * 1024
    assert max(sizes) > 1024 * 1024
    assert max(sizes) <= 5 * 1024 * 1024 + 4096


def test_same_seed_gives_same_messages() -> None:
    first = [m.raw for m in realistic_messages(20, seed=9)]
    second = [m.raw for m in realistic_messages(20, seed=9)]
    assert first == second


def test_hostile_set_has_every_documented_case() -> None:
    labels = {m.label for m in hostile_messages()}
    assert labels >= {
        "nul-bytes",
        "8bit-no-charset",
        "broken-encoded-word",
        "unknown-charset",
        "no-date-no-message-id",
        "huge-subject",
        "year-9999",
    }
    huge = next(m for m in hostile_messages() if m.label == "huge-subject")
    assert len(huge.raw) > 200_000
    subject = huge.expected.subject
    assert isinstance(subject, str)
    assert len(subject.encode()) <= 16 * 1024
    assert b"\x00" in next(m for m in hostile_messages() if m.label == "nul-bytes").raw


def test_one_of_matches_only_its_options() -> None:
    assert OneOf(("a", "b")).matches("b")
    assert not OneOf(("a", "b")).matches("c")
