"""The fixture login: read and write any mailbox of the local Dovecot as its master user."""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from typing import Any

from imapclient import IMAPClient

from localenv.dovecot import MASTER_SEPARATOR, MASTER_USER
from localenv.env import EnvInfo
from localenv.seed import SeedMessage

APPEND_CHUNK = 500
APPEND_CHUNK_BYTES = 16 * 1024 * 1024


class FixtureImap:
    """An IMAP session on ``mailbox`` through the master user; use as a context manager."""

    def __init__(self, info: EnvInfo, mailbox: str) -> None:
        context = ssl.create_default_context(cafile=info.ca_file)
        self.client = IMAPClient(
            info.imap_host, port=info.imap_port, ssl=True, ssl_context=context, timeout=60
        )
        self.client.login(f"{mailbox}{MASTER_SEPARATOR}{MASTER_USER}", info.fixture_password)
        self.mailbox = mailbox

    def __enter__(self) -> FixtureImap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.client.logout()
        except Exception:  # noqa: BLE001 - closing a test helper must not mask the test's error
            self.client.shutdown()

    def ensure_folder(self, folder: str) -> None:
        if not self.client.folder_exists(folder):
            self.client.create_folder(folder)

    def delete_folder(self, folder: str) -> None:
        self.client.delete_folder(folder)

    def append(self, folder: str, messages: Iterable[SeedMessage]) -> list[int]:
        """Append with MULTIAPPEND in chunks; returns the UIDs in order."""
        self.ensure_folder(folder)
        uids: list[int] = []
        chunk: list[dict[str, Any]] = []
        size = 0
        for message in messages:
            chunk.append({"msg": message.raw, "flags": message.flags, "date": message.internaldate})
            size += len(message.raw)
            if len(chunk) >= APPEND_CHUNK or size >= APPEND_CHUNK_BYTES:
                uids += self._flush(folder, chunk)
                chunk, size = [], 0
        if chunk:
            uids += self._flush(folder, chunk)
        return uids

    def _flush(self, folder: str, chunk: list[dict[str, Any]]) -> list[int]:
        response = self.client.multiappend(folder, chunk)
        # [APPENDUID <uidvalidity> <uid-set>]
        text = response.decode() if isinstance(response, bytes) else str(response)
        uid_set = text.split("APPENDUID", 1)[1].split("]", 1)[0].split()[1]
        uids: list[int] = []
        for part in uid_set.split(","):
            low, _, high = part.partition(":")
            uids.extend(range(int(low), int(high or low) + 1))
        return uids

    def uids(self, folder: str) -> list[int]:
        self.client.select_folder(folder, readonly=True)
        return sorted(self.client.search("ALL"))

    def uidvalidity(self, folder: str) -> int:
        return int(self.client.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"])

    def set_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        self.client.select_folder(folder)
        self.client.set_flags(list(uids), list(flags))

    def expunge(self, folder: str, uids: Sequence[int]) -> None:
        self.client.select_folder(folder)
        self.client.add_flags(list(uids), ["\\Deleted"])
        self.client.uid_expunge(list(uids))
