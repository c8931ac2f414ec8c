"""Realistic and hostile messages, each with the metadata a correct sync must store.

``realistic_messages(n)`` yields messages with RFC 2047 subjects in several charsets, several
recipients (groups included), threads (In-Reply-To / References), Date headers in many zones,
sizes from 1 KB up to 5 MB and flags. ``hostile_messages()`` yields the ones that break naive
code: NUL bytes, 8-bit headers without a charset, broken encoded words, unknown charsets, no
Date and no Message-ID, a 200 KB subject, a Date in year 9999. Each message carries
``expected``: the row the ``message_metadata`` view should show (see ``Expected``).
"""

from __future__ import annotations

import base64
import datetime as dt
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.header import Header
from email.utils import format_datetime

TEXT_LIMIT = 16 * 1024
KB = 1024
MB = 1024 * KB

SUBJECTS: list[tuple[str, str]] = [
    # (text, charset used to encode it in the header)
    ("Quarterly report", "us-ascii"),
    ("Grüße aus München – Übersicht", "utf-8"),
    ("Café résumé: naïve façade", "iso-8859-1"),
    ("会議の議事録について", "iso-2022-jp"),
    ("Привет, как дела?", "koi8-r"),
    ("你好，世界：项目进度", "gb2312"),
    ("Ελληνικά γράμματα", "iso-8859-7"),
    ("Zażółć gęślą jaźń", "iso-8859-2"),
    ("Rocket launch 🚀 and emoji 🎉", "utf-8"),
    ("שלום עולם", "windows-1255"),
    ("Smart “quotes” and dashes — €5", "windows-1252"),
    (
        (
            "A very long subject line that keeps going well past the usual folding width so "
            "that the encoder has to split it over several encoded words — ünïcödé included"
        ),
        "utf-8",
    ),
]
NAMES = ["Ann Smith", "Jürgen Müller", "李雷", "Zoë O'Neil", "Иван Петров", "Ma Mère"]
LOCALS = ["John.Smith", "ann", "Jurgen.Mueller", "li.lei", "zoe+news", "ivan_p", "Support"]
DOMAINS = ["Contoso.COM", "fabrikam.example", "Example.ORG", "mail.Northwind.test"]
ZONES = [0, -7 * 60, 5 * 60 + 30, 12 * 60 + 45, -(9 * 60 + 30), 60, -3 * 60, 14 * 60]
FLAG_CHOICES = ["\\Seen", "\\Answered", "\\Flagged", "\\Draft", "$Forwarded", "Work"]
LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. "
)


@dataclass(frozen=True)
class OneOf:
    """An expected value where servers legitimately differ (e.g. how they treat raw NUL)."""

    options: tuple[object, ...]

    def matches(self, value: object) -> bool:
        return value in self.options


ANY_TEXT = OneOf(())  # any string (or None): only "stored and cleaned" is required


@dataclass
class Expected:
    """The ``message_metadata`` row one message should produce (uid and times aside)."""

    message_id: str | None
    subject: object  # str | None | OneOf
    from_address: str | None
    to_addresses: list[str]
    cc_addresses: list[str]
    in_reply_to: str | None
    references: str | None
    sent_at: dt.datetime | None
    size_bytes: int
    flags: list[str]
    received_at: dt.datetime


@dataclass
class SeedMessage:
    raw: bytes
    flags: tuple[str, ...]
    internaldate: dt.datetime
    expected: Expected
    label: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def normalize_address(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def _encode(text: str, charset: str) -> str:
    if charset == "us-ascii":
        return text
    return Header(text, charset, header_name="Subject").encode(linesep="\r\n")


def _mailbox(rng: random.Random) -> tuple[str, str]:
    """(header form, normalised address)."""
    address = f"{rng.choice(LOCALS)}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"
    name = rng.choice(NAMES)
    if name.isascii():
        display = f'"{name}"' if "'" in name else name
    else:
        display = Header(name, "utf-8").encode(linesep="\r\n")
    return f"{display} <{address}>", normalize_address(address)


def _fold(name: str, items: list[str]) -> str:
    """A structured header whose items are folded one per line."""
    return f"{name}: " + ",\r\n ".join(items)


def _body(size: int) -> bytes:
    line = (LOREM * 2)[:76]
    lines = max(1, size // 78)
    return ("\r\n".join(line for _ in range(lines)) + "\r\n").encode()


def _target_size(rng: random.Random, index: int, max_size: int, big_every: int) -> int:
    if big_every and index % big_every == big_every - 1 and max_size >= MB:
        return rng.randint(MB, max_size)
    # Log-uniform between 1 KB and 64 KB: most mail is small.
    return int(KB * (2 ** rng.uniform(0, 6)))


def realistic_messages(
    count: int,
    *,
    seed: int = 0,
    max_size: int = 5 * MB,
    big_every: int = 1000,
    domain: str = "contoso.test",
) -> Iterator[SeedMessage]:
    """``count`` realistic messages; about one in ``big_every`` is between 1 MB and max_size."""
    rng = random.Random(seed)
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    thread_ids: list[list[str]] = []
    for index in range(count):
        subject, charset = SUBJECTS[index % len(SUBJECTS)]
        subject = f"{subject} #{index}"
        message_id = f"{uuid.UUID(int=rng.getrandbits(128))}@{domain}"
        from_header, from_address = _mailbox(rng)
        to_items = [_mailbox(rng) for _ in range(rng.randint(1, 5))]
        cc_items = [_mailbox(rng) for _ in range(rng.randint(0, 3))]
        to_headers = [h for h, _ in to_items]
        to_expected = [a for _, a in to_items]
        if index % 17 == 5:
            # A group: its members are flattened in place, an empty group adds nothing.
            group = [_mailbox(rng) for _ in range(2)]
            to_headers.append("Project Team: " + ", ".join(h for h, _ in group) + ";")
            to_expected.extend(a for _, a in group)
            to_headers.append("undisclosed-recipients:;")
        zone = dt.timezone(dt.timedelta(minutes=rng.choice(ZONES)))
        sent = (base + dt.timedelta(seconds=rng.randint(0, 300 * 86400))).astimezone(zone)
        sent = sent.replace(microsecond=0)
        received = (sent + dt.timedelta(seconds=rng.randint(1, 3600))).astimezone(dt.UTC)
        headers = [
            f"Message-ID: <{message_id}>",
            f"Date: {format_datetime(sent)}",
            f"From: {from_header}",
            _fold("To", to_headers),
        ]
        if cc_items:
            headers.append(_fold("Cc", [h for h, _ in cc_items]))
        headers.append(f"Subject: {_encode(subject, charset)}")
        in_reply_to = references = None
        if thread_ids and index % 4 == 3:
            thread = rng.choice(thread_ids)
            in_reply_to = f"<{thread[-1]}>"
            chain = [f"<{m}>" for m in thread]
            references = " ".join(chain)
            headers.append(f"In-Reply-To: {in_reply_to}")
            headers.append("References: " + "\r\n\t".join(chain))
            thread.append(message_id)
        else:
            thread_ids.append([message_id])
        headers += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8"]
        head = ("\r\n".join(headers) + "\r\n\r\n").encode()
        size = _target_size(rng, index, max_size, big_every)
        raw = head + _body(max(0, size - len(head)))
        flags = tuple(sorted(rng.sample(FLAG_CHOICES, rng.randint(0, 3))))
        yield SeedMessage(
            raw=raw,
            flags=flags,
            internaldate=received,
            label=f"realistic-{index}",
            expected=Expected(
                message_id=message_id,
                subject=subject,
                from_address=from_address,
                to_addresses=to_expected,
                cc_addresses=[a for _, a in cc_items],
                in_reply_to=in_reply_to,
                references=references,
                sent_at=sent,
                size_bytes=len(raw),
                flags=sorted(flags),
                received_at=received,
            ),
        )


def _hostile(
    label: str, head: bytes, *, body: bytes = b"body\r\n", **expected: object
) -> SeedMessage:
    raw = head + b"\r\n" + body
    received = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    fields: dict[str, object] = {
        "message_id": None,
        "subject": None,
        "from_address": None,
        "to_addresses": [],
        "cc_addresses": [],
        "in_reply_to": None,
        "references": None,
        "sent_at": None,
        "size_bytes": len(raw),
        "flags": [],
        "received_at": received,
    }
    fields.update(expected)
    return SeedMessage(
        raw=raw,
        flags=(),
        internaldate=received,
        label=label,
        expected=Expected(**fields),  # type: ignore[arg-type]
    )


def hostile_messages() -> list[SeedMessage]:
    """Messages that must be stored, cleaned, without stalling the mailbox."""
    big = "Ünïcødé subject " * 13_000  # about 200 KB once encoded
    big_expected = big.encode()[:TEXT_LIMIT].decode("utf-8", "ignore")
    big_header = b"Subject: " + b"\r\n ".join(
        Header(big[i : i + 40], "utf-8").encode(linesep="\r\n").encode()
        for i in range(0, len(big), 40)
    )
    return [
        _hostile(
            "nul-bytes",
            b"Message-ID: <nul@hostile.test>\r\nFrom: nul@Hostile.TEST\r\n"
            b"Subject: =?utf-8?q?Sub=00ject?=\r\nDate: Mon, 2 Mar 2026 10:00:00 +0000\r\n",
            body=b"body with a NUL \x00 byte\r\n",
            message_id="nul@hostile.test",
            subject="Subject",
            from_address="nul@hostile.test",
            sent_at=dt.datetime(2026, 3, 2, 10, tzinfo=dt.UTC),
        ),
        _hostile(
            "raw-nul-header",
            b"Message-ID: <rawnul@hostile.test>\r\nSubject: a\x00b\r\n",
            message_id="rawnul@hostile.test",
            # Dovecot turns a raw NUL into U+FFFD before we see it; another server may not.
            subject=OneOf(("ab", "a\ufffdb")),
        ),
        _hostile(
            "8bit-no-charset",
            b"Message-ID: <latin1@hostile.test>\r\nSubject: Caf\xe9 cr\xe8me\r\n"
            b"From: Ren\xe9 <rene@Hostile.test>\r\n",
            message_id="latin1@hostile.test",
            subject="Caf\ufffd cr\ufffdme",
            from_address="rene@hostile.test",
        ),
        _hostile(
            "8bit-utf8-no-charset",
            "Message-ID: <utf8raw@hostile.test>\r\nSubject: Grüße ✓\r\n".encode(),
            message_id="utf8raw@hostile.test",
            subject="Grüße ✓",
        ),
        _hostile(
            "broken-encoded-word",
            b"Message-ID: <broken@hostile.test>\r\nSubject: =?utf-8?B?not*base64!!?=\r\n"
            b"To: =?utf-8?q?broken <to@hostile.test>\r\n",
            message_id="broken@hostile.test",
            subject=ANY_TEXT,
            to_addresses=["to@hostile.test"],
        ),
        _hostile(
            "invalid-utf8-in-encoded-word",
            b"Message-ID: <badutf8@hostile.test>\r\nSubject: =?utf-8?b?"
            + base64.b64encode(b"ok \xff\xfe end")
            + b"?=\r\n",
            message_id="badutf8@hostile.test",
            subject="ok \ufffd\ufffd end",
        ),
        _hostile(
            "unknown-charset",
            b"Message-ID: <unknown-cs@hostile.test>\r\nSubject: =?x-klingon?q?Qapla=27?=\r\n",
            message_id="unknown-cs@hostile.test",
            subject=ANY_TEXT,
        ),
        _hostile(
            "no-date-no-message-id",
            b"Subject: nothing to identify me\r\n",
            subject="nothing to identify me",
        ),
        _hostile(
            "huge-subject",
            b"Message-ID: <huge@hostile.test>\r\n" + big_header + b"\r\n",
            message_id="huge@hostile.test",
            subject=big_expected,
        ),
        _hostile(
            "year-9999",
            b"Message-ID: <y9999@hostile.test>\r\nDate: Fri, 31 Dec 9999 23:59:59 -1200\r\n",
            message_id="y9999@hostile.test",
            sent_at=None,
        ),
        _hostile(
            "garbage-date",
            b"Message-ID: <garbage-date@hostile.test>\r\nDate: the day after tomorrow\r\n",
            message_id="garbage-date@hostile.test",
        ),
        _hostile(
            "date-without-zone",
            b"Message-ID: <nozone@hostile.test>\r\nDate: Tue, 3 Mar 2026 08:30:00\r\n",
            message_id="nozone@hostile.test",
            sent_at=dt.datetime(2026, 3, 3, 8, 30, tzinfo=dt.UTC),
        ),
        _hostile(
            "from-without-address",
            b"Message-ID: <noaddr@hostile.test>\r\nFrom: undisclosed\r\n"
            b"To: Friends: ;, Someone <Someone@EXAMPLE.com>\r\n",
            message_id="noaddr@hostile.test",
            to_addresses=["Someone@example.com"],
        ),
        _hostile(
            "folded-references",
            b"Message-ID: <refs@hostile.test>\r\nIn-Reply-To:\r\n <a@x.test>\r\n"
            b"References: <a@x.test>\r\n\t<b@x.test>\r\n   <c@x.test>  \r\n",
            message_id="refs@hostile.test",
            in_reply_to="<a@x.test>",
            references="<a@x.test> <b@x.test> <c@x.test>",
        ),
    ]
